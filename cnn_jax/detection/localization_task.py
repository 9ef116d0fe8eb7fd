"""Single-object localization as a task of the one training loop (`config.task="localization"`).

The course's localizer: a classification backbone (`config.model`, include_top=False)
with two heads, class logits and one box, trained with 0.8 x cross entropy + 0.2 x
smooth L1 (`detection.localization`). Batches are detection batches with one object per
image (`boxes` (N, 1, 4) corners, `labels` (N, 1)), so any box-aware host pp and any
detection source (a VOC folder with one box per photo, `dataset.name="shapes"`) feed it.
Evaluation sums, over the real examples of each batch, the loss, the correct classes and
the IoU of the predicted box with the true one.

An image can hold no object: its box-aware pp (`translate`, `scale_jitter`, `random_affine`,
`random_crop`) pushed the object out of frame, or its annotation has none. Its padded target
(label 0, box (0, 0, 0, 0), `valid` False) is no target: such an example adds nothing to the
loss or its gradient (the loss is the mean over the examples that have an object), and
evaluation leaves it out of every metric (loss, accuracy, IoU), counting it apart as
`num_without_object`.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax
from ml_collections import ConfigDict

from cnn_jax import parallel
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


def per_example_loss(config: ConfigDict, logits: jax.Array, boxes: jax.Array, labels: jax.Array,
                     truth: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(loss, cross entropy, box loss), each (N,): `localization_loss` of every example alone,
  so that examples without an object can be left out of the means."""
  loc = config.localization

  def one(lg, b, y, t):
    _, m = localization_loss(lg[None], b[None], y[None], t[None], cls_weight=loc.cls_weight,
                             box_weight=loc.box_weight, box_loss=loc.box_loss)
    return m["loss"], m["cls_loss"], m["box_loss"]
  return jax.vmap(one)(logits, boxes, labels, truth)


def _mean(x: jax.Array, valid: jax.Array, count: jax.Array) -> jax.Array:
  """Mean of x over the valid examples; `where`, not a product: an invalid example's NaN
  (the IoU of two empty boxes) must not leak into the mean or the gradient."""
  return jnp.sum(jnp.where(valid > 0, x, 0.0)) / jnp.where(count > 0, count, 1.0)


def loss_fn(config: ConfigDict):
  """(model outputs, batch) -> (loss, metrics) for `steps.train_step`: means over the
  examples with a valid object (0, not NaN, when a batch has none).

  Under pmap the step averages the replicas' gradients and metrics: each replica divides
  by the mean valid count of all replicas, so that average is the mean over every valid
  example of the global batch, as one device computes it (replicas need not hold alike)."""
  axis = parallel.PMAP_AXIS if config.get("parallel") == "pmap" else None

  def loss(outputs: tuple, batch: dict) -> tuple[jax.Array, dict]:
    (logits, boxes), truth, labels = outputs, batch["boxes"][:, 0], batch["labels"][:, 0]
    valid = batch["valid"][:, 0].astype(jnp.float32)
    n = jnp.sum(valid)
    if axis is not None:  # 0 when no replica has an object: `_mean` then divides by 1
      n = lax.psum(n, axis) / lax.psum(1.0, axis)
    value, ce, reg = per_example_loss(config, logits, boxes, labels, truth)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    value = _mean(value, valid, n)
    return value, {"loss": value, "cls_loss": _mean(ce, valid, n), "box_loss": _mean(reg, valid, n),
                   "accuracy": _mean(correct, valid, n),
                   "mean_iou": _mean(box_iou(boxes, truth, box_format="xyxy"), valid, n)}
  return loss


def eval_step(state: Any, batch: dict, *, config: ConfigDict, preprocess: Any,
              axis_name: Optional[str] = None, matmul_precision: str = "default",
              flip: bool = False) -> dict[str, jax.Array]:
  """Sums over the real examples (`mask`) that have an object (`valid`): loss, correct
  classes, IoU, IoU > 0.5; and the count of real examples without one."""
  from cnn_jax.training.train_state import variables_of  # noqa: PLC0415 - a leaf module
  if flip:
    raise ValueError("eval_flip is for classifiers; a mirrored image has a mirrored box")
  images = preprocess(batch["image"], jax.random.key(0), False)
  with jax.default_matmul_precision(matmul_precision):
    logits, boxes = state.apply_fn(variables_of(state), images, train=False)
  labels, truth = batch["labels"][:, 0], batch["boxes"][:, 0]
  real = batch["mask"]
  mask = real * batch["valid"][:, 0]  # real examples that have an object: the ones scored
  per_example = per_example_loss(config, logits, boxes, labels, truth)[0]
  iou = box_iou(boxes, truth, box_format="xyxy")
  scored = lambda x: jnp.sum(jnp.where(mask > 0, x, 0.0))  # noqa: E731
  sums = {"loss": scored(per_example), "correct": scored(jnp.argmax(logits, -1) == labels),
          "iou": scored(iou), "iou50": scored(iou > 0.5), "count": jnp.sum(mask),
          "no_object": jnp.sum(real) - jnp.sum(mask)}
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  return sums


def metrics(totals: dict[str, float]) -> dict[str, float]:
  """Sums over a split -> means over the examples with an object."""
  n = max(totals["count"], 1.0)  # 0 when no example had an object: the sums are 0 too
  return {"loss": totals["loss"] / n, "accuracy": totals["correct"] / n,
          "mean_iou": totals["iou"] / n, "iou50": totals["iou50"] / n,
          "num_examples": totals["count"], "num_without_object": totals.get("no_object", 0.0)}
