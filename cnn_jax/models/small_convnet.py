"""Small Keras-style convnet: Conv 32/64/128 3x3 relu with two 2x2 max pools."""
from __future__ import annotations

import flax.linen as nn
import jax

from cnn_jax import layers
from cnn_jax.models import register


@register("small_convnet", (28, 28, 1), "conv32-pool-conv64-pool-conv128-dense10")
class SmallConvNet(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.relu(layers.Conv2D(32, 3, name="conv1")(x))   # 26x26x32
    x = layers.MaxPool(2, name="pool1")(x)                # 13x13x32
    x = nn.relu(layers.Conv2D(64, 3, name="conv2")(x))   # 11x11x64
    x = layers.MaxPool(2, name="pool2")(x)                # 5x5x64
    x = nn.relu(layers.Conv2D(128, 3, name="conv3")(x))  # 3x3x128
    x = layers.Flatten(name="flatten")(x)                 # 1152
    return nn.Dense(self.num_classes, name="head")(x)
