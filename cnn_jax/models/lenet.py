"""LeNet-5 (LeCun et al. 1998) and the Keras "LeNet-5-like" convnet.

`lenet5` follows the paper's layer sizes on 32x32 input: C1 6@28x28 (5x5), S2 2x2
average pooling, C3 16@10x10 (5x5), S4, C5 120 (a 5x5 conv giving 1x1), F6 84, output
10, tanh throughout. Two simplifications, both standard in modern re-implementations:
C3 connects to all six S2 maps (the paper uses a sparse table), S2/S4 are plain
averages (the paper adds a trainable coefficient and bias), and the output is a
dense layer rather than RBF units.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register


@register("lenet5", (32, 32, 1), "LeNet-5, LeCun et al. 1998 (tanh, avg pooling)")
class LeNet5(nn.Module):
  num_classes: int = 10
  activation: str = "tanh"
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act, dt = layers.get_activation(self.activation), self.dtype
    x = jnp.asarray(x, dt)
    x = act(layers.Conv2D(6, 5, dtype=dt, name="C1")(x))    # 28x28x6
    x = layers.AvgPool(2, name="S2")(x)                     # 14x14x6
    x = act(layers.Conv2D(16, 5, dtype=dt, name="C3")(x))   # 10x10x16
    x = layers.AvgPool(2, name="S4")(x)                     # 5x5x16
    x = act(layers.Conv2D(120, 5, dtype=dt, name="C5")(x))  # 1x1x120
    x = layers.Flatten(name="flatten")(x)
    x = act(nn.Dense(84, dtype=dt, name="F6")(x))
    return jnp.asarray(nn.Dense(self.num_classes, dtype=dt, name="head")(x), jnp.float32)


@register("lenet_like", (32, 32, 1), "Keras LeNet-5-like convnet (81,194 parameters)")
class LeNetLike(nn.Module):
  """Conv 6 3x3 relu, avg pool, Conv 16 3x3 relu, avg pool, Dense 120-84-10."""
  num_classes: int = 10
  activation: str = "relu"
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act, dt = layers.get_activation(self.activation), self.dtype
    x = jnp.asarray(x, dt)
    x = act(layers.Conv2D(6, 3, dtype=dt, name="conv1")(x))   # 30x30x6
    x = layers.AvgPool(2, name="pool1")(x)                    # 15x15x6
    x = act(layers.Conv2D(16, 3, dtype=dt, name="conv2")(x))  # 13x13x16
    x = layers.AvgPool(2, name="pool2")(x)                    # 6x6x16
    x = layers.Flatten(name="flatten")(x)                     # 576
    x = act(nn.Dense(120, dtype=dt, name="dense1")(x))
    x = act(nn.Dense(84, dtype=dt, name="dense2")(x))
    return jnp.asarray(nn.Dense(self.num_classes, dtype=dt, name="head")(x), jnp.float32)
