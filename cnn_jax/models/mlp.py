"""Multi-layer perceptron: the course's 784-128-64-10 MNIST baseline."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register


@register("mlp", (28, 28, 1), "784-128-64-10 MLP (109,386 parameters)")
class MLP(nn.Module):
  hidden: Sequence[int] = (128, 64)
  num_classes: int = 10
  activation: str = "relu"
  dropout_rate: float = 0.0
  axis_name: Optional[str] = None  # pmap axis: dropout masks independent of device count
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = layers.get_activation(self.activation)
    x = layers.Flatten(name="flatten")(jnp.asarray(x, self.dtype))
    for i, width in enumerate(self.hidden):
      x = act(nn.Dense(width, dtype=self.dtype, name=f"dense{i + 1}")(x))
      if self.dropout_rate:
        x = layers.Dropout(self.dropout_rate, deterministic=not train, axis_name=self.axis_name)(x)
    return jnp.asarray(nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x), jnp.float32)
