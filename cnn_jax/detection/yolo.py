"""YOLO v1 (Redmon et al. 2016) on a classification backbone.

`YOLOHead` gives YOLO v1's output layout: an S x S grid, B boxes per cell, each (x, y
offsets in the cell, w, h relative to the image, objectness), and C class scores per
cell. `encode_yolo_targets` / `yolo_loss` are the paper's sum-squared loss
(lambda_coord 5, lambda_noobj 0.5, sqrt of w and h); `decode_yolo` flattens the grid
into scored detections. The head returns a dict rather than logits, so it is not in
the model registry; build it directly.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnn_jax import layers
from cnn_jax.detection.boxes import box_iou

Array = jax.Array


class YOLOHead(nn.Module):
  """YOLO v1 output layout on a backbone's feature map.

  The map is average-pooled to grid_size x grid_size if it is not that already, then a
  3x3 conv (leaky relu 0.1) and a 1x1 conv predict B*5 + C numbers per cell. Returns
  {'boxes': (N,S,S,B,4) sigmoid (x, y offset in cell, w, h of the image),
   'objectness': (N,S,S,B) logits, 'class_logits': (N,S,S,C)}.
  """
  backbone: nn.Module
  grid_size: int = 7
  num_boxes: int = 2
  num_classes: int = 20
  hidden: int = 256
  frozen_backbone: bool = False
  dtype: Any = jnp.float32  # its own layers' computation dtype; the outputs are float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    f = self.backbone(x, train=train and not self.frozen_backbone)
    if f.ndim != 4:
      raise ValueError(f"YOLOHead needs a feature map (N, H, W, C), got shape {f.shape}")
    S, B, C = self.grid_size, self.num_boxes, self.num_classes
    if f.shape[1:3] != (S, S):
      f = layers.adaptive_avg_pool(f, S)
    f = nn.leaky_relu(layers.Conv2D(self.hidden, 3, padding=1, dtype=self.dtype, name="conv")(f),
                      0.1)
    p = jnp.asarray(layers.Conv2D(B * 5 + C, 1, dtype=self.dtype, name="pred")(f), jnp.float32)
    box = p[..., :B * 5].reshape(p.shape[:3] + (B, 5))
    return {"boxes": nn.sigmoid(box[..., :4]), "objectness": box[..., 4],
            "class_logits": p[..., B * 5:]}


def encode_yolo_targets(boxes: Array, labels: Array, valid: Array, grid_size: int
                        ) -> dict[str, Array]:
  """Ground truth (N, M, 4) normalized cxcywh, labels (N, M), valid (N, M) -> grid targets.

  Each object belongs to the cell holding its centre; when several valid objects share a
  cell the last one (highest index in M) owns it, and box, label and flag all come from
  that object. The owner is chosen by one scatter-max of object indices, which is
  order-independent, and the rest is gathered: three separate scatters would each
  resolve duplicate indices in an undefined order on GPU / TPU, and could mix objects.
  Returns {'has_obj': (N,S,S), 'boxes': (N,S,S,4) cell-offset x, y and image w, h,
  'labels': (N,S,S)}.
  """
  S = grid_size
  n, m = labels.shape
  col = jnp.clip(jnp.floor(boxes[..., 0] * S), 0, S - 1).astype(jnp.int32)
  row = jnp.clip(jnp.floor(boxes[..., 1] * S), 0, S - 1).astype(jnp.int32)
  local = jnp.stack([boxes[..., 0] * S - col, boxes[..., 1] * S - row,
                     boxes[..., 2], boxes[..., 3]], axis=-1)
  bi = jnp.broadcast_to(jnp.arange(n)[:, None], (n, m))
  obj = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (n, m))
  # Invalid objects scatter to an out-of-range row, which mode="drop" discards.
  row = jnp.where(valid, row, S)
  owner = jnp.full((n, S, S), -1, jnp.int32).at[bi, row, col].max(obj, mode="drop")
  has = owner >= 0
  idx = jnp.maximum(owner, 0).reshape(n, S * S)
  tb = jnp.take_along_axis(local, idx[..., None], axis=1).reshape(n, S, S, 4)
  tl = jnp.take_along_axis(labels, idx, axis=1).reshape(n, S, S)
  return {"has_obj": has.astype(jnp.float32),
          "boxes": jnp.where(has[..., None], tb, 0.0).astype(boxes.dtype),
          "labels": jnp.where(has, tl, 0).astype(jnp.int32)}


def _safe_sqrt(x: Array, eps: float = 1e-8) -> Array:
  """sqrt(max(x, eps)): a sigmoid saturates to exactly 0 in float32 (logit -104 and
  below), where sqrt's derivative is infinite and 0 * inf makes NaN gradients."""
  return jnp.sqrt(jnp.maximum(x, eps))


