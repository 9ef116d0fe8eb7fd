"""On-device preprocessing and augmentation: pure functions of (images, rng).

Images arrive as uint8 NHWC batches; conversion, padding to the model's input size,
normalization and random augmentation all run inside the jitted step, so the host only
moves bytes and the device does the arithmetic.

`preprocess_from_config` is the one place a run's preprocessing is built: training,
evaluation and prediction all call it, so a model never sees at test time images
prepared differently from those it was trained on (e.g. MNIST digits zero-padded
28 -> 32 for LeNet, not resized).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from cnn_jax.data import input_pipeline

# preprocess(images_uint8_NHWC, rng, train) -> float32 normalized NHWC images.
PreprocessFn = Callable[[jax.Array, jax.Array, bool], jax.Array]


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


def random_crop(rng: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Zero-pad by `padding` and take a random crop of the original size per image."""
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def random_flip_left_right(rng: jax.Array, images: jax.Array) -> jax.Array:
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def make_preprocess_fn(image_size: Optional[Sequence[int]], mean: Sequence[float],
                       std: Sequence[float], crop_padding: int = 0, flip: bool = False
                       ) -> PreprocessFn:
  """Return preprocess(images_uint8, rng, train) -> float32 normalized images."""
  mean_a = jnp.asarray(mean, jnp.float32)
  std_a = jnp.asarray(std, jnp.float32)

  def preprocess(images: jax.Array, rng: jax.Array, train: bool) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0
    if image_size is not None:
      x = pad_or_crop_to(x, image_size)
    if train and crop_padding:
      rng, sub = jax.random.split(rng)
      x = random_crop(sub, x, crop_padding)
    if train and flip:
      rng, sub = jax.random.split(rng)
      x = random_flip_left_right(sub, x)
    return (x - mean_a) / std_a

  return preprocess


def preprocess_from_config(config: ConfigDict) -> PreprocessFn:
  """The preprocessing of the run described by `config`, for training, eval and predict.

  Reads the data set's normalization (`config.dataset.name`), the size its images are
  centre-padded / cropped to (`config.dataset.image_size`) and the training-only
  augmentation (`config.augment.crop_padding`, `config.augment.flip`). Callers feed
  images as the data set stores them; with train=False the result is deterministic.
  """
  mean, std = input_pipeline.normalization(config.dataset.name)
  aug = config.get("augment") or ConfigDict()
  image_size = config.dataset.get("image_size")
  return make_preprocess_fn(tuple(image_size) if image_size else None, mean, std,
                            int(aug.get("crop_padding", 0) or 0), bool(aug.get("flip", False)))
