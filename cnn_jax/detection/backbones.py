"""Small backbones for the detection heads' tests and demos.

Any zoo model built with `include_top=False` is a backbone too (it returns its last
feature map); these exist so a head can be trained in seconds on CPU.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax

from cnn_jax import layers

Array = jax.Array


class TinyBackbone(nn.Module):
  """(conv3x3-BN-relu, 2x2 max pool) per width: a fast backbone for tests and demos."""
  widths: Sequence[int] = (16, 32, 64)
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    for i, w in enumerate(self.widths, start=1):
      x = layers.Conv2D(w, 3, padding=1, use_bias=False, name=f"conv{i}")(x)
      x = layers.batch_norm(train, self.axis_name, name=f"bn{i}")(x)
      x = layers.MaxPool(2, name=f"pool{i}")(nn.relu(x))
    return x
