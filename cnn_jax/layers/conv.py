"""Convolution and the size arithmetic shared by every spatial layer.

Convolution is cross-correlation, as in every deep-learning framework; padding and
output sizes follow the textbook formulas so a CNN course's worked examples reproduce
to the last digit (see tests/test_layers.py).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

PaddingLike = Union[str, int, Sequence[int], Sequence[tuple[int, int]]]
Array = jax.Array

default_kernel_init = nn.initializers.lecun_normal()


# --------------------------------------------------------------------------- sizes
def conv_output_size(W: int, K: int, P: int = 0, S: int = 1, D: int = 1) -> int:
  """O = floor((W - D*(K-1) - 1 + 2P) / S) + 1, i.e. (W - K + 2P)/S + 1 for D=1.

  Raises ValueError if the (dilated) kernel does not fit in the padded input.
  """
  effective_k = D * (K - 1) + 1
  if W + 2 * P < effective_k:
    raise ValueError(
        f"kernel of effective size {effective_k} (K={K}, dilation={D}) does not fit in an "
        f"input of size {W} with padding {P}")
  return (W + 2 * P - effective_k) // S + 1


def _pair(v: Union[int, Sequence[int]]) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  v = tuple(v)
  if len(v) != 2:
    raise ValueError(f"expected an int or a pair, got {v}")
  return v  # type: ignore[return-value]


def resolve_padding(padding: PaddingLike, input_hw: Sequence[int], kernel: Sequence[int],
                    strides: Sequence[int], dilation: Sequence[int]) -> list[tuple[int, int]]:
  """Turn VALID / SAME / FULL / ints into explicit (low, high) pairs per spatial dim.

  SAME follows XLA/TensorFlow: output = ceil(W / S), extra padding goes at the end.
  FULL pads D*(K-1) on both sides, so every output position overlaps the input
  by at least one pixel (output = W + D*(K-1) for stride 1).
  """
  eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return [(0, 0)] * len(kernel)
    if mode == "FULL":
      return [(e - 1, e - 1) for e in eff]
    if mode == "SAME":
      pads = []
      for w, e, s in zip(input_hw, eff, strides):
        out = -(-w // s)
        total = max((out - 1) * s + e - w, 0)
        pads.append((total // 2, total - total // 2))
      return pads
    raise ValueError(f"unknown padding {padding!r}: use 'VALID', 'SAME', 'FULL', an int, "
                     "or (low, high) pairs")
  if isinstance(padding, int):
    return [(padding, padding)] * len(kernel)
  padding = list(padding)
  if all(isinstance(p, int) for p in padding):
    return [(p, p) for p in padding]  # type: ignore[misc]
  return [tuple(p) for p in padding]  # type: ignore[misc]


def _check_spatial(name: str, x_shape: Sequence[int], kernel: Sequence[int],
                   pads: Sequence[tuple[int, int]], strides: Sequence[int],
                   dilation: Sequence[int]) -> None:
  for w, k, (lo, hi), d in zip(x_shape, kernel, pads, dilation):
    eff = d * (k - 1) + 1
    if w + lo + hi < eff:
      raise ValueError(
          f"{name}: input of spatial size {tuple(x_shape)} is too small for a kernel of "
          f"{tuple(kernel)} (dilation {tuple(dilation)}, padding {list(pads)}). Use a larger "
          "input, more padding, or fewer downsampling layers before this one.")


# ---------------------------------------------------------------- batch split
# XLA:CPU runs one convolution over maps of at most 16x16 on a single thread, while two
# independent convolutions (the batch's halves) run side by side on two threads: on 2
# cores 1.2-1.4x faster at resnet20's 16x16x32 and 8x8x64, no slower on one core; at
# 32x32x16 the kernel itself scales and the split costs 5-10% (benchmarks/conv_scaling.py).
# Whole train steps, 2 cores (benchmarks/conv_batch_split.py, 9 rounds): resnet20 1.11x;
# mnist_cnn, whose 12x12 map has 16 channels, 0.95x: thin inputs stay one convolution.
SPLIT_BATCH_MAX_PIXELS = 16 * 16
SPLIT_BATCH_MIN_CHANNELS = 32


def split_batch_wanted(x_shape: Sequence[int], batch_split: Optional[bool] = None) -> bool:
  """Whether Conv2D computes this input as two convolutions of its batch's halves.

  batch_split None decides by the measured rule: the CPU backend, one local device (with
  several, the batch axis is the one sharded over them and halving it would move data
  between devices), an even batch, a map of at most SPLIT_BATCH_MAX_PIXELS pixels and at
  least SPLIT_BATCH_MIN_CHANNELS input channels;
  CNN_JAX_CONV_SPLIT=0 in the environment turns that rule off. True splits any even
  batch, False never. The outputs are the same convolution's to float32 rounding.
  """
  n, h, w, c = x_shape
  if not isinstance(n, int):  # a symbolic batch (export with a polymorphic batch): one op
    return False
  if batch_split is not None:
    return bool(batch_split) and n >= 2 and n % 2 == 0
  return (os.environ.get("CNN_JAX_CONV_SPLIT", "1") != "0"
          and jax.default_backend() == "cpu" and jax.local_device_count() == 1
          and n >= 2 and n % 2 == 0 and h * w <= SPLIT_BATCH_MAX_PIXELS
          and c >= SPLIT_BATCH_MIN_CHANNELS)


def conv_nhwc(x: Array, k: Array, batch_split: bool, **conv_kwargs: Any) -> Array:
  """lax.conv_general_dilated over NHWC / HWIO, as one op or as two over the batch's halves."""
  def conv(inputs: Array) -> Array:
    return lax.conv_general_dilated(inputs, k, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    **conv_kwargs)
  if not batch_split:
    return conv(x)
  return jnp.concatenate([conv(half) for half in jnp.split(x, 2, axis=0)], axis=0)


