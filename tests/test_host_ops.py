"""Host-side preprocessing ops (cnn_jax.data.ops): hand-checked results, parsing, shapes."""
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from cnn_jax.data import ops

ALL_OPS = ["central_crop", "decode", "flip_lr", "pad", "random_crop", "random_resized_crop",
           "resize", "resize_small", "rot90", "to_gray", "to_rgb"]


def rng(seed=0):
  return np.random.default_rng(seed)


def run(pp, image, seed=0):
  return ops.parse(pp)(image, rng(seed))


def arange_image(h, w, c=1):
  return np.arange(h * w * c, dtype=np.uint8).reshape(h, w, c)


def png(image, mode=None):
  buf = io.BytesIO()
  (image if isinstance(image, Image.Image) else Image.fromarray(image, mode)).save(buf, "PNG")
  return buf.getvalue()


def test_names():
  assert ops.names() == ALL_OPS


def test_rot90_hand_checked():
  x = arange_image(2, 3)  # [[0, 1, 2], [3, 4, 5]]
  assert run("rot90", x)[..., 0].tolist() == [[2, 5], [1, 4], [0, 3]]
  assert run("rot90(2)", x)[..., 0].tolist() == [[5, 4, 3], [2, 1, 0]]
  assert run("rot90(k=-1)", x)[..., 0].tolist() == [[3, 0], [4, 1], [5, 2]]
  assert run("rot90(4)", x).tolist() == x.tolist()


def test_central_crop_hand_checked():
  x = arange_image(5, 6)  # row r is 6r .. 6r+5
  # top = (5 - 3) // 2 = 1, left = (6 - 2) // 2 = 2
  assert run("central_crop((3, 2))", x)[..., 0].tolist() == [[8, 9], [14, 15], [20, 21]]
  # top = (5 - 4) // 2 = 0, left = (6 - 4) // 2 = 1
  assert run("central_crop(4)", x)[..., 0].tolist() == [
      [1, 2, 3, 4], [7, 8, 9, 10], [13, 14, 15, 16], [19, 20, 21, 22]]
  with pytest.raises(ValueError, match="only 5x6.*resize_small"):
    run("central_crop(6)", x)


def test_random_crop_with_padding_reaches_every_window():
  x = arange_image(4, 4) + 1  # no zero pixel, so the zero padding is visible
  padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  windows = {(i, j): padded[i:i + 4, j:j + 4] for i in range(3) for j in range(3)}
  seen = set()
  for seed in range(200):
    y = run("random_crop(4, padding=1)", x, seed)
    match = [k for k, win in windows.items() if np.array_equal(win, y)]
    assert len(match) == 1
    seen.add(match[0])
  assert seen == set(windows)
  y = run("random_crop((2, 3))", x, 7)  # no padding: a window of the image itself
  assert any(np.array_equal(x[i:i + 2, j:j + 3], y) for i in range(3) for j in range(2))
  with pytest.raises(ValueError, match="only 4x4"):
    run("random_crop(5)", x)


def test_flip_lr():
  x = arange_image(3, 4, 3)
  assert np.array_equal(run("flip_lr(p=1)", x), x[:, ::-1])
  assert np.array_equal(run("flip_lr(0)", x), x)
  flipped = [np.array_equal(run("flip_lr", x, s), x[:, ::-1]) for s in range(100)]
  assert 20 < sum(flipped) < 80


def test_resize_small_shapes_and_constant_image():
  # Shorter side -> 146; longer side int(round(100 * 146 / 50)) = 292.
  assert run("resize_small(146)", np.zeros((100, 50, 3), np.uint8)).shape == (292, 146, 3)
  assert run("resize_small(146)", np.zeros((50, 100, 1), np.uint8)).shape == (146, 292, 1)
  # 7 * 2 / 3 = 4.67 rounds to 5 (torchvision's Resize(int) would truncate to 4).
  assert run("resize_small(2)", np.zeros((3, 7, 3), np.uint8)).shape == (2, 5, 3)
  assert run("resize_small(10)", np.zeros((10, 10, 3), np.uint8)).shape == (10, 10, 3)
  y = run("resize_small(37)", np.full((61, 80, 3), 123, np.uint8))
  assert y.shape == (37, 49, 3) and (y == 123).all()


