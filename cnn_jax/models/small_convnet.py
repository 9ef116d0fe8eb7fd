"""Small Keras-style convnet: Conv 32/64/128 3x3 relu with two 2x2 max pools."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register


@register("small_convnet", (28, 28, 1), "conv32-pool-conv64-pool-conv128-dense10")
class SmallConvNet(nn.Module):
  """Keras' small convnet; `batch_norm` adds batch norm after each convolution (no bias:
  BN's shift replaces it), which lets a short one-cycle run reach a higher accuracy
  (experiments/mnist_best.py); `widths` scales the three convolutions."""
  num_classes: int = 10
  widths: tuple[int, int, int] = (32, 64, 128)
  batch_norm: bool = False
  axis_name: Optional[str] = None  # pmap axis: batch-norm moments over the global batch
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype

    def conv(x: jax.Array, i: int) -> jax.Array:
      x = layers.Conv2D(self.widths[i], 3, use_bias=not self.batch_norm, dtype=dt,
                        name=f"conv{i + 1}")(x)
      if self.batch_norm:
        x = layers.batch_norm(train, self.axis_name, dtype=dt, name=f"bn{i + 1}")(x)
      return nn.relu(x)

    x = layers.MaxPool(2, name="pool1")(conv(x, 0))  # 26x26x32 -> 13x13x32
    x = layers.MaxPool(2, name="pool2")(conv(x, 1))  # 11x11x64 -> 5x5x64
    x = conv(x, 2)                                    # 3x3x128
    x = layers.Flatten(name="flatten")(x)             # 1152
    return jnp.asarray(nn.Dense(self.num_classes, dtype=dt, name="head")(x), jnp.float32)
