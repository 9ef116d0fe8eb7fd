"""Detection as a task of the one training loop (`config.task = "detection"`).

The loop (`training/trainer.py`) and the train step (`training/steps.py`) are the ones
that train classifiers; this module supplies what differs for a detector:

* the model: `config.model` is the backbone (a zoo model built with include_top=False)
  under a `YOLOv2Head`, with anchors from k-means on the training boxes;
* the loss: YOLO v2 targets are encoded inside the jitted step from the batch's padded
  boxes (`boxes`, `labels`, `valid`), so the input pipeline stays model-agnostic;
* the eval step: decode, then per-class non-maximum suppression with a fixed number of
  outputs, all on the device; `evaluate` gathers the detections of a whole split on the
  host and computes Pascal VOC and COCO average precision (`mean_ap`);
* `restore_backbone`: start from a classification run's weights (transfer learning).

What is resolved from the data (anchors, objects per image) is written back into the
config, so `config.json`, the checkpoint's meta and `cnn-jax detect` rebuild the same model.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax
from ml_collections import ConfigDict

from cnn_jax import parallel
from cnn_jax.data import box_ops, input_pipeline, sources
from cnn_jax.detection import anchors as anchors_lib
from cnn_jax.detection import mean_ap
from cnn_jax.detection.backbones import zoo_backbone
from cnn_jax.detection.nms import batched_nms
from cnn_jax.detection.yolo_v2 import YOLOv2Head, decode_yolo_v2, encode_yolo_v2_targets, yolo_v2_loss

log = logging.getLogger("cnn_jax")
Anchors = tuple[tuple[float, float], ...]


def resolve(config: ConfigDict, train_data: Optional[Any], splits: Sequence[Any]) -> None:
  """Fill config.detection.anchors (k-means on the train boxes as the model sees them) and
  .max_objects (the largest object count of any split) where they are unset, in place.
  Refuses a flip in pp_eval; says once how many training objects a set max_objects drops."""
  check_pp_eval(config)
  d = config.detection
  if d.anchors is None:
    if train_data is None:
      raise ValueError("detection.anchors is unset and there is no training split to cluster: "
                       "set --config.detection.anchors='((w, h), ...)'")
    wh = box_sizes(train_data if jax.process_count() == 1 else sources.load_source(
        config.dataset, config.dataset.train_split,
        max_examples=config.dataset.max_train_examples),  # every process: the same anchors
        config.dataset.pp_train)
    k = int(d.num_anchors)
    if len(np.unique(wh, axis=0)) < k:
      raise ValueError(f"detection.num_anchors={k} but the training split has only "
                       f"{len(np.unique(wh, axis=0))} distinct box sizes; lower num_anchors")
    found = anchors_lib.kmeans_anchors(wh, k, seed=config.seed)
    d.anchors = tuple((round(float(w), 5), round(float(h), 5)) for w, h in found)
    log.info("anchors (k-means on %d training boxes in the model's frame, mean IoU %.3f): %s",
             len(wh), anchors_lib.mean_iou(wh, np.asarray(d.anchors)), d.anchors)
  if d.max_objects is None:
    d.max_objects = parallel.agree(max(1, max(int(s.max_objects) for s in splits if s is not None)),
                                   max)
  elif train_data is not None:
    _log_capped_objects(train_data, int(d.max_objects))


def _log_capped_objects(train_data: Any, max_objects: int) -> None:
  """Training targets keep the max_objects largest objects of an image (`pad_objects`):
  say once how many that leaves out (evaluation pads to each split's own maximum)."""
  counts = np.array([len(train_data.target(i)["boxes"]) for i in range(len(train_data))], np.int64)
  over = counts > max_objects
  if over.any():
    log.warning("detection.max_objects=%d leaves out %d of the %d objects of the training split "
                "(the smallest of %d image%s with more) from the training targets; evaluation "
                "keeps every ground-truth box", max_objects, int((counts - max_objects)[over].sum()),
                int(counts.sum()), int(over.sum()), "" if over.sum() == 1 else "s")


def check_pp_eval(config: ConfigDict) -> None:
  """A flip in a detector's pp_eval would score mirrored images and mirror `cnn-jax detect`'s
  boxes (they are mapped back to the file's pixels through the pp's geometry, which has no
  flip): refused, in one line."""
  pp = config.dataset.get("pp_eval") or ""
  if "flip_lr" in [name for name, _, _ in box_ops.parse(pp).ops]:
    raise ValueError(f"dataset.pp_eval={pp!r} mirrors the image (flip_lr): a detector's "
                     "evaluation and `cnn-jax detect` need the unflipped image; remove flip_lr "
                     "from dataset.pp_eval (keep it in pp_train)")


def box_sizes(source: Any, pp: str = "") -> np.ndarray:
  """(n, 2) normalized (w, h) of every box of a detection source, difficult ones included,
  in the model's frame: moved by the deterministic geometry of the box pp `pp` (resize,
  letterbox; `BoxPipeline.frame`), as the targets the loss sees are. The input to the
  k-means anchors. Reads annotations only (`target`) and image sizes (a letterbox needs
  them), decoding an image only for a source that does not know its sizes."""
  pipeline = box_ops.parse(pp)
  sized = pipeline.frame_needs_size
  boxes = np.concatenate(
      [pipeline.frame(source.target(i)["boxes"], image_size(source, i) if sized else None)
       for i in range(len(source))] or [np.zeros((0, 4), np.float32)]).reshape(-1, 4)
  return np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).astype(np.float32)


