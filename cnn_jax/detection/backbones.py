"""Small backbones for the detection heads' tests and demos.

Any zoo model built with `include_top=False` is a backbone too (it returns its last
feature map); these exist so a head can be trained in seconds on CPU.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers

Array = jax.Array


class TinyBackbone(nn.Module):
  """(conv3x3-BN-relu, 2x2 max pool) per width: a fast backbone for tests and demos."""
  widths: Sequence[int] = (16, 32, 64)
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype
    for i, w in enumerate(self.widths, start=1):
      x = layers.Conv2D(w, 3, padding=1, use_bias=False, dtype=dt, name=f"conv{i}")(x)
      x = layers.batch_norm(train, self.axis_name, dtype=dt, name=f"bn{i}")(x)
      x = layers.MaxPool(2, name=f"pool{i}")(nn.relu(x))
    return x


def zoo_backbone(config: Any, axis_name: Optional[str] = None, task: str = "detection",
                 dtype: Any = jnp.float32) -> nn.Module:
  """`config.model` built with include_top=False (its last feature map), with the run's
  model_kwargs (num_classes dropped: the head is the task's), under pmap axis_name, and
  the computation `dtype` (bfloat16: its feature map is bfloat16)."""
  from cnn_jax import models  # noqa: PLC0415 - models never import detection
  kwargs = {k: v for k, v in (config.model_kwargs.to_dict() if config.model_kwargs else {}).items()
            if k != "num_classes"}
  args = models.constructor_args(config.model)
  if "include_top" not in args:
    raise ValueError(f"model {config.model!r} cannot serve as a {task} backbone (it has no "
                     "include_top=False feature-map mode); use e.g. tiny_cnn, resnet18, darknet19")
  if axis_name is not None and "axis_name" in args:
    kwargs.setdefault("axis_name", axis_name)
  if jnp.dtype(dtype) != jnp.float32:
    kwargs.setdefault("dtype", dtype)
  return models.get_model(config.model, include_top=False, **kwargs)
