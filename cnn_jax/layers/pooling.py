"""Pooling: max / average (fixed, global, adaptive) and torch's ceil_mode padding.

Adaptive pooling and ceil_mode padding reproduce torch's window arithmetic exactly, so
torchvision weights (AlexNet's 6x6 pool, GoogLeNet's ceil-mode pools) give torch's
numbers; they live here because several models share them.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.layers.conv import PaddingLike, _check_spatial, _pair, resolve_padding

Array = jax.Array


def _tiles(window, strides, pads) -> bool:
  """Non-overlapping windows without padding: the common 2x2 / stride 2 case."""
  return tuple(window) == tuple(strides) and all(p == (0, 0) for p in pads)


def _tile_view(x: Array, window: tuple[int, int]) -> Array:
  """(N, H, W, C) -> (N, H//kh, kh, W//kw, kw, C), dropping the rows VALID pooling drops.

  Pooling as a reduction over this view gives the same numbers as `reduce_window`.
  """
  n, h, w, c = x.shape
  kh, kw = window
  x = x[:, :h - h % kh, :w - w % kw]
  return x.reshape(n, h // kh, kh, w // kw, kw, c)


def _pool_pads(name, x, window, strides, padding):
  pads = resolve_padding(padding, x.shape[1:3], window, strides, (1, 1))
  _check_spatial(name, x.shape[1:3], window, pads, strides, (1, 1))
  return pads


def _max_pool_tiled(x: Array, window: tuple[int, int]) -> Array:
  """Non-overlapping max pool as a max over the tile view.

  Its gradient is a fused elementwise compare instead of `select_and_scatter`, which
  XLA:CPU runs slowly (2x faster training steps for mnist_cnn on CPU). With tied maxima
  the gradient goes to every tied element rather than to the first.
  """
  return jnp.max(_tile_view(x, window), axis=(2, 4))


def _max_pool_reduce_window(x: Array, window: tuple[int, int], strides: tuple[int, int],
                            pads: Sequence[tuple[int, int]]) -> Array:
  """Max pool with `reduce_window`: XLA's native op, fast on GPU / TPU."""
  return nn.max_pool(x, window, strides, pads)


def _use_tiled_max_pool() -> bool:
  """The tiled path pays off only on XLA:CPU; GPU / TPU have fast select_and_scatter, and
  the reshape can cost them a layout change. Decided when the function is traced."""
  return jax.default_backend() == "cpu"


class MaxPool(nn.Module):
  """Max pooling; 3x3 stride 2 gives AlexNet's overlapping pooling."""
  window: Union[int, Sequence[int]] = 2
  strides: Union[int, Sequence[int], None] = None
  padding: PaddingLike = "VALID"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    window = _pair(self.window)
    strides = _pair(self.strides) if self.strides is not None else window
    pads = _pool_pads(self.name or "MaxPool", x, window, strides, self.padding)
    # Only where the tiles cover x: XLA:CPU (jax 0.10.2) miscompiles the gradient of the
    # tile view's crop of an odd size (tiny_cnn on 28x28: 60-86% off at backend levels 1-2,
    # float64 at 3; tests/test_max_pool_gradient.py).
    covers = x.shape[1] % window[0] == 0 and x.shape[2] % window[1] == 0
    if _tiles(window, strides, pads) and covers and _use_tiled_max_pool():
      return _max_pool_tiled(x, window)
    return _max_pool_reduce_window(x, window, strides, pads)


class AvgPool(nn.Module):
  """Average pooling. Padded zeros are excluded from the mean by default."""
  window: Union[int, Sequence[int]] = 2
  strides: Union[int, Sequence[int], None] = None
  padding: PaddingLike = "VALID"
  count_include_pad: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    window = _pair(self.window)
    strides = _pair(self.strides) if self.strides is not None else window
    pads = _pool_pads(self.name or "AvgPool", x, window, strides, self.padding)
    if _tiles(window, strides, pads):  # a reshape and a mean: cheap on every backend
      return jnp.mean(_tile_view(x, window), axis=(2, 4))
    return nn.avg_pool(x, window, strides, pads, count_include_pad=self.count_include_pad)


class GlobalAvgPool(nn.Module):
  """Mean over the spatial dimensions: (N, H, W, C) -> (N, C)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return jnp.mean(x, axis=(1, 2))


class GlobalMaxPool(nn.Module):
  """Max over the spatial dimensions: (N, H, W, C) -> (N, C)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return jnp.max(x, axis=(1, 2))


class Flatten(nn.Module):
  """(N, ...) -> (N, prod(...)), a row of its own in the summary as in Keras."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return x.reshape((x.shape[0], -1))


# ---------------------------------------------------------------- torch-exact pools
def _adaptive_pool_1d(x: Array, axis: int, out: int) -> Array:
  size = x.shape[axis]
  if size % out == 0:  # equal, disjoint windows: one reshape
    k = size // out
    shape = x.shape[:axis] + (out, k) + x.shape[axis + 1:]
    return jnp.mean(x.reshape(shape), axis=axis + 1)
  # torch: window i covers [floor(i*size/out), ceil((i+1)*size/out)).
  pieces = []
  for i in range(out):
    lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
    pieces.append(jnp.mean(lax.slice_in_dim(x, lo, hi, axis=axis), axis=axis, keepdims=True))
  return jnp.concatenate(pieces, axis=axis)


def adaptive_avg_pool(x: Array, output_size: Union[int, Sequence[int]]) -> Array:
  """torch.nn.AdaptiveAvgPool2d on NHWC input: any H x W -> output_size, exactly as torch.

  Rectangle means are separable, so pooling H then W gives torch's result.
  """
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
  return _adaptive_pool_1d(_adaptive_pool_1d(x, 1, oh), 2, ow)


class AdaptiveAvgPool(nn.Module):
  """Average-pool any spatial size to `output_size` (identity when it already matches)."""
  output_size: Union[int, Sequence[int]] = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return adaptive_avg_pool(x, self.output_size)


def ceil_mode_padding(size: int, window: int, stride: int, pad: int = 0) -> tuple[int, int]:
  """(low, high) padding that makes a VALID pool behave like torch's ceil_mode=True.

  torch drops a last window that would start in the right padding, so the output is
  ceil((size + 2*pad - window) / stride) + 1, minus one in that case. Max pools and
  AvgPool(count_include_pad=False) then give torch's numbers; AvgPool(count_include_pad=True)
  does not where the high side pads past `pad` (torch leaves that extra out of the divisor).
  """
  out = math.ceil((size + 2 * pad - window) / stride) + 1
  if (out - 1) * stride >= size + pad:
    out -= 1
  return (pad, max((out - 1) * stride + window - size - pad, pad))