def image_size(source: Any, i: int) -> tuple[int, int]:
  """(H, W) of example i: from the annotations (VOC `<size>`), the source's one image
  shape, or else by decoding the image."""
  if getattr(source, "sizes", None) is not None:
    return tuple(int(v) for v in source.sizes[i])
  if getattr(source, "image_shape", None):
    return tuple(int(v) for v in source.image_shape[:2])
  return tuple(int(v) for v in source[i][0].shape[:2])


def anchors_of(config: ConfigDict) -> Anchors:
  return tuple((float(w), float(h)) for w, h in config.detection.anchors)


def build_model(config: ConfigDict, num_classes: int, axis_name: Optional[str] = None,
                dtype: Any = jnp.float32) -> YOLOv2Head:
  """YOLOv2Head on the zoo backbone `config.model` (include_top=False), both computing in
  `dtype` (the head's outputs, and so the loss, are float32)."""
  return YOLOv2Head(backbone=zoo_backbone(config, axis_name, "detection", dtype),
                    anchors=anchors_of(config), num_classes=num_classes,
                    hidden=int(config.detection.hidden), axis_name=axis_name, dtype=dtype)


def loss_fn(config: ConfigDict):
  """(model outputs, batch) -> (loss, metrics) for `steps.train_step`."""
  anchors, d = anchors_of(config), config.detection

  def loss(outputs: dict, batch: dict) -> tuple[jax.Array, dict]:
    grid = outputs["objectness"].shape[1:3]
    targets = encode_yolo_v2_targets(batch["boxes"], batch["labels"], batch["valid"], anchors, grid)
    return yolo_v2_loss(outputs, targets, batch["boxes"], batch["valid"], anchors,
                        lambda_coord=d.lambda_coord, lambda_noobj=d.lambda_noobj,
                        ignore_iou=d.ignore_iou)
  return loss


def detect(apply_fn, variables: Any, images: jax.Array, config: ConfigDict) -> dict[str, jax.Array]:
  """Model input -> NMS'd detections {'boxes' corners, 'scores', 'classes', 'valid'}."""
  d = config.detection
  dec = decode_yolo_v2(apply_fn(variables, images, train=False), anchors_of(config))
  return batched_nms(dec["boxes"], dec["scores"], dec["classes"], iou_threshold=d.nms_iou,
                     score_threshold=d.score_threshold, pre_nms_top_k=d.pre_nms_top_k,
                     max_detections=d.max_detections)


