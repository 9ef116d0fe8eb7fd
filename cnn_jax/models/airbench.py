"""A fast CIFAR-10 network in the style of Keller Jordan's airbench (2024).

airbench94 (94.01% on CIFAR-10 in ~10 epochs on one A100) is a plain VGG-like net: a
2x2 stem convolution, three conv groups (conv - max-pool - BN - GELU - conv - BN - GELU)
of widths 64 / 256 / 256, a global max-pool and a bias-free linear head whose logits are
scaled by 1/9. Trained with label smoothing, Nesterov SGD, flip + translate and test-time
flipping. Differences from airbench94, stated: the stem is an ordinary trained 2x2
convolution (airbench freezes it to whitening filters computed from the training
patches), and batch norm keeps its scale. `widths` trades accuracy for speed: the CPU
experiment (experiments/cifar10_fast.py) uses narrower groups.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register


class ConvGroup(nn.Module):
  features: int
  bn_momentum: float = 0.6
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32  # computation dtype; parameters, BN statistics stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dt = self.dtype
    for i, pool in ((1, True), (2, False)):
      x = layers.Conv2D(self.features, 3, padding="SAME", use_bias=False, dtype=dt,
                        name=f"conv{i}")(x)
      if pool:
        x = layers.MaxPool(2, name="pool")(x)
      # airbench's BN momentum 0.6 (torch convention) = flax 0.4: the short runs need
      # running statistics that follow the weights closely.
      x = layers.batch_norm(train, self.axis_name, epsilon=1e-12, momentum=1 - self.bn_momentum,
                            dtype=dt, name=f"bn{i}")(x)
      x = nn.gelu(x, approximate=False)
    return x


@register("airbench", (32, 32, 3), "airbench94-style: 2x2 stem, 3 conv groups 64/256/256, max-pool head")
class Airbench(nn.Module):
  num_classes: int = 10
  widths: Sequence[int] = (64, 256, 256)
  stem_width: int = 24
  logit_scale: float = 1 / 9
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype
    x = nn.gelu(layers.Conv2D(self.stem_width, 2, padding="VALID", dtype=dt, name="stem")(x),
                approximate=False)
    for i, w in enumerate(self.widths):
      x = ConvGroup(w, axis_name=self.axis_name, dtype=dt, name=f"group{i + 1}")(x, train)
    x = x.max(axis=(1, 2))  # global max-pool
    logits = nn.Dense(self.num_classes, use_bias=False, dtype=dt, name="head")(x)
    return jnp.asarray(logits, jnp.float32) * self.logit_scale
