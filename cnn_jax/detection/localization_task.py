"""Single-object localization as a task of the one training loop (`config.task="localization"`).

The course's localizer: a classification backbone (`config.model`, include_top=False)
with two heads, class logits and one box, trained with 0.8 x cross entropy + 0.2 x
smooth L1 (`detection.localization`). Batches are detection batches with one object per
image (`boxes` (N, 1, 4) corners, `labels` (N, 1)), so any box-aware host pp and any
detection source (a VOC folder with one box per photo, `dataset.name="shapes"`) feed it.
Evaluation sums, over the real examples of each batch, the loss, the correct classes and
the IoU of the predicted box with the true one.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax
from ml_collections import ConfigDict

from cnn_jax.detection.backbones import zoo_backbone
from cnn_jax.detection.boxes import box_iou
from cnn_jax.detection.localization import Localizer, localization_loss


def build_model(config: ConfigDict, num_classes: int, axis_name: Optional[str] = None,
                dtype: Any = jnp.float32) -> Localizer:
  """Localizer (xyxy boxes) on the zoo backbone `config.model` (include_top=False), both
  computing in `dtype` (logits and boxes, and so the loss, are float32)."""
  loc = config.localization
  return Localizer(zoo_backbone(config, axis_name, "localization", dtype), num_classes,
                   box_format="xyxy", pooling=loc.pooling, hidden=int(loc.hidden), dtype=dtype)


def loss_fn(config: ConfigDict):
  """(model outputs, batch) -> (loss, metrics) for `steps.train_step`."""
  loc = config.localization

  def loss(outputs: tuple, batch: dict) -> tuple[jax.Array, dict]:
    (logits, boxes), truth = outputs, batch["boxes"][:, 0]
    value, metrics = localization_loss(logits, boxes, batch["labels"][:, 0], truth,
                                       cls_weight=loc.cls_weight, box_weight=loc.box_weight,
                                       box_loss=loc.box_loss)
    return value, {**metrics, "mean_iou": jnp.mean(box_iou(boxes, truth, box_format="xyxy"))}
  return loss


def eval_step(state: Any, batch: dict, *, config: ConfigDict, preprocess: Any,
              axis_name: Optional[str] = None, matmul_precision: str = "default",
              flip: bool = False) -> dict[str, jax.Array]:
  """Sums over the real examples (`mask`): loss, correct classes, IoU, IoU > 0.5."""
  from cnn_jax.training.train_state import variables_of  # noqa: PLC0415 - a leaf module
  if flip:
    raise ValueError("eval_flip is for classifiers; a mirrored image has a mirrored box")
  images = preprocess(batch["image"], jax.random.key(0), False)
  with jax.default_matmul_precision(matmul_precision):
    logits, boxes = state.apply_fn(variables_of(state), images, train=False)
  labels, truth, mask = batch["labels"][:, 0], batch["boxes"][:, 0], batch["mask"]
  loc = config.localization
  per_example = jax.vmap(lambda lg, b, y, t: localization_loss(
      lg[None], b[None], y[None], t[None], cls_weight=loc.cls_weight, box_weight=loc.box_weight,
      box_loss=loc.box_loss)[0])(logits, boxes, labels, truth)
  iou = box_iou(boxes, truth, box_format="xyxy")
  sums = {"loss": jnp.sum(per_example * mask),
          "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          "iou": jnp.sum(iou * mask), "iou50": jnp.sum((iou > 0.5) * mask), "count": jnp.sum(mask)}
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  return sums


def metrics(totals: dict[str, float]) -> dict[str, float]:
  """Sums over a split -> means."""
  n = max(totals.get("count", 0.0), 1.0)
  return {"loss": totals["loss"] / n, "accuracy": totals["correct"] / n,
          "mean_iou": totals["iou"] / n, "iou50": totals["iou50"] / n,
          "num_examples": totals["count"]}
