"""Heads that turn a classification backbone into a localizer or a YOLO-style detector.

Backbones are zoo models built with `include_top=False` (they then return their last
feature map) or any module `backbone(x, train) -> (N, H, W, C)` or `(N, D)`.

* `Localizer`: one object per image -> class logits and 4 box numbers in [0, 1]
  (sigmoid), either normalized (cx, cy, w, h) or (x0, y0, x1, y1). Trained with
  `localization_loss` = 0.8 * cross entropy + 0.2 * smooth L1 on the box.
* `YOLOHead`: YOLO v1's output layout (Redmon et al. 2016) on a backbone: an S x S grid,
  B boxes per cell, each (x, y offsets in the cell, w, h relative to the image,
  objectness), and C class scores per cell; `encode_yolo_targets` / `yolo_loss` are the
  paper's sum-squared loss (lambda_coord 5, lambda_noobj 0.5, sqrt of w and h).

These heads return tuples / dicts rather than logits, so they are not in the model
registry; build them directly.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnn_jax import layers
from cnn_jax.models.alexnet import adaptive_avg_pool

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


# ----------------------------------------------------------------------- boxes
def cxcywh_to_xyxy(b: Array) -> Array:
  cx, cy, w, h = jnp.moveaxis(b, -1, 0)
  return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def xyxy_to_cxcywh(b: Array) -> Array:
  x0, y0, x1, y1 = jnp.moveaxis(b, -1, 0)
  return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def box_iou(a: Array, b: Array, box_format: str = "cxcywh") -> Array:
  """Elementwise IoU of two broadcastable arrays of boxes (..., 4)."""
  if box_format == "cxcywh":
    a, b = cxcywh_to_xyxy(a), cxcywh_to_xyxy(b)
  elif box_format != "xyxy":
    raise ValueError(f"box_format must be 'cxcywh' or 'xyxy', got {box_format!r}")
  iw = jnp.clip(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0)
  ih = jnp.clip(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0)
  inter = iw * ih
  def area(z):
    return jnp.clip(z[..., 2] - z[..., 0], 0) * jnp.clip(z[..., 3] - z[..., 1], 0)

  return inter / jnp.maximum(area(a) + area(b) - inter, 1e-9)


# ------------------------------------------------------------------- localizer
class Localizer(nn.Module):
  """Backbone features -> (class logits (N, num_classes), boxes (N, 4) in [0, 1]).

  pooling='avg' averages a feature map over space (any input size); 'flatten' keeps
  where things are, which the box regressor needs on a small backbone (fixed size).
  frozen_backbone=True runs the backbone in inference mode (BN uses and keeps its
  running statistics, no dropout), which is what freezing a pretrained feature
  extractor should mean; pair it with transfer.freeze_mask to stop its gradients.
  """
  backbone: nn.Module
  num_classes: int
  box_format: str = "cxcywh"
  pooling: str = "avg"
  hidden: int = 0
  frozen_backbone: bool = False

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
      f = nn.relu(nn.Dense(self.hidden, name="hidden")(f))
    logits = nn.Dense(self.num_classes, name="head")(f)
    boxes = nn.sigmoid(nn.Dense(4, name="box_head")(f))
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


# ------------------------------------------------------------------------ YOLO
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

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    f = self.backbone(x, train=train and not self.frozen_backbone)
    if f.ndim != 4:
      raise ValueError(f"YOLOHead needs a feature map (N, H, W, C), got shape {f.shape}")
    S, B, C = self.grid_size, self.num_boxes, self.num_classes
    if f.shape[1:3] != (S, S):
      f = adaptive_avg_pool(f, S)
    f = nn.leaky_relu(layers.Conv2D(self.hidden, 3, padding=1, name="conv")(f), 0.1)
    p = layers.Conv2D(B * 5 + C, 1, name="pred")(f)
    box = p[..., :B * 5].reshape(p.shape[:3] + (B, 5))
    return {"boxes": nn.sigmoid(box[..., :4]), "objectness": box[..., 4],
            "class_logits": p[..., B * 5:]}


def encode_yolo_targets(boxes: Array, labels: Array, valid: Array, grid_size: int
                        ) -> dict[str, Array]:
  """Ground truth (N, M, 4) normalized cxcywh, labels (N, M), valid (N, M) -> grid targets.

  Each object belongs to the cell holding its centre (a later object wins a shared cell).
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
  # Invalid objects scatter to an out-of-range row, which mode="drop" discards.
  row = jnp.where(valid, row, S)
  has = jnp.zeros((n, S, S)).at[bi, row, col].set(1.0, mode="drop")
  tb = jnp.zeros((n, S, S, 4)).at[bi, row, col].set(local, mode="drop")
  tl = jnp.zeros((n, S, S), jnp.int32).at[bi, row, col].set(labels, mode="drop")
  return {"has_obj": has, "boxes": tb, "labels": tl}


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
  target 1); all other predictors' objectness -> 0; class scores in object cells."""
  S = pred["boxes"].shape[1]
  has = targets["has_obj"]
  pb = _cell_to_image(pred["boxes"], S)                       # (N,S,S,B,4)
  tb = _cell_to_image(targets["boxes"], S)[..., None, :]       # (N,S,S,1,4)
  iou = box_iou(pb, tb)                                        # (N,S,S,B)
  resp = jax.nn.one_hot(jnp.argmax(iou, -1), iou.shape[-1]) * has[..., None]
  p, t = pred["boxes"], targets["boxes"][..., None, :]
  coord = (jnp.square(p[..., :2] - t[..., :2]).sum(-1)
           + jnp.square(jnp.sqrt(p[..., 2:]) - jnp.sqrt(t[..., 2:])).sum(-1))
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
