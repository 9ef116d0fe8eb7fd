"""Batched image functions used by the augmentation ops; each a pure function, tested exactly.

The deterministic cores take one HWC image (or one batch, for the mixes) and explicit
parameters; the random ops of `augment` draw the parameters and vmap them, and the tests
check these exactly. `random_crop` and the flips are the old random entry points on
batches, kept as they were so that older runs replay the same.
"""
from __future__ import annotations

from typing import Any, Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp

# Rec. 601 luma, the weights of torchvision's (and TensorFlow's, and pix's) rgb_to_grayscale.
LUMA = (0.2989, 0.587, 0.114)


# ----------------------------------------------------------------------------------------
# Deterministic cores: one HWC image (or one batch for the mixes), explicit parameters.
# The random ops of `augment` draw the parameters and vmap these; tests check these exactly.
# ----------------------------------------------------------------------------------------

def pad_or_crop_to(images: jax.Array, size: Sequence[int]) -> jax.Array:
  """Centre-pad with zeros (or centre-crop) NHWC images to (H, W) = size."""
  h, w = images.shape[1:3]
  th, tw = size
  if (h, w) == (th, tw):
    return images
  if th >= h and tw >= w:
    ph, pw = th - h, tw - w
    return jnp.pad(images, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  if th <= h and tw <= w:
    top, left = (h - th) // 2, (w - tw) // 2
    return images[:, top:top + th, left:left + tw]
  raise ValueError(f"cannot fit images of {h}x{w} to {th}x{tw}: resize them instead")


def translate_image(img: jax.Array, dx: Any, dy: Any) -> jax.Array:
  """img (H, W, C) shifted by dx columns right and dy rows down (integers), zero fill.

  Not pix.affine_transform: an integer shift needs no interpolation, and a roll plus a
  mask is exact and cheaper.
  """
  h, w = img.shape[:2]
  shifted = jnp.roll(img, (dy, dx), axis=(0, 1))
  rows = jnp.arange(h)[:, None, None] - dy
  cols = jnp.arange(w)[None, :, None] - dx
  inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
  return jnp.where(inside, shifted, jnp.zeros((), img.dtype))


def _affine_zero_fill(img: jax.Array, matrix: jax.Array) -> jax.Array:
  """pix.affine_transform about the image centre, bilinear, zero outside the image.

  `matrix` (2x2) maps output (row, col) offsets from the centre to input offsets.
  pix's mode="constant" returns the fill value for any coordinate outside
  [0, size - 1] without blending, so an edge pixel could turn black through float
  rounding (cos 90 degrees is not exactly 0 in float32) and the border would not be
  interpolated with the fill. So the image gets a 1-pixel zero border first: bilinear
  interpolation then blends with zeros up to one pixel outside, as torch's grid_sample
  with padding_mode="zeros" does. pix computes coordinates with a matmul, which a GPU
  would run in TF32 (an error of up to ~0.1 pixel at 224 px), hence precision highest.
  """
  padded = jnp.pad(img, ((1, 1), (1, 1), (0, 0)))
  full = jnp.eye(3, dtype=jnp.float32).at[:2, :2].set(matrix)
  centre = (jnp.asarray(padded.shape, jnp.float32) - 1.0) / 2.0
  with jax.default_matmul_precision("highest"):
    offset = centre - full @ centre
    out = pix.affine_transform(padded, full, offset=offset, order=1, mode="constant", cval=0.0)
  return out[1:-1, 1:-1]


def rotate_image(img: jax.Array, angle: Any) -> jax.Array:
  """img (H, W, C) rotated counter-clockwise (as displayed, row 0 on top) by `angle`
  degrees about its centre; bilinear, zero fill. rotate_image(img, 90) == np.rot90(img)
  for a square image (up to float rounding). Uses pix.affine_transform (see
  `_affine_zero_fill`); pix.rotate is the same transform without the zero border."""
  t = jnp.deg2rad(jnp.asarray(angle, jnp.float32))
  c, s = jnp.cos(t), jnp.sin(t)
  # Output offset (dr, dc) from the centre reads input offset R(-angle) (dr, dc); with
  # rows pointing down, a counter-clockwise turn on screen is this matrix.
  return _affine_zero_fill(img, jnp.stack([jnp.stack([c, s]), jnp.stack([-s, c])]))


def scale_image(img: jax.Array, s: Any) -> jax.Array:
  """img (H, W, C) zoomed by `s` about its centre (s > 1: zoom in), bilinear, zero fill
  (pix.affine_transform, see `_affine_zero_fill`)."""
  inv = 1.0 / jnp.asarray(s, jnp.float32)
  return _affine_zero_fill(img, jnp.diag(jnp.stack([inv, inv])))


def cutout_image(img: jax.Array, cy: Any, cx: Any, size: int, fill: Any = 0.0) -> jax.Array:
  """img (H, W, C) with rows [cy - size//2, cy - size//2 + size) x the same columns about
  cx set to `fill` (a number, or one per channel), clipped at the borders (DeVries & Taylor
  2017). Own code: pix has none."""
  h, w = img.shape[:2]
  top, left = cy - size // 2, cx - size // 2
  r = jnp.arange(h)[:, None, None]
  c = jnp.arange(w)[None, :, None]
  box = (r >= top) & (r < top + size) & (c >= left) & (c < left + size)
  return jnp.where(box, jnp.asarray(fill, img.dtype), img)


def grayscale(img: jax.Array) -> jax.Array:
  """(..., 3) RGB -> (..., 1) luma with torchvision's weights. Written out elementwise
  rather than pix.rgb_to_grayscale (same weights), whose tensordot a GPU may run in TF32."""
  r, g, b = img[..., 0], img[..., 1], img[..., 2]
  return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b)[..., None]


