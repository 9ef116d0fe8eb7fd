"""YOLO v2 (Redmon & Farhadi 2017, "YOLO9000") on a classification backbone.

What changes from v1 (yolo.py): boxes are predicted relative to anchor shapes (from
`anchors.kmeans_anchors`) in every cell of the backbone's own grid (stride 32 on
darknet19: 416 px -> 13x13), and the class scores belong to each anchor, not the cell.
A box is (sigmoid(tx), sigmoid(ty)) offsets in its cell and (tw, th) log-scales of its
anchor, so the centre cannot leave the cell, which kept v2's early training stable.

Ground truth is normalized corners (x0, y0, x1, y1): boxes (N, M, 4), labels (N, M)
int32, valid (N, M) bool for objects padded to M. Predicted boxes come out as normalized
corners too. NMS lives elsewhere; `decode_yolo_v2` only flattens and scores.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnn_jax import layers
from cnn_jax.detection.boxes import box_iou, cxcywh_to_xyxy, xyxy_to_cxcywh

Array = jax.Array
Anchors = Sequence[Sequence[float]]

# exp(tw) is evaluated on tw clipped to this range: exp of an untrained logit of 100
# is inf in float32 and poisons the IoUs and the loss. e^4 = 55 times the anchor is
# already larger than any image; e^-10 is a box of nothing.
TWH_CLIP = (-10.0, 4.0)


def _anchor_array(anchors: Anchors) -> Array:
  a = jnp.asarray(anchors, jnp.float32)
  if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] < 1:
    raise ValueError(f"anchors must be (A, 2) (w, h) pairs, got shape {a.shape}")
  return a


class YOLOv2Head(nn.Module):
  """YOLO v2 output layout on a backbone's feature map (N, S_h, S_w, C).

  The grid is whatever the backbone's stride gives (256 px / 32 = 8x8). An optional
  3x3 conv + BN + leaky relu 0.1 (`hidden` channels, 0 skips it), then a 1x1 conv
  predicts A * (5 + num_classes) numbers per cell. Returns
  {'xy': (N,Sh,Sw,A,2) sigmoid offsets in the cell, 'twh': (N,Sh,Sw,A,2) raw log-scales
   of the anchor, 'objectness': (N,Sh,Sw,A) logits, 'class_logits': (N,Sh,Sw,A,C)}.

  anchors: (w, h) pairs normalized to the image, a tuple of tuples (module fields must
  be hashable). The objectness bias starts at log(obj_prior / (1 - obj_prior)) (-4.6
  for 0.01), the prior RetinaNet argues for: almost every (cell, anchor) is empty, and
  a bias of 0 (p = 0.5 everywhere) starts with a no-object loss of log 2 per anchor
  that swamps the few object terms and destabilises the first steps.
  frozen_backbone=True runs the backbone in inference mode, as Localizer does. `dtype` is
  the head's computation dtype (the backbone has its own); the outputs are float32.
  """
  backbone: nn.Module
  anchors: tuple[tuple[float, float], ...]
  num_classes: int
  hidden: int = 256
  frozen_backbone: bool = False
  obj_prior: float = 0.01
  axis_name: Optional[str] = None  # pmap axis: the hidden layer's BN moments over the global batch
  dtype: Any = jnp.float32  # its own layers' computation dtype; the outputs are float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    f = self.backbone(x, train=train and not self.frozen_backbone)
    if f.ndim != 4:
      raise ValueError(f"YOLOv2Head needs a feature map (N, H, W, C), got shape {f.shape}")
    A, C = len(self.anchors), self.num_classes
    if self.hidden:
      f = layers.Conv2D(self.hidden, 3, padding=1, use_bias=False, dtype=self.dtype,
                        name="conv")(f)
      f = layers.batch_norm(train, self.axis_name, dtype=self.dtype, name="bn")(f)
      f = nn.leaky_relu(f, 0.1)
    obj_bias = math.log(self.obj_prior / (1.0 - self.obj_prior))

    def bias_init(key, shape, dtype=jnp.float32):
      b = jnp.zeros((A, 5 + C), dtype).at[:, 4].set(obj_bias)
      return b.reshape(shape)

    p = layers.Conv2D(A * (5 + C), 1, bias_init=bias_init, dtype=self.dtype, name="pred")(f)
    p = jnp.asarray(p, jnp.float32)  # the loss and the decoded boxes are float32
    p = p.reshape(p.shape[:3] + (A, 5 + C))
    return {"xy": nn.sigmoid(p[..., :2]), "twh": p[..., 2:4], "objectness": p[..., 4],
            "class_logits": p[..., 5:]}


def decode_boxes(pred: dict[str, Array], anchors: Anchors) -> Array:
  """(N,Sh,Sw,A,4) normalized corners: cx = (col + x) / Sw, cy = (row + y) / Sh,
  w = anchor_w * exp(tw), h = anchor_h * exp(th) (tw, th clipped to TWH_CLIP)."""
  a = _anchor_array(anchors)
  xy = pred["xy"]
  sh, sw = xy.shape[1], xy.shape[2]
  cx = (xy[..., 0] + jnp.arange(sw, dtype=xy.dtype)[:, None]) / sw
  cy = (xy[..., 1] + jnp.arange(sh, dtype=xy.dtype)[:, None, None]) / sh
  wh = a * jnp.exp(jnp.clip(pred["twh"], *TWH_CLIP))
  return cxcywh_to_xyxy(jnp.stack([cx, cy, wh[..., 0], wh[..., 1]], axis=-1))


def encode_yolo_v2_targets(boxes: Array, labels: Array, valid: Array, anchors: Anchors,
                           grid_shape: tuple[int, int]) -> dict[str, Array]:
  """Ground truth (N, M, 4) corners, labels (N, M), valid (N, M) -> (cell, anchor) targets.

  Each valid object goes to the cell holding its centre and to the anchor whose shape
  (w, h only, same centre) overlaps it most. When several objects land on one (cell,
  anchor) the highest object index owns it: the owner is one scatter-max of object
  indices (order-independent) and every field is gathered from it, so the fields cannot
  come from different objects on GPU / TPU, where duplicate scatter indices resolve in
  an undefined order (the same care as yolo.encode_yolo_targets).
  Returns, all zero where no object: {'has_obj': (N,Sh,Sw,A) float, 'xy': (...,2)
  offsets in the cell, 'twh': (...,2) log(w / anchor_w), log(h / anchor_h), 'boxes':
  (...,4) corners, 'labels': (N,Sh,Sw,A) int32, 'scale': 2 - w*h, the small-box weight
  of YOLO v2 / v3 (an error of 0.01 matters more on a 0.05 box than on a 0.8 one)}.
  """
  a = _anchor_array(anchors)
  sh, sw = grid_shape
  n, m = labels.shape
  A = a.shape[0]
  cx, cy, w, h = jnp.moveaxis(xyxy_to_cxcywh(boxes), -1, 0)
  col = jnp.clip(jnp.floor(cx * sw), 0, sw - 1).astype(jnp.int32)
  row = jnp.clip(jnp.floor(cy * sh), 0, sh - 1).astype(jnp.int32)
  inter = jnp.minimum(w[..., None], a[:, 0]) * jnp.minimum(h[..., None], a[:, 1])
  shape_iou = inter / jnp.maximum((w * h)[..., None] + a[:, 0] * a[:, 1] - inter, 1e-12)
  best = jnp.argmax(shape_iou, axis=-1).astype(jnp.int32)                  # (N, M)
  aw, ah = a[best, 0], a[best, 1]
  # log of a degenerate (or padding) box's size is clamped finite; it is never used.
  local = jnp.stack([cx * sw - col, cy * sh - row,
                     jnp.log(jnp.maximum(w, 1e-9) / aw), jnp.log(jnp.maximum(h, 1e-9) / ah),
                     boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3],
                     2.0 - w * h], axis=-1)                                # (N, M, 9)
  bi = jnp.broadcast_to(jnp.arange(n)[:, None], (n, m))
  obj = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (n, m))
  # Invalid objects scatter to an out-of-range row, which mode="drop" discards.
  row = jnp.where(valid, row, sh)
  owner = jnp.full((n, sh, sw, A), -1, jnp.int32).at[bi, row, col, best].max(
      obj, mode="drop")
  has = owner >= 0
  idx = jnp.maximum(owner, 0).reshape(n, sh * sw * A)
  t = jnp.take_along_axis(local, idx[..., None], axis=1).reshape(n, sh, sw, A, 9)
  t = jnp.where(has[..., None], t, 0.0).astype(boxes.dtype)
  tl = jnp.take_along_axis(labels, idx, axis=1).reshape(n, sh, sw, A)
  return {"has_obj": has.astype(jnp.float32), "xy": t[..., 0:2], "twh": t[..., 2:4],
          "boxes": t[..., 4:8], "labels": jnp.where(has, tl, 0).astype(jnp.int32),
          "scale": t[..., 8]}


def yolo_v2_loss(pred: dict[str, Array], targets: dict[str, Array], gt_boxes: Array,
                 gt_valid: Array, anchors: Anchors, *, lambda_coord: float = 1.0,
                 lambda_obj: float = 1.0, lambda_noobj: float = 1.0,
                 ignore_iou: float = 0.6) -> tuple[Array, dict[str, Array]]:
  """YOLO v2 loss, summed over each image and averaged over the batch.

  * coordinates, responsible anchors only: scale * (squared error of the xy offsets +
    squared error of tw, th). Squared error on the sigmoid offsets, as in the paper
    (v3 uses BCE on them, which needs the logits the head does not return).
  * objectness, responsible anchors: BCE with logits against IoU(decoded box, its gt),
    the IoU under stop_gradient (v2's "objectness predicts the IoU"; the paper squares
    the error of the sigmoid, whose gradient vanishes when it saturates: BCE trains
    better). A soft target leaves a floor of its entropy, so this term never reaches
    0. Weight lambda_obj = 1 (darknet's v2 cfg used 5 with squared error; with BCE,
    v3's 1 is enough).
  * no-object, every other anchor: BCE against 0, except anchors whose predicted box
    overlaps some valid gt of the image with IoU > ignore_iou: they found an object,
    only not as its responsible anchor, and are not pushed to say "nothing here".
  * classes: softmax cross entropy on responsible anchors.
  Darknet's extra term pulling empty anchors' boxes to their prior in the first 12800
  images is left out. Every term is a sum divided by the batch size, so images without
  objects give 0 for their object terms, not 0 / 0. Metrics are the weighted terms
  (they add up to 'loss') and 'mean_iou' of the responsible predictions.
  """
  has = targets["has_obj"]
  n = has.shape[0]
  pb = decode_boxes(pred, anchors)                                   # (N,Sh,Sw,A,4)
  iou = box_iou(pb, targets["boxes"], box_format="xyxy")              # (N,Sh,Sw,A)
  coord = targets["scale"] * (jnp.square(pred["xy"] - targets["xy"]).sum(-1)
                              + jnp.square(pred["twh"] - targets["twh"]).sum(-1))
  obj = optax.sigmoid_binary_cross_entropy(pred["objectness"], jax.lax.stop_gradient(iou))
  # IoU of every prediction with every gt of its image: (N,Sh,Sw,A,M), padding masked.
  all_iou = box_iou(pb[..., None, :], gt_boxes[:, None, None, None], box_format="xyxy")
  all_iou = jnp.where(gt_valid[:, None, None, None, :], all_iou, 0.0)
  ignore = jnp.max(all_iou, axis=-1, initial=0.0) > ignore_iou
  noobj_mask = (1.0 - has) * (1.0 - ignore.astype(has.dtype))
  noobj = optax.sigmoid_binary_cross_entropy(pred["objectness"],
                                             jnp.zeros_like(pred["objectness"]))
  cls = optax.softmax_cross_entropy_with_integer_labels(pred["class_logits"],
                                                         targets["labels"])
  terms = {"coord_loss": lambda_coord * (has * coord).sum() / n,
           "obj_loss": lambda_obj * (has * obj).sum() / n,
           "noobj_loss": lambda_noobj * (noobj_mask * noobj).sum() / n,
           "cls_loss": (has * cls).sum() / n}
  total = sum(terms.values())
  mean_iou = (has * iou).sum() / jnp.maximum(has.sum(), 1.0)
  metrics = {"loss": total, **terms, "mean_iou": jax.lax.stop_gradient(mean_iou)}
  return total, metrics


def decode_yolo_v2(pred: dict[str, Array], anchors: Anchors) -> dict[str, Array]:
  """Flatten the grid to (N, Sh*Sw*A) detections: {'boxes': corners clipped to [0, 1],
  'scores': sigmoid(objectness) * max class probability, 'classes': argmax, int32}.

  Threshold the scores and run NMS after (not here)."""
  n = pred["objectness"].shape[0]
  boxes = jnp.clip(decode_boxes(pred, anchors), 0.0, 1.0).reshape(n, -1, 4)
  probs = jax.nn.softmax(pred["class_logits"], axis=-1)
  scores = nn.sigmoid(pred["objectness"]) * jnp.max(probs, axis=-1)
  classes = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  return {"boxes": boxes, "scores": scores.reshape(n, -1),
          "classes": classes.reshape(n, -1)}