# ------------------------------------------------------------------- convolution
class Conv2D(nn.Module):
  """2-D convolution (cross-correlation) over NHWC input with an HWIO kernel.

  Attributes:
    features: number of output channels.
    kernel_size: int or (kh, kw).
    strides: int or (sh, sw).
    padding: 'VALID', 'SAME', 'FULL', an int, (ph, pw) or ((top, bottom), (left, right)).
    dilation: kernel dilation (atrous rate).
    feature_group_count: grouped convolution (AlexNet's two towers, depthwise convs).
    batch_split: compute the batch's halves as two convolutions (None: where measured
      faster, see split_batch_wanted).
  """
  features: int
  kernel_size: Union[int, Sequence[int]] = 3
  strides: Union[int, Sequence[int]] = 1
  padding: PaddingLike = "VALID"
  dilation: Union[int, Sequence[int]] = 1
  feature_group_count: int = 1
  use_bias: bool = True
  kernel_init: Callable[..., Array] = default_kernel_init
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  batch_split: Optional[bool] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    name = self.name or type(self).__name__
    if x.ndim != 4:
      raise ValueError(f"{name}: expected NHWC input of rank 4, got shape {x.shape}")
    kernel = _pair(self.kernel_size)
    strides = _pair(self.strides)
    dilation = _pair(self.dilation)
    in_ch = x.shape[-1]
    if in_ch % self.feature_group_count or self.features % self.feature_group_count:
      raise ValueError(
          f"{name}: input channels ({in_ch}) and features ({self.features}) must both be "
          f"divisible by feature_group_count ({self.feature_group_count})")
    pads = resolve_padding(self.padding, x.shape[1:3], kernel, strides, dilation)
    _check_spatial(name, x.shape[1:3], kernel, pads, strides, dilation)
    k = self.param("kernel", self.kernel_init,
                   kernel + (in_ch // self.feature_group_count, self.features),
                   self.param_dtype)
    x, k = nn.dtypes.promote_dtype(x, k, dtype=self.dtype)
    y = conv_nhwc(x, k, split_batch_wanted(x.shape, self.batch_split),
                  window_strides=strides, padding=pads, rhs_dilation=dilation,
                  feature_group_count=self.feature_group_count, precision=self.precision)
    if self.use_bias:
      b = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + jnp.asarray(b, y.dtype)
    return y
