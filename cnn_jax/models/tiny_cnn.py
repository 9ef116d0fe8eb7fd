"""A few-second CNN: (conv3x3-BN-relu, 2x2 max pool) per width, global average, dense.

Registered so that the loop can train the synthetic-shapes localizer and small detection
tests on CPU; with include_top=False it is `detection.TinyBackbone` by another name
(the same layers and parameter names).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register


@register("tiny_cnn", (32, 32, 3), "conv16-pool-conv32-pool-conv64-pool (BN), avg, dense")
class TinyCNN(nn.Module):
  widths: Sequence[int] = (16, 32, 64)
  num_classes: int = 10
  include_top: bool = True
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype
    for i, w in enumerate(self.widths, start=1):
      x = layers.Conv2D(w, 3, padding=1, use_bias=False, dtype=dt, name=f"conv{i}")(x)
      x = layers.batch_norm(train, self.axis_name, dtype=dt, name=f"bn{i}")(x)
      x = layers.MaxPool(2, name=f"pool{i}")(nn.relu(x))
    if not self.include_top:
      return x
    logits = nn.Dense(self.num_classes, dtype=dt, name="head")(jnp.mean(x, axis=(1, 2)))
    return jnp.asarray(logits, jnp.float32)
