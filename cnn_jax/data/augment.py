"""On-device preprocessing and augmentation: pure functions of (images, rng).

Images arrive as uint8 NHWC batches; conversion, padding to the model's input size,
normalization and random augmentation all run inside the jitted step, so the host only
moves bytes and the device does the arithmetic.

`preprocess_from_config` is the one place a run's preprocessing is built: training,
evaluation and prediction all call it, so a model never sees at test time images
prepared differently from those it was trained on (e.g. MNIST digits zero-padded
28 -> 32 for LeNet, not resized).

Augmentation is one string, `config.augment`, in the style of big_vision's `pp`: ops
joined by "|", each `name` or `name(args)`, the arguments Python literals (numbers,
tuples, keyword arguments) read with `ast.literal_eval` by `pp_spec`, the parser
the host-side `ops` share:

    "pad_crop(4)|flip_lr|color(0.4, 0.4, 0.4, 0.1)|cutout(8)|mixup(0.2)"

The string is read, and every name and argument checked, when the run is set up (and
by `config.validate`), before anything compiles. Image ops (see `IMAGE_OPS`) run in
`preprocess` in the order written, on float32 images in [0, 1] after centre padding to
`dataset.image_size` and before normalization, only when train=True; each image gets
its own random draw. Batch ops (`BATCH_OPS`: mixup, cutmix) change the labels too: they
are built by `mix_from_config` and applied by `steps.train_step` after `preprocess`,
so they must come last in the string. The image functions the ops apply, deterministic
given their parameters, are in `image_ops`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from cnn_jax.data import image_ops, input_pipeline, pp_spec
from cnn_jax.data.pp_spec import integer, number, number_range

# preprocess(images_uint8_NHWC, rng, train) -> float32 normalized NHWC images.
PreprocessFn = Callable[[jax.Array, jax.Array, bool], jax.Array]
# mix(images_float, labels_int, rng) -> (images, label_probs (N, num_classes)).
MixFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
# An image op: (float32 NHWC images in [0, 1], rng) -> images of the same shape.
ImageOpFn = Callable[[jax.Array, jax.Array], jax.Array]
# A batch op: (images, label_probs, rng) -> (images, label_probs).
BatchOpFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


# ----------------------------------------------------------------------------------------
# The registry: name -> builder(*args, **kwargs) that checks its arguments and returns
# the op. Builders run when the string is parsed, so bad arguments fail before compiling.
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Op:
  text: str   # as written, e.g. "rotate(15)"
  name: str
  kind: str   # "image" or "batch"
  fn: Callable


IMAGE_OPS: dict[str, Callable[..., ImageOpFn]] = {}
BATCH_OPS: dict[str, Callable[..., BatchOpFn]] = {}


def _register(table: dict[str, Callable], name: str):
  def deco(builder):
    table[name] = builder
    return builder
  return deco


def _jitter_range(what: str, v: Any, hue: bool = False) -> Optional[tuple[float, float]]:
  """torchvision ColorJitter._check_input: a number v -> [center - v, center + v] (a
  factor's clipped at 0, hue's v <= 0.5), or an explicit (min, max); None where it changes
  nothing."""
  center, lo, hi = (0.0, -0.5, 0.5) if hue else (1.0, 0.0, None)
  if isinstance(v, (tuple, list)):
    r = number_range(what, v, lo, hi, names=("min", "max"))
  else:
    v = number(what, v, 0.0, hi)
    r = (-v if hue else max(1.0 - v, 0.0), center + v)
  return None if r[0] == r[1] == center else r


def _uniform(rng: jax.Array, n: int, lo: float, hi: float) -> jax.Array:
  return jax.random.uniform(rng, (n,), jnp.float32, lo, hi)


def _per_image(fn: Callable, x: jax.Array, *params: jax.Array) -> jax.Array:
  return jax.vmap(fn)(x, *params)


@_register(IMAGE_OPS, "pad_crop")
def _pad_crop(padding):
  """Zero-pad by `padding` pixels and crop back at a random offset (translation)."""
  padding = integer("padding", padding, 0)
  return lambda x, rng: image_ops.random_crop(rng, x, padding) if padding else x


@_register(IMAGE_OPS, "flip_lr")
def _flip_lr(p=0.5):
  """Mirror left-right with probability p."""
  p = number("p", p, 0.0, 1.0)
  return lambda x, rng: image_ops.random_flip_left_right(rng, x, p)


@_register(IMAGE_OPS, "flip_ud")
def _flip_ud(p=0.5):
  """Mirror up-down with probability p."""
  p = number("p", p, 0.0, 1.0)
  return lambda x, rng: image_ops.random_flip_up_down(rng, x, p)


@_register(IMAGE_OPS, "translate")
def _translate(max_dx, max_dy=None):
  """Shift by whole pixels, dx in [-max_dx, max_dx], dy in [-max_dy, max_dy] (default
  max_dx), zero fill."""
  max_dx = integer("max_dx", max_dx, 0)
  max_dy = max_dx if max_dy is None else integer("max_dy", max_dy, 0)

  def op(x, rng):
    kx, ky = jax.random.split(rng)
    dx = jax.random.randint(kx, (x.shape[0],), -max_dx, max_dx + 1)
    dy = jax.random.randint(ky, (x.shape[0],), -max_dy, max_dy + 1)
    return _per_image(image_ops.translate_image, x, dx, dy)
  return op


@_register(IMAGE_OPS, "rotate")
def _rotate(max_degrees):
  """Rotate about the centre by an angle uniform in [-max_degrees, max_degrees]."""
  m = number("max_degrees", max_degrees, 0.0, 180.0)
  return lambda x, rng: _per_image(image_ops.rotate_image, x, _uniform(rng, x.shape[0], -m, m))


@_register(IMAGE_OPS, "scale")
def _scale(min_scale, max_scale):
  """Zoom about the centre by a factor uniform in [min_scale, max_scale]."""
  lo, hi = number_range("factors", (min_scale, max_scale), 0.0, open_lo=True,
                        names=("min_scale", "max_scale"))
  return lambda x, rng: _per_image(image_ops.scale_image, x, _uniform(rng, x.shape[0], lo, hi))


def _random_factor_op(adjust: Callable, rng_range: tuple[float, float]) -> ImageOpFn:
  lo, hi = rng_range
  return lambda x, rng: _per_image(adjust, x, _uniform(rng, x.shape[0], lo, hi))


@_register(IMAGE_OPS, "brightness")
def _brightness(d):
  """Multiply by a factor uniform in [max(0, 1 - d), 1 + d] (torchvision's brightness)."""
  r = _jitter_range("d", number("d", d, 0.0))
  return _random_factor_op(image_ops.adjust_brightness, r or (1.0, 1.0))


@_register(IMAGE_OPS, "contrast")
def _contrast(lo, hi):
  """torchvision's adjust_contrast with a factor uniform in [lo, hi]."""
  return _random_factor_op(image_ops.adjust_contrast, number_range("factors", (lo, hi), 0.0))


@_register(IMAGE_OPS, "saturation")
def _saturation(lo, hi):
  """torchvision's adjust_saturation with a factor uniform in [lo, hi] (RGB only)."""
  return _random_factor_op(image_ops.adjust_saturation, number_range("factors", (lo, hi), 0.0))


@_register(IMAGE_OPS, "hue")
def _hue(d):
  """Shift hue by a delta uniform in [-d, d] turns, d <= 0.5 (RGB only)."""
  d = number("d", d, 0.0, 0.5)
  return _random_factor_op(image_ops.adjust_hue, (-d, d))


_COLOR_ADJUST = {"brightness": image_ops.adjust_brightness,
                 "contrast": image_ops.adjust_contrast,
                 "saturation": image_ops.adjust_saturation, "hue": image_ops.adjust_hue}


@_register(IMAGE_OPS, "color")
def _color(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
  """torchvision's ColorJitter, per image: each argument a number or a (min, max) pair as
  there; the enabled adjustments in a random order of their own for every image. On
  1-channel images only brightness and contrast apply (torchvision leaves gray images'
  saturation and hue alone). Under vmap the random order is a select over all enabled
  adjustments at each of their positions: k^2 adjustments' work for k enabled."""
  ranges = {"brightness": _jitter_range("brightness", brightness),
            "contrast": _jitter_range("contrast", contrast),
            "saturation": _jitter_range("saturation", saturation),
            "hue": _jitter_range("hue", hue, hue=True)}

  def op(x, rng):
    gray_ok = ("brightness", "contrast")
    names = [k for k, r in ranges.items() if r is not None and (x.shape[-1] == 3 or k in gray_ok)]
    if not names:
      return x
    n, k = x.shape[0], len(names)
    keys = jax.random.split(rng, k + 1)
    factors = jnp.stack([_uniform(keys[i], n, *ranges[name]) for i, name in enumerate(names)], 1)
    orders = jax.vmap(lambda key: jax.random.permutation(key, k))(jax.random.split(keys[k], n))
    branches = [lambda img, f, j=j: _COLOR_ADJUST[names[j]](img, f[j]) for j in range(k)]

    def one(img, f, order):
      for pos in range(k):
        img = jax.lax.switch(order[pos], branches, img, f)
      return img

    return jax.vmap(one)(x, factors, orders)
  return op


@_register(IMAGE_OPS, "noise")
def _noise(std):
  """Add Gaussian noise of standard deviation `std`, clip to [0, 1]."""
  std = number("std", std, 0.0)
  return lambda x, rng: jnp.clip(x + std * jax.random.normal(rng, x.shape, x.dtype), 0.0, 1.0)


@_register(IMAGE_OPS, "cutout")
def _cutout(size):
  """Set one size x size square, its centre uniform over the image (clipped), to the data's
  per-channel mean: 0 after normalization, as DeVries & Taylor (2017) cut out (their code
  zeroes normalized pixels). `preprocess` passes the mean as `fill`."""
  size = integer("size", size, 1)

  def op(x, rng, fill=0.0):
    ky, kx = jax.random.split(rng)
    cy = jax.random.randint(ky, (x.shape[0],), 0, x.shape[1])
    cx = jax.random.randint(kx, (x.shape[0],), 0, x.shape[2])
    return jax.vmap(lambda img, y, xx: image_ops.cutout_image(img, y, xx, size, fill))(x, cy, cx)
  op.fills_mean = True  # the op runs before normalization: the mean is what normalizes to 0
  return op


@_register(BATCH_OPS, "mixup")
def _mixup(alpha):
  """Mix each image and label with another of the batch (a random permutation), one
  lam ~ Beta(alpha, alpha) for the batch."""
  alpha = number("alpha", alpha, 0.0, open_lo=True)

  def op(x, probs, rng):
    kl, kp = jax.random.split(rng)
    lam = jax.random.beta(kl, alpha, alpha)
    return image_ops.mixup_batch(x, probs, lam, jax.random.permutation(kp, x.shape[0]))
  return op


@_register(BATCH_OPS, "cutmix")
def _cutmix(alpha):
  """Paste one box (area fraction 1 - lam, lam ~ Beta(alpha, alpha), centre uniform) of
  a permuted batch into the batch; labels weighted by the clipped box's area."""
  alpha = number("alpha", alpha, 0.0, open_lo=True)

  def op(x, probs, rng):
    kl, kp, ky, kx = jax.random.split(rng, 4)
    h, w = x.shape[1:3]
    lam = jax.random.beta(kl, alpha, alpha)
    box = image_ops.cutmix_box(h, w, lam, jax.random.randint(ky, (), 0, h),
                               jax.random.randint(kx, (), 0, w))
    return image_ops.cutmix_batch(x, probs, box, jax.random.permutation(kp, x.shape[0]))
  return op


def op_names() -> list[str]:
  return sorted({**IMAGE_OPS, **BATCH_OPS})


def parse(spec: str) -> list[Op]:
  """The ops of an augmentation string, every name and argument checked."""
  if not isinstance(spec, str):
    raise ValueError(f"config.augment must be a string of ops such as 'pad_crop(2)|flip_lr', "
                     f"got {spec!r}")
  ops: list[Op] = []
  for name, args, kwargs, text in pp_spec.split_ops(spec, "augment string", skip_empty=True):
    kind = "image" if name in IMAGE_OPS else "batch" if name in BATCH_OPS else None
    if kind is None:
      raise pp_spec.unknown_op_error(name, op_names(), spec, "augment string")
    builder = (IMAGE_OPS if kind == "image" else BATCH_OPS)[name]
    fn = pp_spec.build(builder, name, args, kwargs, spec, "augment string")
    if kind == "image" and any(o.kind == "batch" for o in ops):
      raise ValueError(f"augmentation op {text!r} comes after a batch op ("
                       f"{', '.join(o.text for o in ops if o.kind == 'batch')}) in {spec!r}: "
                       "mixup / cutmix run in the train step after all image ops, put them last")
    ops.append(Op(text, name, kind, fn))
  return ops


def augment_spec(config: ConfigDict) -> str:
  """config.augment; also reads the two keys it replaced (augment.crop_padding,
  augment.flip) from the saved configs of older runs."""
  aug = config.get("augment")
  if aug is None:
    return ""
  if isinstance(aug, str):
    return aug
  if isinstance(aug, (dict, ConfigDict)):
    parts = []
    if int(aug.get("crop_padding", 0) or 0):
      parts.append(f"pad_crop({int(aug['crop_padding'])})")
    if aug.get("flip", False):
      parts.append("flip_lr")
    return "|".join(parts)
  raise ValueError(f"config.augment must be a string of ops, got {aug!r}")


def make_preprocess_fn(image_size: Optional[Sequence[int]], mean: Sequence[float],
                       std: Sequence[float], ops: str = "") -> PreprocessFn:
  """Return preprocess(images_uint8, rng, train) -> float32 normalized images.

  `ops` is an augmentation string; its image ops run with train=True only, between
  padding to image_size and normalization, each with its own key split from rng. Its
  batch ops (mixup, cutmix) are left to `make_mix_fn`.
  """
  mean_a = jnp.asarray(mean, jnp.float32)
  std_a = jnp.asarray(std, jnp.float32)
  augment_ops = [op for op in parse(ops) if op.kind == "image"]

  def preprocess(images: jax.Array, rng: jax.Array, train: bool) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0
    if image_size is not None:
      x = image_ops.pad_or_crop_to(x, image_size)
    if train:
      for op in augment_ops:
        rng, sub = jax.random.split(rng)
        x = op.fn(x, sub, fill=mean_a) if getattr(op.fn, "fills_mean", False) else op.fn(x, sub)
    return (x - mean_a) / std_a

  return preprocess


def make_mix_fn(ops: str, num_classes: int) -> Optional[MixFn]:
  """mix(images, labels, rng) -> (images, label_probs) from the batch ops of `ops`
  (None if it has none): labels one-hot, then each op in turn with its own key."""
  batch_ops = [op for op in parse(ops) if op.kind == "batch"]
  if not batch_ops:
    return None

  def mix(images: jax.Array, labels: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = images if jnp.issubdtype(images.dtype, jnp.floating) else images.astype(jnp.float32)
    probs = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    for op in batch_ops:
      rng, sub = jax.random.split(rng)
      x, probs = op.fn(x, probs, sub)
    return x, probs

  return mix


def preprocess_from_config(config: ConfigDict) -> PreprocessFn:
  """The preprocessing of the run described by `config`, for training, eval and predict.

  Reads the data set's normalization (`dataset.mean` / `std`, else by `dataset.name`), the size its images are
  centre-padded / cropped to (`config.dataset.image_size`) and the training-only
  augmentation (`config.augment`). Callers feed images as the data set stores them;
  with train=False the result is deterministic.
  """
  mean, std = input_pipeline.normalization(config.dataset.name)
  if config.dataset.get("mean") is not None:  # the config's statistics win (image folders)
    mean, std = tuple(config.dataset.mean), tuple(config.dataset.std)
  image_size = config.dataset.get("image_size")
  return make_preprocess_fn(tuple(image_size) if image_size else None, mean, std,
                            augment_spec(config))


def mix_from_config(config: ConfigDict, num_classes: int) -> Optional[MixFn]:
  """The batch ops (mixup, cutmix) of `config.augment`, for `steps.train_step`'s `mix`."""
  return make_mix_fn(augment_spec(config), num_classes)
