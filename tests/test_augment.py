"""On-device augmentation: each op checked by hand or against torchvision, the string parser,
mixup / cutmix soft labels and the train step that uses them."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from cnn_jax import config as config_lib
from cnn_jax.data import augment, image_ops
from cnn_jax.training import losses, steps
from cnn_jax.training.train_state import create_train_state
from helpers import random_split, tiny_config


def torchvision_functional():
  """torchvision.transforms.functional, or its copy; skips the test without torch.

  Imported here, not at module level, so that without torch only the tests that compare
  with torchvision skip, not the whole file."""
  pytest.importorskip("torch")
  try:  # torchvision does not load beside the CPU torch the project installs: then a copy
    import torchvision.transforms.functional as TF
  except Exception:  # noqa: BLE001
    sys.path.insert(0, os.path.dirname(__file__))
    import torchvision_color_reference as TF
  return TF

ALL_IMAGE_OPS = ("pad_crop(3)|flip_lr|flip_ud(0.3)|translate(2, max_dy=1)|rotate(20)|"
                 "scale(0.8, 1.2)|color(0.4, 0.4, 0.4, 0.1)|brightness(0.2)|contrast(0.8, 1.2)|"
                 "saturation(0.5, 1.5)|hue(0.05)|noise(0.02)|cutout(5)")


def rand_images(n, h=12, w=12, c=3, seed=0):
  return np.random.RandomState(seed).rand(n, h, w, c).astype(np.float32)


def test_pad_normalize_and_augment():
  pre = augment.make_preprocess_fn((32, 32), (0.5,), (0.5,))
  imgs = jnp.full((2, 28, 28, 1), 255, jnp.uint8)
  x = pre(imgs, jax.random.key(0), False)
  assert x.shape == (2, 32, 32, 1)
  assert float(x[0, 0, 0, 0]) == -1.0 and float(x[0, 2, 2, 0]) == 1.0  # pad 2 px of black
  img = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
  crops = image_ops.random_crop(jax.random.key(1), jnp.tile(img, (64, 1, 1, 1)), 1)
  # every crop is the image shifted by at most one pixel: its centre pixel comes from img's 3x3 core
  assert crops.shape == (64, 4, 4, 1)
  assert set(np.asarray(crops[:, 1, 1, 0]).tolist()) <= {0., 1., 2., 4., 5., 6., 8., 9., 10.}
  assert len(set(np.asarray(crops[:, 1, 1, 0]).tolist())) > 3
  flips = image_ops.random_flip_left_right(jax.random.key(2), jnp.tile(img, (32, 1, 1, 1)))
  flipped = np.asarray(flips[:, 0, 0, 0] == 3.0)
  assert 0 < flipped.sum() < 32
  np.testing.assert_array_equal(flips[flipped.argmax()], img[0, :, ::-1])


def test_pad_crop_and_flip_lr_draw_what_crop_padding_and_flip_drew():
  """Runs configured with the old augment.crop_padding / augment.flip replay the same."""
  images = np.random.RandomState(0).randint(0, 256, (16, 10, 10, 1)).astype(np.uint8)
  rng = jax.random.key(7)
  new = augment.make_preprocess_fn(None, (0.,), (1.,), "pad_crop(2)|flip_lr")(images, rng, True)
  x = images.astype(np.float32) / 255.0  # the code before the registry:
  r, sub = jax.random.split(rng)
  x = image_ops.random_crop(sub, x, 2)
  r, sub = jax.random.split(r)
  x = jnp.where(jax.random.bernoulli(sub, 0.5, (16, 1, 1, 1)), x[:, :, ::-1], x)
  np.testing.assert_array_equal(new, x)
  old = ConfigDict({"crop_padding": 2, "flip": True})  # saved configs of older runs
  assert augment.augment_spec(ConfigDict({"augment": old})) == "pad_crop(2)|flip_lr"


@pytest.mark.parametrize("padding,h,w", [(1, 4, 5), (2, 5, 3)])
def test_pad_crop_reaches_exactly_every_shift_of_the_padded_image(padding, h, w):
  """pad_crop(p) draws each of the (2p+1)^2 windows of the zero-padded image, nothing else.

  The reference windows are cut from a numpy pad, not from `random_crop`: an offset range
  one short (never the last shift) or one-sided padding fails here."""
  img = (np.arange(h * w * 2, dtype=np.float32).reshape(h, w, 2) + 1.0) / (h * w * 2)
  padded = np.pad(img, ((padding, padding), (padding, padding), (0, 0)))
  want = {padded[dy:dy + h, dx:dx + w].tobytes()
          for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)}
  assert len(want) == (2 * padding + 1) ** 2  # distinct pixel values: distinct windows
  op = jax.jit(augment.parse(f"pad_crop({padding})")[0].fn)
  x = np.tile(img, (256, 1, 1, 1))  # every image draws its own offset
  got = set()
  for seed in range(4):
    got |= {o.tobytes() for o in np.asarray(op(x, jax.random.key(seed)))}
  assert got == want


def test_flips():
  x = rand_images(4)
  np.testing.assert_array_equal(augment.parse("flip_lr(1.0)")[0].fn(x, jax.random.key(0)),
                                x[:, :, ::-1])
  np.testing.assert_array_equal(augment.parse("flip_ud(p=1)")[0].fn(x, jax.random.key(0)),
                                x[:, ::-1])
  np.testing.assert_array_equal(augment.parse("flip_ud(0)")[0].fn(x, jax.random.key(0)), x)


def test_translate_is_a_roll_with_zero_fill():
  img = rand_images(1, 7, 9)[0]
  want = np.roll(img, (2, 1), axis=(0, 1))  # dx=1 column right, dy=2 rows down
  want[:2], want[:, :1] = 0, 0
  np.testing.assert_array_equal(image_ops.translate_image(img, 1, 2), want)
  want = np.roll(img, (1, -3), axis=(0, 1))
  want[:1], want[:, -3:] = 0, 0
  np.testing.assert_array_equal(image_ops.translate_image(img, -3, 1), want)
  # the random op: every image is one of the allowed shifts of itself
  x = np.tile(img, (16, 1, 1, 1))
  out = np.asarray(augment.parse("translate(2, 1)")[0].fn(x, jax.random.key(3)))
  shifts = set()
  for o in out:
    match = [(dx, dy) for dx in range(-2, 3) for dy in range(-1, 2)
             if np.array_equal(o, image_ops.translate_image(img, dx, dy))]
    assert match
    shifts.add(match[0])
  assert len(shifts) > 3


def test_rotate_by_90_degrees_is_rot90():
  rotate = jax.jit(image_ops.rotate_image)
  for shape in ((6, 6, 1), (7, 7, 3)):
    img = np.random.RandomState(1).rand(*shape).astype(np.float32)
    # rotations by multiples of 90 degrees sample exact pixel centres: only float rounding
    np.testing.assert_allclose(rotate(img, 90.0), np.rot90(img), atol=1e-5)
    np.testing.assert_allclose(rotate(img, -90.0), np.rot90(img, -1), atol=1e-5)
    np.testing.assert_allclose(rotate(img, 180.0), np.rot90(img, 2), atol=1e-5)
    np.testing.assert_allclose(rotate(img, 0.0), img, atol=1e-6)
  # 45 degrees: the centre stays, the corners (outside the turned square) are zero filled
  ones = np.ones((7, 7, 3), np.float32)
  r = np.asarray(rotate(ones, 45.0))[..., 0]
  assert r[3, 3] == pytest.approx(1.0) and r[0, 0] == r[6, 6] == 0.0
  # random angles: per image, within [-max, max] (a turned bar's slope tells the angle)
  x = np.zeros((8, 9, 9, 1), np.float32)
  x[:, 4, :] = 1.0
  out = np.asarray(augment.parse("rotate(30)")[0].fn(x, jax.random.key(0)))
  assert len({o.tobytes() for o in out}) == 8
  assert (out[:, 0] < 0.5).all()  # a bar turned by at most 30 degrees stays off the top row


def test_scale_zooms_about_the_centre():
  scale = jax.jit(image_ops.scale_image)
  const = np.full((10, 10, 2), 0.7, np.float32)
  np.testing.assert_allclose(scale(const, 2.0), const, rtol=1e-6)
  np.testing.assert_allclose(scale(const, 1.5), const, rtol=1e-6)
  img = np.zeros((16, 16, 1), np.float32)
  img[6:10, 6:10] = 1.0  # a centred 4x4 square
  s = np.asarray(scale(img, 2.0))[..., 0]
  # Twice as wide: rows / columns 4..11 are more than half covered, and bilinear
  # interpolation keeps the mass exactly (x4 in 2-D)
  big = np.zeros((16, 16), bool)
  big[4:12, 4:12] = True
  np.testing.assert_array_equal(s > 0.5, big)
  assert s.sum() == pytest.approx(4 * 16, rel=1e-6)
  np.testing.assert_allclose(scale(img, 1.0), img, atol=1e-6)
  np.testing.assert_allclose(scale(img, 0.5)[..., 0].sum(), 16 / 4, rtol=1e-6)


@pytest.mark.parametrize("name,factors", [("brightness", [0.0, 0.5, 1.0, 1.7]),
                                          ("contrast", [0.0, 0.5, 1.0, 1.7]),
                                          ("saturation", [0.0, 0.5, 1.0, 1.7]),
                                          ("hue", [-0.5, -0.2, 0.0, 0.1, 0.5])])
def test_color_adjustments_match_torchvision(name, factors):
  """Same image, same factor as torchvision.transforms.functional.adjust_*. Tolerances:
  brightness and saturation are the same float32 arithmetic (measured: identical);
  contrast sums the mean in another order (measured <= 1.2e-7); hue converts to HSV and
  back by other, equivalent formulas (pix's vs PIL's, measured <= 8e-7)."""
  torch = pytest.importorskip("torch")
  TF = torchvision_functional()
  atol = 2e-6 if name == "hue" else 1e-6
  for c in ((3, 1) if name in ("brightness", "contrast") else (3,)):
    img = rand_images(1, 11, 13, c, seed=c)[0]
    img[0, :4] = 0.25  # some gray pixels (zero saturation: hue undefined)
    for f in factors:
      want = getattr(TF, f"adjust_{name}")(torch.from_numpy(img).permute(2, 0, 1), f)
      got = getattr(image_ops, f"adjust_{name}")(img, f)
      np.testing.assert_allclose(got, want.permute(1, 2, 0).numpy(), atol=atol, rtol=0)


def test_random_color_ops_draw_factors_per_image_in_range():
  x = rand_images(32)
  rng = jax.random.key(0)
  out = np.asarray(augment.parse("brightness(0.5)")[0].fn(x, rng))
  ratio = out[:, 0, 0, 0] / x[:, 0, 0, 0]  # unclipped where the pixel stays below 1
  ok = out[:, 0, 0, 0] < 1.0
  assert ((ratio[ok] > 0.5 - 1e-5) & (ratio[ok] < 1.5 + 1e-5)).all()
  assert len(set(np.round(ratio[ok], 4))) > 10
  # ColorJitter's random order, per image: brightness x2 and contrast 0.5 do not commute
  x = rand_images(64, seed=1) * 0.4
  out = np.asarray(augment.parse("color(brightness=(2, 2), contrast=(0.5, 0.5))")[0].fn(x, rng))
  b_then_c = np.stack([image_ops.adjust_contrast(image_ops.adjust_brightness(i, 2.0), 0.5) for i in x])
  c_then_b = np.stack([image_ops.adjust_brightness(image_ops.adjust_contrast(i, 0.5), 2.0) for i in x])
  first = np.all(np.isclose(out, b_then_c, atol=1e-6), axis=(1, 2, 3))
  second = np.all(np.isclose(out, c_then_b, atol=1e-6), axis=(1, 2, 3))
  assert (first | second).all() and first.sum() > 10 and second.sum() > 10
  # 1-channel images: saturation and hue are left out of color, refused on their own
  gray = rand_images(4, c=1)
  out = augment.parse("color(brightness=(1, 1), saturation=0.5, hue=0.2)")[0].fn(gray, rng)
  np.testing.assert_allclose(out, gray, atol=1e-7)
  with pytest.raises(ValueError, match="needs RGB"):
    augment.parse("hue(0.1)")[0].fn(gray, rng)


def test_noise_statistics():
  x = np.full((64, 16, 16, 3), 0.5, np.float32)
  d = np.asarray(augment.parse("noise(0.05)")[0].fn(x, jax.random.key(0))) - 0.5
  assert abs(d.mean()) < 1e-3           # 49,152 draws: the mean's std is 2.3e-4
  assert d.std() == pytest.approx(0.05, rel=0.02)
  assert d.reshape(64, -1).std(1).min() > 0.04  # every image gets noise of its own
  assert not np.allclose(d[0], d[1])
  big = np.asarray(augment.parse("noise(1.0)")[0].fn(x, jax.random.key(1)))
  assert big.min() == 0.0 and big.max() == 1.0  # clipped to [0, 1]


def test_cutout_fills_the_mean_so_the_square_is_zero_after_normalization():
  """DeVries & Taylor (2017) cut out after normalization (their code zeroes normalized
  pixels: the mean). Ours ran before normalization on [0, 1] images and filled black: on
  CIFAR-10 the square became about -1.9 standard deviations, a stronger signal than meant."""
  mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.1)
  pre = augment.make_preprocess_fn(None, mean, std, "cutout(4)")
  x = jnp.full((16, 12, 12, 3), 255, jnp.uint8)
  out = np.asarray(pre(x, jax.random.key(0), True))
  cut = (out == 0).all(-1)
  assert ((out == 0).any(-1) == cut).all()  # every channel at once: the mean of each
  assert cut.reshape(16, -1).sum(1).max() == 16 and cut.reshape(16, -1).sum(1).min() >= 4
  np.testing.assert_allclose(out[~cut], np.broadcast_to((1 - np.array(mean)) / std,
                                                        out[~cut].shape), rtol=1e-6)
  filled = np.asarray(image_ops.cutout_image(jnp.ones((6, 6, 3)), 3, 3, 2, fill=jnp.array(mean)))
  np.testing.assert_allclose(filled[2:4, 2:4], np.broadcast_to(mean, (2, 2, 3)))
  assert (filled[0] == 1).all()


def test_cutout_zeroes_one_square_clipped_at_the_border():
  img = np.ones((12, 10, 2), np.float32)
  out = np.asarray(image_ops.cutout_image(img, 6, 5, 4))
  assert (out == 0).all(-1).sum() == 16 and (out[4:8, 3:7] == 0).all()
  odd = np.asarray(image_ops.cutout_image(img, 6, 5, 3))
  assert (odd == 0).all(-1).sum() == 9 and (odd[5:8, 4:7] == 0).all()
  corner = np.asarray(image_ops.cutout_image(img, 0, 9, 4))  # rows -2..1, columns 7..10
  assert (corner == 0).all(-1).sum() == 2 * 3 and (corner[:2, 7:] == 0).all()
  x = np.ones((64, 12, 12, 1), np.float32)
  out = np.asarray(augment.parse("cutout(4)")[0].fn(x, jax.random.key(0)))
  zeros = (out == 0).reshape(64, -1).sum(1)
  assert zeros.max() == 16 and zeros.min() >= 4 and (zeros < 16).any()
  for o in out:  # one axis-aligned box per image
    rows, cols = np.nonzero(o[..., 0] == 0)
    assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == len(rows)


def test_mixup_pairs_each_example_with_a_permuted_one():
  n = 16
  x = rand_images(n, 6, 6, 3)
  labels = np.arange(n)  # one class per example: the label weights tell lam and the pair
  mix = augment.make_mix_fn("mixup(1.0)", n)
  out, probs = map(np.asarray, mix(x, labels, jax.random.key(1)))
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
  moved = np.diag(probs) < 1.0
  assert moved.sum() > n // 2
  lam = np.diag(probs)[moved][0]
  assert 0.05 < lam < 0.95
  np.testing.assert_allclose(np.diag(probs)[moved], lam)  # one lam per batch
  perm = np.where(moved, np.argmax(probs - np.diag(np.diag(probs)), 1), np.arange(n))
  assert sorted(perm) == list(range(n))
  np.testing.assert_allclose(out, lam * x + (1 - lam) * x[perm], atol=1e-6)
  np.testing.assert_allclose(probs, lam * np.eye(n) + (1 - lam) * np.eye(n)[perm], atol=1e-6)


def test_cutmix_box_area_matches_its_label_weights():
  n, h, w = 16, 20, 24
  x = np.broadcast_to(np.arange(1, n + 1, dtype=np.float32)[:, None, None, None],
                      (n, h, w, 1)).copy()  # image i is the constant i + 1
  mix = augment.make_mix_fn("cutmix(1.0)", n)
  for seed in range(4):
    out, probs = map(np.asarray, mix(x, np.arange(n), jax.random.key(seed)))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    pasted = out[..., 0] != x[..., 0]  # pixels taken from another image
    boxes = {pasted[i].tobytes() for i in range(n) if probs[i, i] < 1.0}
    assert len(boxes) == 1  # one box for the batch
    for i in np.nonzero(np.diag(probs) < 1.0)[0]:
      j = int(out[i, pasted[i]][0, 0]) - 1
      assert (out[i, pasted[i]] == j + 1).all()
      assert pasted[i].sum() / (h * w) == pytest.approx(1.0 - probs[i, i], abs=1e-6)
      assert probs[i, j] == pytest.approx(1.0 - probs[i, i], abs=1e-6)
      rows, cols = np.nonzero(pasted[i])
      assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == len(rows)
  y1, y2, x1, x2 = image_ops.cutmix_box(10, 10, 0.75, 0, 9)  # half-size sides, clipped
  assert (int(y1), int(y2), int(x1), int(x2)) == (0, 2, 7, 10)


def test_parse_errors_name_the_op_and_the_alternatives():
  with pytest.raises(ValueError) as e:
    augment.parse("pad_crop(2)|flip_rl")
  msg = str(e.value)
  assert "'flip_rl'" in msg and "Did you mean 'flip_lr'" in msg
  assert all(name in msg for name in augment.op_names())
  for bad, why in [("rotate(1, 2)", "too many positional"), ("pad_crop()", "missing"),
                   ("pad_crop(2.5)", "integer"), ("flip_lr(p=2)", "<= 1"),
                   ("color(hue=0.7)", "hue"), ("scale(2, 1)", "min_scale <= max_scale"),
                   ("mixup(0)", "> 0"), ("translate(x)", "x is not a literal"),
                   ("rotate(15", "name\\(args\\)"), ("cutout(size=4, sise=2)", "sise"),
                   ("mixup(0.2)|flip_lr", "put them last"), ("noise('a')", "number")]:
    with pytest.raises(ValueError, match=why):
      augment.parse(bad)
  ops = augment.parse(" color(0.4, contrast=(0.5, 1.5)) | | cutmix(alpha=1.0) ")
  assert [(o.name, o.kind) for o in ops] == [("color", "image"), ("cutmix", "batch")]
  assert augment.parse("") == []
  cfg = config_lib.base_config()
  cfg.augment = "flip_rl"
  with pytest.raises(ValueError, match="flip_lr"):
    config_lib.validate(cfg)  # before anything compiles


def test_every_op_under_jit_and_eval_skips_them():
  images = np.random.RandomState(0).randint(0, 256, (8, 14, 14, 3)).astype(np.uint8)
  pre = augment.make_preprocess_fn((16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                                   ALL_IMAGE_OPS + "|mixup(0.4)|cutmix(1.0)")
  plain = augment.make_preprocess_fn((16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
  fn = jax.jit(pre, static_argnums=2)
  a = np.asarray(fn(images, jax.random.key(0), True))
  assert a.shape == (8, 16, 16, 3) and np.isfinite(a).all()
  assert a.min() >= -2.0 - 1e-6 and a.max() <= 2.0 + 1e-6  # ops keep [0, 1] before normalizing
  np.testing.assert_array_equal(a, fn(images, jax.random.key(0), True))  # a key decides all
  assert not np.array_equal(a, fn(images, jax.random.key(1), True))
  for key in (0, 1):  # eval: deterministic, no op applied (jit's fusion: float rounding)
    np.testing.assert_allclose(fn(images, jax.random.key(key), False),
                               plain(images, None, False), atol=1e-6, rtol=0)
  mix = jax.jit(augment.make_mix_fn("mixup(0.4)|cutmix(1.0)", 10))
  out, probs = mix(a, np.arange(8) % 10, jax.random.key(2))
  assert out.shape == a.shape and probs.shape == (8, 10)
  np.testing.assert_allclose(np.asarray(probs).sum(1), 1.0, rtol=1e-6)
  assert augment.make_mix_fn(ALL_IMAGE_OPS, 10) is None


def test_soft_cross_entropy():
  logits = jnp.asarray([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
  labels = jnp.asarray([0, 2])
  onehot = jax.nn.one_hot(labels, 3)
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, onehot),
                             losses.cross_entropy(logits, labels), rtol=1e-6)
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, onehot, 0.1),
                             losses.cross_entropy(logits, labels, 0.1), rtol=1e-6)
  probs = jnp.asarray([[0.3, 0.7, 0.0], [0.5, 0.0, 0.5]])
  logp = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, probs),
                             -(probs * logp).sum(1), rtol=1e-6)
  smoothed = 0.8 * probs + 0.2 / 3
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, probs, 0.2),
                             -(smoothed * logp).sum(1), rtol=1e-6)


def test_train_step_uses_the_mixed_labels_for_the_loss_and_the_true_ones_for_accuracy():
  import flax.linen as nn

  class AuxNet(nn.Module):  # a main and an auxiliary head, as GoogLeNet in train mode
    @nn.compact
    def __call__(self, x, train=False):
      x = x.reshape((x.shape[0], -1))
      logits, aux = nn.Dense(5, name="head")(x), nn.Dense(5, name="aux")(x)
      return (logits, aux) if train else logits

  model = AuxNet()
  state = create_train_state(model, optax.sgd(0.0), jax.random.key(0), (4, 4, 1))
  images = jnp.asarray(np.random.RandomState(0).normal(size=(6, 4, 4, 1)), jnp.float32)
  batch = {"image": images, "label": jnp.asarray([1, 3, 0, 4, 2, 2])}
  probs = jax.nn.softmax(jnp.asarray(np.random.RandomState(1).normal(size=(6, 5)), jnp.float32))
  mix = lambda x, y, rng: (x[::-1], probs)  # noqa: E731 - a mix whose result is known
  _, m = jax.jit(lambda s, b: steps.train_step(s, b, mix=mix, label_smoothing=0.1))(state, batch)
  main, aux = model.apply({"params": state.params}, images[::-1], train=True)
  ce = [float(losses.soft_cross_entropy(o, probs, 0.1).mean()) for o in (main, aux)]
  assert float(m["loss"]) == pytest.approx(ce[0] + steps.AUX_LOSS_WEIGHT * ce[1], rel=1e-6)
  acc = float(losses.topk_correct(main, batch["label"], 1).mean())
  assert float(m["accuracy"]) == pytest.approx(acc)
  # a mix that changes nothing gives the step without mix
  same = lambda x, y, rng: (x, jax.nn.one_hot(y, 5))  # noqa: E731
  _, a = jax.jit(lambda s, b: steps.train_step(s, b, mix=same))(state, batch)
  _, b = jax.jit(steps.train_step)(state, batch)
  assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)
  with pytest.raises(ValueError, match="custom loss_fn"):
    steps.train_step(state, batch, mix=same, loss_fn=lambda out, b: (0.0, {}))


@pytest.mark.slow  # a training (9 s); every op under jit: test_every_op_under_jit_and_eval_skips_them
def test_training_with_the_augment_string(tmp_path):
  from cnn_jax.training import trainer
  train, test = random_split(512), random_split(200, seed=9)
  cfg = tiny_config("mlp", num_epochs=3,
                    augment="translate(1)|rotate(5)|noise(0.02)|cutout(4)|mixup(0.2)")
  r = trainer.train_and_evaluate(cfg, str(tmp_path), train, test)
  assert r["validation"]["accuracy"] > 0.8
