"""Darknet-19, the YOLOv2 classifier (Redmon & Farhadi 2016, "YOLO9000", Table 6).

Mostly 3x3 convs that double the channels after every 2x2 max pool, with 1x1 convs
halving them in between (as in NIN), batch norm and leaky relu 0.1 after every conv,
then a 1x1 conv to the classes and a global average pool (no FC layers). Built for
256x256x3 (stage sizes 256-128-64-32-16-8), it runs at 224 (-> 7x7) or any multiple of
32. Convs followed by BN carry no bias (BN's offset plays that role, as in darknet).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register

# One tuple per stage (a 2x2 max pool follows every stage but the last); each entry
# is (filters, kernel size).
DARKNET19_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((32, 3),),
    ((64, 3),),
    ((128, 3), (64, 1), (128, 3)),
    ((256, 3), (128, 1), (256, 3)),
    ((512, 3), (256, 1), (512, 3), (256, 1), (512, 3)),
    ((1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3)),
)


@register("darknet19", (256, 256, 3), "Darknet-19, the YOLOv2 backbone (BN, leaky relu 0.1)")
class Darknet19(nn.Module):
  """include_top=False returns the last stage's map (8x8x1024 at 256) for detection heads."""
  num_classes: int = 1000
  stages: Sequence[Sequence[tuple[int, int]]] = DARKNET19_STAGES
  include_top: bool = True
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype
    for s, stage in enumerate(self.stages, start=1):
      if s > 1:
        x = layers.MaxPool(2, name=f"pool{s - 1}")(x)
      for i, (filters, k) in enumerate(stage, start=1):
        x = layers.Conv2D(filters, k, padding=k // 2, use_bias=False, dtype=dt,
                          name=f"conv{s}_{i}")(x)
        x = layers.batch_norm(train, self.axis_name, dtype=dt, name=f"bn{s}_{i}")(x)
        x = nn.leaky_relu(x, 0.1)
    if not self.include_top:
      return x
    x = layers.Conv2D(self.num_classes, 1, dtype=dt, name="head")(x)  # linear 1x1 conv, with bias
    return jnp.mean(jnp.asarray(x, jnp.float32), axis=(1, 2))