def _cell_to_image(b: Array, S: int) -> Array:
  """Cell-offset (x, y, w, h) on an (..., S, S, [B,] 4) grid -> image cxcywh."""
  has_b = b.ndim == 5
  cols = jnp.arange(S).reshape((1, 1, S, 1) if has_b else (1, 1, S))
  rows = jnp.arange(S).reshape((1, S, 1, 1) if has_b else (1, S, 1))
  return jnp.stack([(b[..., 0] + cols) / S, (b[..., 1] + rows) / S, b[..., 2], b[..., 3]], -1)


def yolo_loss(pred: dict[str, Array], targets: dict[str, Array], lambda_coord: float = 5.0,
              lambda_noobj: float = 0.5) -> Array:
  """YOLO v1 loss, averaged over the batch: the predictor with the highest IoU in an
  object's cell is responsible for it (coordinates with sqrt w/h, objectness -> IoU
  target 1); all other predictors' objectness -> 0; class scores in object cells.

  The sqrt of w and h is clamped at 1e-8, so saturated box logits give finite
  (zero) gradients instead of NaN; the value changes only where w or h < 1e-8.
  """
  S = pred["boxes"].shape[1]
  has = targets["has_obj"]
  pb = _cell_to_image(pred["boxes"], S)                       # (N,S,S,B,4)
  tb = _cell_to_image(targets["boxes"], S)[..., None, :]       # (N,S,S,1,4)
  iou = box_iou(pb, tb)                                        # (N,S,S,B)
  resp = jax.nn.one_hot(jnp.argmax(iou, -1), iou.shape[-1]) * has[..., None]
  p, t = pred["boxes"], targets["boxes"][..., None, :]
  coord = (jnp.square(p[..., :2] - t[..., :2]).sum(-1)
           + jnp.square(_safe_sqrt(p[..., 2:]) - _safe_sqrt(t[..., 2:])).sum(-1))
  conf = nn.sigmoid(pred["objectness"])
  obj = jnp.square(conf - 1.0)
  noobj = jnp.square(conf)
  cls = optax.softmax_cross_entropy_with_integer_labels(pred["class_logits"],
                                                         targets["labels"]) * has
  total = (lambda_coord * (resp * coord).sum() + (resp * obj).sum()
           + lambda_noobj * ((1 - resp) * noobj).sum() + cls.sum())
  return total / has.shape[0]


def decode_yolo(pred: dict[str, Array]) -> dict[str, Array]:
  """Flatten the grid to (N, S*S*B) detections: image cxcywh boxes, scores, classes.

  score = sigmoid(objectness) * max class probability (apply a threshold / NMS after).
  """
  S, B = pred["boxes"].shape[1], pred["boxes"].shape[3]
  n = pred["boxes"].shape[0]
  boxes = _cell_to_image(pred["boxes"], S).reshape(n, S * S * B, 4)
  probs = jax.nn.softmax(pred["class_logits"], -1)               # (N,S,S,C)
  score = nn.sigmoid(pred["objectness"]) * jnp.max(probs, -1)[..., None]
  cls = jnp.broadcast_to(jnp.argmax(probs, -1)[..., None], score.shape)
  return {"boxes": boxes, "scores": score.reshape(n, -1), "classes": cls.reshape(n, -1)}