def eval_step(state: Any, batch: dict, *, config: ConfigDict, preprocess: Any,
              axis_name: Optional[str] = None, matmul_precision: str = "default",
              flip: bool = False) -> dict[str, jax.Array]:
  """The detections of a batch next to its ground truth (summed into AP on the host)."""
  from cnn_jax.training.train_state import variables_of  # noqa: PLC0415 - a leaf module
  if flip:
    raise ValueError("eval_flip is for classifiers; detection has no flip test-time augmentation")
  images = preprocess(batch["image"], jax.random.key(0), False)
  with jax.default_matmul_precision(matmul_precision):
    out = detect(state.apply_fn, variables_of(state), images, config)
  out.update({"gt_boxes": batch["boxes"], "gt_labels": batch["labels"],
              "gt_valid": batch["valid"], "gt_difficult": batch["difficult"],
              "mask": batch["mask"]})
  if axis_name is not None:  # pmap: every replica returns all devices' detections
    out = jax.tree_util.tree_map(lambda x: lax.all_gather(x, axis_name, tiled=True), out)
  return out


def evaluate(s: Any, state: Any, data: Any) -> dict[str, float]:
  """mAP of the detector on every example of `data` (this process's share), against all
  of its ground truth: batches are padded to the split's own largest object count, never
  cut to `detection.max_objects` (a training setting: dropped objects inflated the mAP)."""
  per_process = s.config.eval_batch_size // jax.process_count()
  num_batches = parallel.agree(-(-len(data) // per_process), max)
  ds = s.config.dataset
  options = {**s.batch_options(), "max_objects": eval_max_objects(s.max_objects, data)}
  detections, truth = [], []
  for batch in input_pipeline.eval_batches(data, per_process, num_batches, pp=ds.pp_eval,
                                           **options):
    out = jax.device_get(s.compiled.eval_step(state, s.compiled.put_batch(batch)))
    if s.compiled.mode == "pmap" and jax.process_count() > 1:
      from jax.experimental import multihost_utils  # noqa: PLC0415
      out = multihost_utils.process_allgather(out, tiled=True)
    for i in np.flatnonzero(out["mask"] > 0):
      v, g = out["valid"][i], out["gt_valid"][i]
      detections.append({"boxes": out["boxes"][i][v], "scores": out["scores"][i][v],
                         "classes": out["classes"][i][v]})
      truth.append({"boxes": out["gt_boxes"][i][g], "classes": out["gt_labels"][i][g],
                    "difficult": out["gt_difficult"][i][g]})
  metrics = mean_ap.evaluate_detections(detections, truth, s.num_classes,
                                        getattr(data, "class_names", None))
  metrics["num_examples"] = float(len(truth))
  metrics["detections_per_image"] = float(np.mean([len(d["scores"]) for d in detections])
                                          if detections else 0.0)
  return metrics


def eval_max_objects(max_objects: Optional[int], data: Any) -> int:
  """Ground-truth rows per evaluated image: every object of the split's fullest image (the
  same on every process, so batch shapes agree), at least the training `max_objects`."""
  return parallel.agree(max(1, int(max_objects or 1), int(getattr(data, "max_objects", 0))), max)


def restore_backbone(state: Any, variables: dict[str, Any]) -> Any:
  """`state` with its backbone taken from a classification (or detection) run's variables.

  Every backbone variable must be found with the same shape; the classifier's head and
  anything else outside the backbone are left out. The detection head keeps its init.
  """
  def merge(mine: Any, theirs: Any, collection: str) -> Any:
    if not mine:
      return mine
    theirs = flax.core.unfreeze(theirs or {})
    theirs = theirs.get("backbone", theirs)  # a detector's variables: its backbone subtree
    flat_mine = traverse_util.flatten_dict(flax.core.unfreeze(mine))
    flat_theirs = traverse_util.flatten_dict(theirs)
    out, missing = {}, []
    for path, leaf in flat_mine.items():
      src = path[1:] if path[0] == "backbone" else None
      if src is None:
        out[path] = leaf
      elif src in flat_theirs and flat_theirs[src].shape == leaf.shape:
        out[path] = jnp.asarray(flat_theirs[src], leaf.dtype)
      else:
        missing.append("/".join(src))
    if missing:
      raise ValueError(f"restore_from: {len(missing)} backbone {collection} not found (or of "
                       f"another shape) in the given run, e.g. {missing[:3]}; was it trained with "
                       "the same model as config.model?")
    return traverse_util.unflatten_dict(out)
  return state.replace(params=merge(state.params, variables.get("params"), "params"),
                       batch_stats=merge(state.batch_stats, variables.get("batch_stats"),
                                         "batch_stats"))

