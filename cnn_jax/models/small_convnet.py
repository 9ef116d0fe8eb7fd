"""Small Keras-style convnet: Conv 32/64/128 3x3 relu with two 2x2 max pools."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register


@register("small_convnet", (28, 28, 1), "conv32-pool-conv64-pool-conv128-dense10")
class SmallConvNet(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype
    x = nn.relu(layers.Conv2D(32, 3, dtype=dt, name="conv1")(x))   # 26x26x32
    x = layers.MaxPool(2, name="pool1")(x)                         # 13x13x32
    x = nn.relu(layers.Conv2D(64, 3, dtype=dt, name="conv2")(x))   # 11x11x64
    x = layers.MaxPool(2, name="pool2")(x)                         # 5x5x64
    x = nn.relu(layers.Conv2D(128, 3, dtype=dt, name="conv3")(x))  # 3x3x128
    x = layers.Flatten(name="flatten")(x)                          # 1152
    return jnp.asarray(nn.Dense(self.num_classes, dtype=dt, name="head")(x), jnp.float32)