def adjust_brightness(img: jax.Array, factor: Any) -> jax.Array:
  """torchvision's adjust_brightness: clip(factor * img, 0, 1). Not pix.adjust_brightness,
  which adds a delta (TensorFlow's definition)."""
  return jnp.clip(factor * img, 0.0, 1.0)


def adjust_contrast(img: jax.Array, factor: Any) -> jax.Array:
  """torchvision's adjust_contrast: blend with the mean of the grayscale image (one value
  for all channels). Not pix.adjust_contrast, which uses each channel's own mean (TF's);
  the two agree on 1-channel images."""
  gray = grayscale(img) if img.shape[-1] == 3 else img
  mean = jnp.mean(gray, axis=(-3, -2, -1), keepdims=True)
  return jnp.clip(factor * img + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(img: jax.Array, factor: Any) -> jax.Array:
  """torchvision's adjust_saturation: blend with the grayscale image (RGB only). Not
  pix.adjust_saturation, which scales the HSV saturation (TF's; different colours)."""
  _need_rgb(img, "saturation")
  return jnp.clip(factor * img + (1.0 - factor) * grayscale(img), 0.0, 1.0)


def adjust_hue(img: jax.Array, delta: Any) -> jax.Array:
  """Hue shifted by `delta` turns (in [-0.5, 0.5]) in HSV: pix.adjust_hue, which is
  torchvision's adjust_hue (h = (h + delta) mod 1)."""
  _need_rgb(img, "hue")
  return pix.adjust_hue(img, delta)


def _need_rgb(img: jax.Array, what: str) -> None:
  if img.shape[-1] != 3:
    raise ValueError(f"augmentation {what!r} needs RGB images, these have {img.shape[-1]} "
                     "channel(s); color(...) leaves saturation and hue out for 1 channel")


def mixup_batch(images: jax.Array, probs: jax.Array, lam: Any, perm: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """lam * (x, p) + (1 - lam) * (x, p)[perm] (Zhang et al. 2018)."""
  x = lam * images + (1.0 - lam) * images[perm]
  return x, lam * probs + (1.0 - lam) * probs[perm]


def cutmix_box(h: int, w: int, lam: Any, cy: Any, cx: Any) -> tuple[jax.Array, ...]:
  """(y1, y2, x1, x2) of CutMix's box (Yun et al. 2019, reference code): sides
  int(H sqrt(1 - lam)) x int(W sqrt(1 - lam)) centred at (cy, cx), clipped to the image."""
  rat = jnp.sqrt(1.0 - lam)
  ch = jnp.floor(h * rat).astype(jnp.int32)
  cw = jnp.floor(w * rat).astype(jnp.int32)
  y1, y2 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
  x1, x2 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
  return y1, y2, x1, x2


def cutmix_batch(images: jax.Array, probs: jax.Array, box: Sequence[Any], perm: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """Paste box (y1, y2, x1, x2) of images[perm] into every image; the label weight of
  the pasted image is the box's share of the image's area (lam recomputed as in the
  reference code from the clipped box)."""
  y1, y2, x1, x2 = box
  h, w = images.shape[1:3]
  r = jnp.arange(h)[:, None, None]
  c = jnp.arange(w)[None, :, None]
  inside = (r >= y1) & (r < y2) & (c >= x1) & (c < x2)
  x = jnp.where(inside, images[perm], images)
  lam = 1.0 - ((y2 - y1) * (x2 - x1)).astype(jnp.float32) / (h * w)
  return x, lam * probs + (1.0 - lam) * probs[perm]


# ----------------------------------------------------------------------------------------
# Random ops on batches (the old entry points, kept: pad_crop | flip_lr draw exactly what
# crop_padding / flip drew before the registry, so older runs replay the same).
# ----------------------------------------------------------------------------------------

def random_crop(rng: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Zero-pad by `padding` and take a random crop of the original size per image."""
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def random_flip_left_right(rng: jax.Array, images: jax.Array, p: float = 0.5) -> jax.Array:
  flip = jax.random.bernoulli(rng, p, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, pix.flip_left_right(images), images)


def random_flip_up_down(rng: jax.Array, images: jax.Array, p: float = 0.5) -> jax.Array:
  flip = jax.random.bernoulli(rng, p, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, pix.flip_up_down(images), images)
