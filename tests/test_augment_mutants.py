"""Exact checks of the augmentation ops that kill the mutants tests/test_augment.py lets
through: every argument bound at its edge, the defaults, the reachable parameter sets.

Expected values are worked out by hand or with numpy; tiny images, no torch, so that
`benchmarks/mutation.py` can run this file first for data/augment.py and data/image_ops.py.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cnn_jax.data import augment, image_ops


# ------------------------------------------------------------------- argument bounds
@pytest.mark.parametrize("spec", [
    "pad_crop(0)", "flip_lr(0)", "flip_lr(1)", "flip_ud(0)", "flip_ud(1)", "translate(0)",
    "translate(1, 0)", "rotate(0)", "rotate(180)", "scale(0.5, 2)", "brightness(0)",
    "contrast(0, 1)", "saturation(0, 1)", "hue(0)", "hue(0.5)", "color(hue=0.5)",
    "color(hue=(-0.5, 0.5))", "color(brightness=(0, 2))", "color(contrast=0)", "noise(0)",
    "cutout(1)", "mixup(0.1)", "cutmix(0.1)"])
def test_arguments_at_their_bounds_are_accepted(spec):
  assert len(augment.parse(spec)) == 1


@pytest.mark.parametrize("spec", [
    "pad_crop(-1)", "flip_lr(-0.5)", "flip_lr(1.5)", "flip_ud(-0.5)", "flip_ud(1.5)",
    "translate(-1)", "translate(1, -1)", "rotate(-0.5)", "rotate(180.5)", "scale(0, 1)",
    "scale(-0.5, 1)", "brightness(-0.5)", "contrast(-0.5, 1)", "saturation(-0.5, 1)",
    "hue(-0.5)", "hue(0.6)", "color(hue=0.6)", "color(hue=(-0.6, 0))", "color(hue=(0, 0.6))",
    "color(brightness=-0.5)", "color(brightness=(-0.5, 1))", "noise(-0.5)", "cutout(0)",
    "mixup(0)", "mixup(-0.5)", "cutmix(0)", "cutmix(-0.5)"])
def test_arguments_past_their_bounds_are_refused(spec):
  with pytest.raises(ValueError):
    augment.parse(spec)


def test_jitter_ranges_by_hand():
  """torchvision ColorJitter: v -> [max(0, 1 - v), 1 + v]; hue v -> [-v, v]; None where
  the range is the identity."""
  jr = augment._jitter_range
  assert jr("b", 0.4) == pytest.approx((0.6, 1.4))
  assert jr("b", 1.5) == (0.0, 2.5)
  assert jr("h", 0.1, hue=True) == pytest.approx((-0.1, 0.1))
  assert jr("b", (0.5, 1.5)) == (0.5, 1.5)
  assert jr("h", (-0.2, 0.0), hue=True) == (-0.2, 0.0)
  assert jr("b", 0) is None and jr("b", (1, 1)) is None and jr("h", 0, hue=True) is None
  assert jr("h", (0, 0), hue=True) is None
  assert jr("b", (1, 2)) == (1.0, 2.0) and jr("h", (0, 0.5), hue=True) == (0.0, 0.5)


# --------------------------------------------------------------------- random ops
def _op(spec):
  """The image op of `spec`, jitted (eager vmaps dispatch op by op: seconds per call)."""
  return jax.jit(augment.parse(spec)[0].fn)


def _distinct_image(h, w, c=1):
  return ((np.arange(h * w * c, dtype=np.float32).reshape(h, w, c) + 1) / (h * w * c))


def _shift(img, dx, dy):
  """img shifted dx columns right, dy rows down, zero fill: numpy slicing, no roll."""
  h, w = img.shape[:2]
  out = np.zeros_like(img)
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
      img[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
  return out


@pytest.mark.parametrize("spec,max_dx,max_dy", [("translate(2, 1)", 2, 1), ("translate(1)", 1, 1)])
def test_translate_reaches_exactly_every_allowed_shift(spec, max_dx, max_dy):
  img = _distinct_image(5, 6)
  want = {(dx, dy) for dx in range(-max_dx, max_dx + 1) for dy in range(-max_dy, max_dy + 1)}
  table = {_shift(img, dx, dy).tobytes(): (dx, dy) for dx in range(-3, 4) for dy in range(-3, 4)}
  out = np.asarray(_op(spec)(np.tile(img, (256, 1, 1, 1)), jax.random.key(0)))
  assert {table[o.tobytes()] for o in out} == want


def test_translate_image_up_and_left():
  img = _distinct_image(4, 5, 2)
  translate = jax.jit(image_ops.translate_image)
  for dx, dy in [(0, -1), (-2, -3), (1, -2), (0, 3), (-4, 0)]:
    np.testing.assert_array_equal(translate(img, dx, dy), _shift(img, dx, dy))


def test_cutout_centres_cover_every_pixel_of_a_non_square_image():
  x = np.ones((400, 3, 5, 1), np.float32)
  out = np.asarray(_op("cutout(1)")(x, jax.random.key(0)))
  holes = [tuple(np.argwhere(o[..., 0] == 0)[0]) for o in out]
  assert all((o == 0).sum() == 1 for o in out)
  assert set(holes) == {(r, c) for r in range(3) for c in range(5)}


@pytest.mark.parametrize("spec,flip", [("flip_lr", lambda x: x[:, :, ::-1]),
                                       ("flip_ud", lambda x: x[:, ::-1])])
def test_flips_default_to_probability_one_half(spec, flip):
  x = np.tile(_distinct_image(3, 3)[None], (200, 1, 1, 1))
  out = np.asarray(_op(spec)(x, jax.random.key(1)))
  flipped = np.all(out == flip(x), axis=(1, 2, 3))
  assert (flipped | np.all(out == x, axis=(1, 2, 3))).all()
  assert 70 < flipped.sum() < 130  # Binomial(200, 1/2): 7 sigma either way


def test_random_flip_up_down_defaults_to_one_half():
  x = np.tile(_distinct_image(3, 3)[None], (200, 1, 1, 1))
  out = np.asarray(image_ops.random_flip_up_down(jax.random.key(2), x))
  flipped = np.all(out == x[:, ::-1], axis=(1, 2, 3))
  assert 70 < flipped.sum() < 130


@pytest.mark.parametrize("spec,adjust,factor", [
    ("contrast(0.5, 0.5)", image_ops.adjust_contrast, 0.5),
    ("saturation(1.5, 1.5)", image_ops.adjust_saturation, 1.5),
    ("hue(0)", None, 0.0), ("brightness(0)", None, 1.0)])
def test_fixed_factor_ops_apply_that_factor(spec, adjust, factor):
  x = np.random.RandomState(3).rand(3, 4, 4, 3).astype(np.float32)
  out = np.asarray(_op(spec)(x, jax.random.key(0)))
  want = x if adjust is None else np.stack([adjust(i, factor) for i in x])
  np.testing.assert_allclose(out, want, atol=1e-6)


def test_scale_draws_within_its_range():
  """scale(1, 1) is the identity; scale(lo, hi) zooms each image by its own
  factor (a centred square's mass grows by s^2)."""
  x = np.zeros((16, 9, 9, 1), np.float32)
  x[:, 3:6, 3:6] = 1.0
  np.testing.assert_allclose(_op("scale(1, 1)")(x, jax.random.key(0)), x,
                             atol=1e-6)
  out = np.asarray(_op("scale(1.2, 1.5)")(x, jax.random.key(0)))
  s2 = out.sum(axis=(1, 2, 3)) / 9.0
  assert (s2 > 1.2 ** 2 - 1e-4).all() and (s2 < 1.5 ** 2 + 1e-4).all()
  assert len(set(np.round(s2, 4))) > 8


# ------------------------------------------------------------------ image functions
def test_pad_or_crop_to_centres_by_hand():
  x = jnp.ones((1, 4, 5, 1))
  y = np.asarray(image_ops.pad_or_crop_to(x, (7, 5)))[0, :, :, 0]  # 3 rows: 1 above, 2 below
  np.testing.assert_array_equal(y[:, 0], [0, 1, 1, 1, 1, 0, 0])
  y = np.asarray(image_ops.pad_or_crop_to(x, (4, 8)))[0, :, :, 0]  # 3 columns: 1 left, 2 right
  np.testing.assert_array_equal(y[0], [0, 1, 1, 1, 1, 1, 0, 0])
  r = jnp.arange(7 * 6, dtype=jnp.float32).reshape(1, 7, 6, 1)
  y = np.asarray(image_ops.pad_or_crop_to(r, (4, 3)))[0, :, :, 0]  # top 1, left 1
  np.testing.assert_array_equal(y, np.arange(42).reshape(7, 6)[1:5, 1:4])
  y = np.asarray(image_ops.pad_or_crop_to(r, (7, 4)))[0, :, :, 0]  # rows kept, left 1
  np.testing.assert_array_equal(y, np.arange(42).reshape(7, 6)[:, 1:5])
  for size in [(8, 5), (6, 7)]:
    with pytest.raises(ValueError, match="cannot fit images of 7x6"):
      image_ops.pad_or_crop_to(r, size)


def test_clipping_of_the_color_adjustments():
  """Results stay in [0, 1]: brightness clips above, contrast / saturation both sides."""
  img = np.array([[[0.9, 0.1, 0.5], [0.2, 0.8, 0.05]]], np.float32)  # (1, 2, 3)
  np.testing.assert_allclose(image_ops.adjust_brightness(img, 1.5), np.minimum(img * 1.5, 1))
  gray = img @ np.array([0.2989, 0.587, 0.114], np.float32)
  for adjust, ref in [(image_ops.adjust_saturation, gray[..., None]),
                      (image_ops.adjust_contrast, gray.mean())]:
    got = np.asarray(adjust(img, 3.0))
    np.testing.assert_allclose(got, np.clip(3.0 * img - 2.0 * ref, 0, 1), atol=1e-6)
    assert got.min() == 0.0 and got.max() == 1.0


def test_cutmix_box_by_hand():
  # 10 x 12, lam 0.75: sides floor(10 * 0.5) = 5, floor(12 * 0.5) = 6, half-sides 2 and 3.
  box = image_ops.cutmix_box(10, 12, 0.75, 9, 0)  # rows 7..11 -> 7..10, cols -3..3 -> 0..3
  assert tuple(int(v) for v in box) == (7, 10, 0, 3)
  box = image_ops.cutmix_box(10, 12, 0.75, 4, 6)
  assert tuple(int(v) for v in box) == (2, 6, 3, 9)
  assert tuple(int(v) for v in image_ops.cutmix_box(10, 12, 1.0, 0, 0)) == (0, 0, 0, 0)
  assert tuple(int(v) for v in image_ops.cutmix_box(4, 4, 0.0, 2, 2)) == (0, 4, 0, 4)


def test_cutmix_batch_by_hand():
  x = np.stack([np.full((4, 5, 1), v, np.float32) for v in (1.0, 2.0)])
  probs = np.eye(2, dtype=np.float32)
  box = tuple(jnp.int32(v) for v in (1, 3, 2, 5))
  out, p = image_ops.cutmix_batch(x, probs, box, np.array([1, 0]))
  want = x.copy()
  want[0, 1:3, 2:5], want[1, 1:3, 2:5] = 2.0, 1.0
  np.testing.assert_array_equal(out, want)
  lam = 1 - 6 / 20  # a 2 x 3 box of 4 x 5
  np.testing.assert_allclose(p, [[lam, 1 - lam], [1 - lam, lam]], rtol=1e-6)


# ------------------------------------------------------------------ preprocessing
def test_augment_spec_reads_the_old_keys_one_at_a_time():
  spec = augment.augment_spec
  assert spec(ConfigDict({"augment": {"flip": True}})) == "flip_lr"
  assert spec(ConfigDict({"augment": {"crop_padding": 3}})) == "pad_crop(3)"
  assert spec(ConfigDict({"augment": {"crop_padding": 0, "flip": False}})) == ""
  assert spec(ConfigDict({"augment": None})) == "" and spec(ConfigDict({})) == ""
  with pytest.raises(ValueError, match="must be a string of ops"):
    spec(ConfigDict({"augment": 3}))


def test_preprocess_from_config_uses_the_configs_statistics_and_size():
  cfg = ConfigDict({"dataset": {"name": "mnist", "image_size": (6, 6), "mean": None,
                                "std": None}, "augment": ""})
  x = np.full((1, 4, 4, 1), 255, np.uint8)
  mean, std = augment.input_pipeline.normalization("mnist")
  out = np.asarray(augment.preprocess_from_config(cfg)(x, None, False))
  assert out.shape == (1, 6, 6, 1)
  np.testing.assert_allclose(out[0, 1, 1, 0], (1 - mean[0]) / std[0], rtol=1e-6)
  np.testing.assert_allclose(out[0, 0, 0, 0], -mean[0] / std[0], rtol=1e-6)
  cfg.dataset.mean, cfg.dataset.std = (0.25,), (0.5,)
  out = np.asarray(augment.preprocess_from_config(cfg)(x, None, False))
  np.testing.assert_allclose([out[0, 1, 1, 0], out[0, 0, 0, 0]], [1.5, -0.5])


def test_mix_converts_integer_images_to_float():
  mix = jax.jit(augment.make_mix_fn("cutmix(1.0)", 3))
  x = np.random.RandomState(4).randint(0, 256, (4, 5, 5, 1)).astype(np.uint8)
  out, _ = mix(x, np.arange(4) % 3, jax.random.key(0))
  assert out.dtype == jnp.float32  # uint8 kept would paste uint8 (cutmix's where)


@pytest.mark.parametrize("spec", ["hue(0.2)", "color(hue=0.2)"])
def test_hue_deltas_are_drawn_on_both_sides(spec):
  """A saturated red pixel's hue after the op is the drawn delta (mod 1), read back with
  colorsys: deltas of both signs, none beyond 0.2."""
  import colorsys
  x = np.tile(np.array([1.0, 0.0, 0.0], np.float32), (64, 1, 1, 1))
  out = np.asarray(_op(spec)(x, jax.random.key(0)))[:, 0, 0]
  deltas = np.array([(colorsys.rgb_to_hsv(*map(float, px))[0] + 0.5) % 1.0 - 0.5 for px in out])
  assert np.abs(deltas).max() <= 0.2 + 1e-5
  assert (deltas < -0.05).sum() > 10 and (deltas > 0.05).sum() > 10


def test_cutmix_centres_cover_the_image_and_lam_is_beta(monkeypatch):
  """cutmix's centre is uniform over every pixel (rows and columns of a non-square image)
  and lam ~ Beta(alpha, alpha): image_ops' box and paste are replaced by a probe that
  returns the drawn parameters."""
  monkeypatch.setattr(image_ops, "cutmix_box", lambda h, w, lam, cy, cx: (cy, cx, lam, 0))
  monkeypatch.setattr(image_ops, "cutmix_batch",
                      lambda x, probs, box, perm: (jnp.stack([box[0], box[1]]), box[2]))
  op = augment.parse("cutmix(2.0)")[0].fn
  x, probs = jnp.zeros((2, 3, 5, 1)), jnp.eye(2)
  centres, lams = jax.jit(jax.vmap(lambda k: op(x, probs, k)))(jax.random.split(
      jax.random.key(0), 300))
  assert set(np.asarray(centres[:, 0]).tolist()) == {0, 1, 2}
  assert set(np.asarray(centres[:, 1]).tolist()) == {0, 1, 2, 3, 4}
  lams = np.asarray(lams)  # Beta(2, 2): mean 1/2, variance 1/20
  assert abs(lams.mean() - 0.5) < 0.05 and abs(lams.var() - 0.05) < 0.015


# ------------------------------------------------------- draws, defaults and messages
def test_noise_adds_the_drawn_normals():
  """noise(std) is clip(x + std * z) with z = jax.random.normal(rng) of the batch's shape:
  the documented draw, so a run's augmentation is reproducible from its key (a flipped
  sign has the same distribution and only shows against the draw itself)."""
  x = np.full((2, 3, 4, 1), 0.5, np.float32)
  key = jax.random.key(7)
  z = np.asarray(jax.random.normal(key, x.shape, jnp.float32))
  np.testing.assert_allclose(_op("noise(0.1)")(x, key), np.clip(x + 0.1 * z, 0.0, 1.0),
                             rtol=1e-6, atol=1e-7)


def test_color_defaults_leave_images_alone():
  """Every ColorJitter argument defaults to 0 (off): color() and a contrast-only jitter of
  a constant image (contrast blends with the image's own mean) change nothing, where a
  brightness default would scale it."""
  x = np.full((4, 3, 3, 1), 0.6, np.float32)
  np.testing.assert_array_equal(_op("color()")(x, jax.random.key(0)), x)
  np.testing.assert_allclose(_op("color(contrast=0.5)")(x, jax.random.key(0)), x, rtol=1e-6)


def test_color_factors_and_order_by_hand():
  """color(brightness, contrast): keys = split(rng, 3); factor j of image i is
  uniform(keys[j], n)[i]; image i's order is permutation(split(keys[2], n)[i], 2); the
  adjustments are applied in that order. Rebuilt here with image_ops' adjustments."""
  n = 6
  x = np.asarray(jax.random.uniform(jax.random.key(1), (n, 4, 4, 1)))
  rng = jax.random.key(3)
  keys = jax.random.split(rng, 3)
  fb = np.asarray(jax.random.uniform(keys[0], (n,), jnp.float32, 0.5, 1.5))
  fc = np.asarray(jax.random.uniform(keys[1], (n,), jnp.float32, 0.2, 1.8))
  orders = [np.asarray(jax.random.permutation(k, 2)) for k in jax.random.split(keys[2], n)]
  adjust = [lambda img, i: image_ops.adjust_brightness(img, fb[i]),
            lambda img, i: image_ops.adjust_contrast(img, fc[i])]
  want = []
  for i in range(n):
    img = x[i]
    for j in orders[i]:
      img = adjust[int(j)](img, i)
    want.append(np.asarray(img))
  assert {tuple(o) for o in orders} == {(0, 1), (1, 0)}  # both orders occur in this draw
  got = _op("color(brightness=0.5, contrast=0.8)")(x, rng)
  np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-6)