def test_resize_hand_checked_and_matches_pil():
  # Halving with PIL's (antialiased) bilinear filter averages each 2x2 block: 138.75 -> 139.
  x = np.array([[0, 100], [200, 255]], np.uint8)[..., None]
  assert run("resize(1)", x).tolist() == [[[139]]]
  img = rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
  for size, (h, w) in [(24, (24, 24)), ((20, 70), (20, 70)), ((80, 16), (80, 16))]:
    expected = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
    assert np.array_equal(run(f"resize({size!r})", img), expected)
    gray = np.asarray(Image.fromarray(img[..., 0]).resize((w, h), Image.Resampling.BILINEAR))
    assert np.array_equal(run(f"resize({size!r})", img[..., :1]), gray[..., None])
  assert np.array_equal(run("resize((37, 53))", img), img)
  y = run("resize((13, 91))", np.full((40, 30, 3), 77, np.uint8))
  assert y.dtype == np.uint8 and (y == 77).all()


def torchvision_transforms():
  try:  # a torchvision built for another torch fails with errors other than ImportError
    import torchvision.transforms
    return torchvision.transforms
  except Exception as e:  # noqa: BLE001
    pytest.skip(f"torchvision unavailable: {e!r}")


def test_resize_matches_torchvision():
  tvf = torchvision_transforms().functional
  img = rng(2).integers(0, 256, (45, 30, 3), dtype=np.uint8)
  for h, w in [(20, 20), (64, 50), (17, 40)]:
    expected = tvf.resize(Image.fromarray(img), [h, w], tvf.InterpolationMode.BILINEAR)
    assert np.array_equal(run(f"resize(({h}, {w}))", img), np.asarray(expected))


def test_random_resized_crop():
  img = rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  assert run("random_resized_crop((24, 32))", img).shape == (24, 32, 3)
  assert np.array_equal(run("random_resized_crop(16)", img, 5),
                        run("random_resized_crop(16)", img, 5))
  # The whole square image (area fraction 1, aspect 1) resized: plain resize.
  square = img[:, :40]
  assert np.array_equal(run("random_resized_crop(24, scale=(1, 1), ratio=(1, 1))", square, 9),
                        run("resize(24)", square))
  # 10x100: a square of area 1000 (side 32) never fits, so after 10 attempts the fallback
  # centre crop, its aspect clamped to 1: top 0, left (100 - 10) // 2 = 45, 10x10.
  wide = rng(4).integers(0, 256, (10, 100, 1), dtype=np.uint8)
  assert np.array_equal(run("random_resized_crop(10, scale=(1, 1), ratio=(1, 1))", wide),
                        wide[:, 45:55])
  # On a horizontal gradient (value = column) small crops land in different places.
  gradient = np.tile(np.arange(0, 250, 2, dtype=np.uint8), (125, 1))[..., None]
  means = [run("random_resized_crop(8, scale=(0.05, 0.1))", gradient, s).mean() for s in range(60)]
  assert min(means) < 60 and max(means) > 190 and len({round(m) for m in means}) > 30


class TorchDraws:
  """A Generator stand-in drawing exactly as torchvision's RandomResizedCrop.get_params does."""

  def __init__(self, torch):
    self.torch = torch

  def uniform(self, lo, hi):
    return self.torch.empty(1).uniform_(lo, hi).item()

  def integers(self, lo, hi):
    return self.torch.randint(lo, hi, size=(1,)).item()


def test_resized_crop_box_matches_torchvision_given_the_same_draws():
  transforms = torchvision_transforms()
  import torch
  image = torch.zeros(1, 50, 80)
  for seed in range(300):
    for scale, ratio in [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (0.2, 0.3))]:
      torch.manual_seed(seed)
      expected = transforms.RandomResizedCrop.get_params(image, scale, ratio)
      torch.manual_seed(seed)
      assert ops._resized_crop_box(50, 80, scale, ratio, TorchDraws(torch)) == tuple(expected)


def test_resized_crop_box_respects_scale_and_ratio():
  for seed in range(200):
    top, left, h, w = ops._resized_crop_box(90, 120, (0.2, 0.6), (0.5, 2.0), rng(seed))
    assert 0 <= top <= 90 - h and 0 <= left <= 120 - w
    assert 0.2 * 0.9 < h * w / (90 * 120) < 0.6 * 1.1
    assert 0.5 * 0.9 < w / h < 2.0 * 1.1


def test_to_gray_matches_pil_and_to_rgb_repeats():
  pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 200, 37], [255, 255, 255],
                                                              [1, 2, 3]]], np.uint8)
  gray = run("to_gray", pixels)
  assert gray.shape == (2, 3, 1)
  assert gray[0, :, 0].tolist() == [76, 150, 29]  # 299 / 587 / 114 per mille of 255, rounded
  img = rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  for x in (pixels, img):
    assert np.array_equal(run("to_gray", x)[..., 0], np.asarray(Image.fromarray(x).convert("L")))
  g = img[..., :1]
  assert np.array_equal(run("to_rgb", g), np.repeat(g, 3, axis=-1))
  assert np.array_equal(run("to_rgb", img), img) and np.array_equal(run("to_gray", g), g)


