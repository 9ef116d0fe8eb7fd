"""The course's MNIST CNN: conv16 5x5, pool, conv24 5x5, pool, fc64, dropout, fc10."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register


@register("mnist_cnn", (28, 28, 1), "conv16-pool-conv24-pool-fc64-dropout-fc10")
class MnistCNN(nn.Module):
  num_classes: int = 10
  dropout_rate: float = 0.5
  axis_name: Optional[str] = None  # pmap axis: dropout masks independent of device count
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype
    x = nn.relu(layers.Conv2D(16, 5, dtype=dt, name="conv1")(x))  # 24x24x16
    x = layers.MaxPool(2, name="pool1")(x)                        # 12x12x16
    x = nn.relu(layers.Conv2D(24, 5, dtype=dt, name="conv2")(x))  # 8x8x24
    x = layers.MaxPool(2, name="pool2")(x)                        # 4x4x24
    x = layers.Flatten(name="flatten")(x)                         # 384
    x = nn.relu(nn.Dense(64, dtype=dt, name="fc1")(x))
    x = layers.Dropout(self.dropout_rate, deterministic=not train, axis_name=self.axis_name,
                       name="dropout")(x)
    return jnp.asarray(nn.Dense(self.num_classes, dtype=dt, name="head")(x), jnp.float32)
