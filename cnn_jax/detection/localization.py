"""Single-object localization: a classification backbone -> class logits and one box.

`Localizer` predicts class logits and 4 box numbers in [0, 1] (sigmoid), either
normalized (cx, cy, w, h) or (x0, y0, x1, y1); it is trained with `localization_loss`
= 0.8 * cross entropy + 0.2 * smooth L1 on the box. It returns a tuple rather than
logits, so it is not in the model registry; build it directly.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class Localizer(nn.Module):
  """Backbone features -> (class logits (N, num_classes), boxes (N, 4) in [0, 1]).

  pooling='avg' averages a feature map over space (any input size); 'flatten' keeps
  where things are, which the box regressor needs on a small backbone (fixed size).
  frozen_backbone=True runs the backbone in inference mode (BN uses and keeps its
  running statistics, no dropout), which is what freezing a pretrained feature
  extractor should mean; pair it with transfer.freeze_mask to stop its gradients.
  `dtype` is the heads' computation dtype (give the backbone its own); logits and boxes
  come out float32, so the loss is float32 under bfloat16 mixed precision.
  """
  backbone: nn.Module
  num_classes: int
  box_format: str = "cxcywh"
  pooling: str = "avg"
  hidden: int = 0
  frozen_backbone: bool = False
  dtype: Any = jnp.float32  # its own layers' computation dtype; the outputs are float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    if self.box_format not in ("cxcywh", "xyxy"):
      raise ValueError(f"box_format must be 'cxcywh' or 'xyxy', got {self.box_format!r}")
    f = self.backbone(x, train=train and not self.frozen_backbone)
    if f.ndim == 4:
      if self.pooling == "avg":
        f = jnp.mean(f, axis=(1, 2))
      elif self.pooling == "flatten":
        f = f.reshape((f.shape[0], -1))
      else:
        raise ValueError(f"pooling must be 'avg' or 'flatten', got {self.pooling!r}")
    if self.hidden:
      f = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(f))
    logits = jnp.asarray(nn.Dense(self.num_classes, dtype=self.dtype, name="head")(f), jnp.float32)
    boxes = nn.sigmoid(jnp.asarray(nn.Dense(4, dtype=self.dtype, name="box_head")(f), jnp.float32))
    return logits, boxes


def localization_loss(logits: Array, boxes: Array, labels: Array, target_boxes: Array,
                      cls_weight: float = 0.8, box_weight: float = 0.2,
                      box_loss: str = "smooth_l1") -> tuple[Array, dict[str, Array]]:
  """cls_weight * cross entropy + box_weight * (smooth L1 | MSE) on the 4 box numbers."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  diff = boxes - target_boxes
  if box_loss == "smooth_l1":
    reg = optax.huber_loss(diff, delta=1.0).sum(-1).mean()  # 0.5 d^2 below 1, |d| - 0.5 above
  elif box_loss == "mse":
    reg = jnp.square(diff).sum(-1).mean()
  else:
    raise ValueError(f"box_loss must be 'smooth_l1' or 'mse', got {box_loss!r}")
  loss = cls_weight * ce + box_weight * reg
  return loss, {"loss": loss, "cls_loss": ce, "box_loss": reg,
                "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