def test_pad():
  x = np.full((1, 1, 1), 7, np.uint8)
  assert run("pad(1, value=3)", x)[..., 0].tolist() == [[3, 3, 3], [3, 7, 3], [3, 3, 3]]
  assert run("pad((0, 2))", x)[..., 0].tolist() == [[0, 0, 7, 0, 0]]


def test_decode():
  img = rng(6).integers(0, 256, (9, 7, 3), dtype=np.uint8)
  data = png(img)
  for encoded in (data, np.bytes_(data), np.array(data, dtype=object), np.array([data], object)):
    assert np.array_equal(run("decode", encoded), img)
  gray = img[..., 0]
  assert np.array_equal(run("decode(1)", png(gray)), gray[..., None])
  assert np.array_equal(run("decode", png(gray)), np.repeat(gray[..., None], 3, -1))
  luma = np.asarray(Image.fromarray(img).convert("L"))[..., None]
  assert np.array_equal(run("decode(channels=1)", data), luma)
  palette = Image.fromarray(img).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
  assert np.array_equal(run("decode", png(palette)), np.asarray(palette.convert("RGB")))
  rgba = np.concatenate([img, np.full((9, 7, 1), 100, np.uint8)], -1)
  assert np.array_equal(run("decode", png(rgba)), img)  # PIL's convert("RGB") drops alpha
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "JPEG")
  assert run("decode", buf.getvalue()).shape == (9, 7, 3)
  # Already decoded: only the channels change.
  assert np.array_equal(run("decode", img), img)
  assert np.array_equal(run("decode", gray[..., None]), np.repeat(gray[..., None], 3, -1))
  with pytest.raises(ValueError, match="uint8"):
    run("decode", img.astype(np.float32))


def test_unknown_op_suggests_close_names():
  with pytest.raises(ValueError) as e:
    ops.parse("resize_small(146)|cental_crop(128)")
  msg = str(e.value)
  assert "'cental_crop'" in msg and "Did you mean 'central_crop'" in msg
  assert "resize_small(146)|cental_crop(128)" in msg and all(n in msg for n in ALL_OPS)


@pytest.mark.parametrize("pp, op", [
    ("resize(-1)", "resize"), ("resize(0)", "resize"), ("resize((1, 2, 3))", "resize"),
    ("resize(1.5)", "resize"), ("resize('big')", "resize"), ("resize(4, 5)", "resize"),
    ("resize()", "resize"), ("resize_small((3, 4))", "resize_small"),
    ("central_crop(size=True)", "central_crop"), ("random_crop(4, padding=-1)", "random_crop"),
    ("random_crop(4, pad=1)", "random_crop"), ("flip_lr(p=2)", "flip_lr"),
    ("rot90(1.0)", "rot90"), ("pad(2, value=256)", "pad"), ("decode(2)", "decode"),
    ("random_resized_crop(8, scale=(0.5, 0.1))", "random_resized_crop"),
    ("random_resized_crop(8, ratio=(0, 1))", "random_resized_crop"),
    ("to_gray(1)", "to_gray"), ("resize(foo)", "resize"), ("resize(1 + x)", "resize"),
])
def test_bad_arguments_fail_at_parse_time(pp, op):
  full = f"decode|{pp}|flip_lr"
  with pytest.raises(ValueError) as e:
    ops.parse(full)
  assert f"'{op}'" in str(e.value) and repr(full) in str(e.value)


@pytest.mark.parametrize("pp", ["resize(", "a||b", "resize[3]", "x.y(1)", "f(**k)", "|"])
def test_unparseable_pp_strings(pp):
  with pytest.raises(ValueError, match="pp string"):
    ops.parse(pp)


def test_str_round_trips():
  for pp in ["resize_small(146)|central_crop(128)",
             "random_resized_crop(128, scale=(0.35, 1))|flip_lr",
             "decode(channels=1)|pad(2)|random_crop((28, 28), padding=4)|rot90(k=-1)", "to_rgb"]:
    p = ops.parse(pp)
    assert str(p) == pp and ops.parse(str(p)) == p
  p = ops.parse(" resize( 64 ) | flip_lr( p = 0.5 ) ")
  assert str(p) == "resize(64)|flip_lr(p=0.5)" and ops.parse(str(p)) == p
  assert p.ops == [("resize", (64,), {}), ("flip_lr", (), {"p": 0.5})]
  x = arange_image(3, 3)
  for empty in ("", None, "  "):
    identity = ops.parse(empty)
    assert str(identity) == "" and identity.ops == [] and identity(x, rng()) is x