def test_cutmix_partners_are_a_permutation_of_the_batch():
  """Each image's pasted box comes from its partner under one permutation of the whole
  batch (gray images: a permutation drawn over the channel axis would broadcast image 0)."""
  n = 8
  x = np.broadcast_to(np.arange(1, n + 1, dtype=np.float32)[:, None, None, None],
                      (n, 6, 6, 1)).copy()  # image i is the constant i + 1
  mix = jax.jit(augment.make_mix_fn("cutmix(1.0)", n))
  moved = 0
  for seed in range(3):
    out, probs = map(np.asarray, mix(x, np.arange(n), jax.random.key(seed)))
    own = np.diag(probs)
    # The partner: the other label weighted; an image whose box came from itself keeps
    # all its weight (or the box was empty).
    partners = np.where(own < 1.0, np.argmax(probs - np.diag(own), 1), np.arange(n))
    assert sorted(partners.tolist()) == list(range(n)), partners
    for i in np.nonzero(own < 1.0)[0]:
      assert set(np.unique(out[i])) == {i + 1, partners[i] + 1}
    moved += int((own < 1.0).sum())
  assert moved >= n  # boxes were pasted


def test_batch_op_order_error_names_the_batch_ops():
  """An image op after a batch op: the message names the batch ops it came after, not the
  image ops before them."""
  with pytest.raises(ValueError) as e:
    augment.parse("flip_lr|mixup(0.2)|rotate(5)")
  msg = str(e.value)
  assert "'rotate(5)' comes after a batch op (mixup(0.2))" in msg
  assert "(flip_lr" not in msg and "put them last" in msg


def test_parsed_ops_are_immutable():
  """Ops are shared by every preprocess function built from one parse: they are frozen."""
  op = augment.parse("flip_lr")[0]
  with pytest.raises(dataclasses.FrozenInstanceError):
    op.name = "flip_ud"


def test_centre_crop_of_the_height_alone():
  """Rows cropped, columns kept (7x6 -> 5x6): top = (7 - 5) // 2 = 1."""
  r = np.arange(42, dtype=np.float32).reshape(1, 7, 6, 1)
  y = np.asarray(image_ops.pad_or_crop_to(r, (5, 6)))[0, :, :, 0]
  np.testing.assert_array_equal(y, r[0, 1:6, :, 0])


def test_rgb_only_adjustments_name_the_channel_count():
  """A 5x6 gray image: the message gives its 1 channel, not a spatial size."""
  for adjust in (image_ops.adjust_saturation, image_ops.adjust_hue):
    with pytest.raises(ValueError, match=r"needs RGB images, these have 1 channel\(s\)"):
      adjust(jnp.zeros((5, 6, 1)), 0.5)


def test_random_crop_draws_its_offsets_as_documented():
  """offsets = randint(rng, (n, 2), 0, 2p + 1) (rows, columns), the draw runs made before
  the augmentation registry existed, so that they replay; each image is the window of the
  zero-padded image at its offset."""
  n, h, w, p = 6, 4, 5, 2
  x = np.random.default_rng(0).random((n, h, w, 2)).astype(np.float32)
  key = jax.random.key(11)
  off = np.asarray(jax.random.randint(key, (n, 2), 0, 2 * p + 1))
  padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  want = np.stack([padded[i, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(off)])
  np.testing.assert_array_equal(jax.jit(image_ops.random_crop, static_argnums=2)(key, x, p), want)