def test_output_shape():
  shape = lambda pp, s: ops.parse(pp).output_shape(s)
  assert shape("resize_small(146)|central_crop(128)", (None, None, 3)) == (128, 128, 3)
  assert shape("resize_small(146)", (100, 50, 3)) == (292, 146, 3)
  assert shape("resize_small(146)", (None, None, 3)) == (None, None, 3)
  assert shape("decode|to_gray", (None, None, 3)) == (None, None, 1)
  assert shape("pad(2)|rot90", (28, 30, 1)) == (34, 32, 1)
  assert shape("pad(2)", (None, 30, 1)) == (None, 34, 1)
  assert shape("flip_lr|to_rgb", (28, 28, 1)) == (28, 28, 3)
  assert shape("random_crop((24, 20), padding=4)", (None, None, 3)) == (24, 20, 3)
  assert shape("random_resized_crop(32)|rot90(3)", (None, None, 3)) == (32, 32, 3)
  assert shape("", (5, 6, 3)) == (5, 6, 3)
  img = rng(7).integers(0, 256, (45, 61, 3), dtype=np.uint8)
  for pp in ["decode|resize_small(20)|rot90", "to_gray|pad((1, 3))|random_crop(40)",
             "resize((9, 11))|rot90(-1)|to_rgb", "random_resized_crop((7, 9))|flip_lr"]:
    assert run(pp, img).shape == shape(pp, img.shape), pp


def test_random_property():
  assert not ops.parse("").random
  assert not ops.parse("decode|resize_small(146)|central_crop(128)").random
  assert ops.parse("resize(4)|flip_lr").random and ops.parse("random_crop(4)").random
  assert ops.parse("random_resized_crop(8)").random


@pytest.mark.parametrize("pp", ["decode", "resize(7)", "resize_small(9)", "central_crop(5)",
                                "random_crop(6, padding=2)", "random_resized_crop((5, 8))",
                                "flip_lr(1)", "rot90", "pad(1)", "to_rgb", "to_gray"])
def test_every_op_keeps_uint8_and_channel_axis(pp):
  for c in (1, 3):
    y = run(pp, rng(8).integers(0, 256, (12, 10, c), dtype=np.uint8))
    assert y.dtype == np.uint8 and y.ndim == 3 and y.shape[-1] in (1, 3)


def test_deterministic_given_rng_and_leaves_global_state_alone():
  p = ops.parse("pad(3)|random_resized_crop(16)|random_crop(12, padding=2)|flip_lr")
  img = rng(9).integers(0, 256, (30, 40, 3), dtype=np.uint8)
  np.random.seed(0)
  before = np.random.get_state()[1].copy()
  outs = [p(img, rng(s)) for s in (1, 1, 2)]
  assert np.array_equal(np.random.get_state()[1], before)
  assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


def test_pipeline_pickles_as_its_ops():
  p = ops.parse("decode|random_resized_crop(16, scale=(0.5, 1))|flip_lr")
  q = pickle.loads(pickle.dumps(p))
  img = rng(10).integers(0, 256, (30, 40, 3), dtype=np.uint8)
  assert q == p and str(q) == str(p) and np.array_equal(q(img, rng(3)), p(img, rng(3)))


@pytest.mark.parametrize("task,pp,random", [
    ("classification", "resize_small(40)|random_crop(32)", "random_crop"),
    ("classification", "flip_lr|resize(32)", "flip_lr"),
    ("detection", "scale_jitter(0.8, 1.2)|resize(64)", "scale_jitter")])
def test_random_ops_in_pp_eval_are_refused_when_the_config_is_checked(task, pp, random):
  """Suspected and confirmed: config.validate (and setup) accepted a random crop or flip in
  dataset.pp_eval, so validation and test scores were taken on randomly augmented images."""
  from cnn_jax import config as config_lib
  c = config_lib.base_config()
  c.task = task
  c.best_metric = "mAP50" if task == "detection" else c.best_metric
  c.dataset.pp_eval = pp
  with pytest.raises(ValueError) as e:
    config_lib.validate(c)
  assert str(e.value) == (
      f"dataset.pp_eval={pp!r} has random op(s) {random}: evaluation and predict must see each "
      "image the same way every time; move them to dataset.pp_train and keep pp_eval to "
      "deterministic ops (resize, resize_small, central_crop, ...)")
  c.dataset.pp_eval = "resize(32)"  # deterministic ops are fine
  config_lib.validate(c)
  c.dataset.pp_eval = "centre_crop(5)"  # a typo still says which key
  with pytest.raises(ValueError, match="dataset.pp_eval: unknown op 'centre_crop'"):
    config_lib.validate(c)
