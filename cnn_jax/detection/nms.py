"""Non-maximum suppression: a NumPy reference and a batched, jit-compatible version.

A detector proposes many overlapping boxes per object; greedy NMS keeps the best-scored
box and drops every box of the same class that overlaps it by more than `iou_threshold`,
then repeats with the best remaining box. Two implementations, one contract:

* `nms_numpy` is the obvious loop, one image and one class, in float64. It is slow and
  host-only, but easy to check by hand, so it is the definition the tests hold
  `batched_nms` to.
* `batched_nms` works on a whole batch inside `jax.jit`: every shape is static (top-k
  candidates in, `max_detections` padded slots out), so a detector's decode step
  compiles once whatever the number of boxes that survive.

Conventions (torchvision's): corners (x0, y0, x1, y1) with continuous coordinates (no
+1 pixel); a box is suppressed only when its IoU with a kept box is *strictly* greater
than the threshold; equal scores are ranked by lower index first; a zero-area box has
IoU 0 with everything, so it never suppresses nor is suppressed.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.detection.boxes import box_iou

Array = jax.Array


def _iou_matrix_numpy(boxes: np.ndarray) -> np.ndarray:
  """(N, N) IoU, with the same clipping as `box_iou` so the two agree on odd boxes."""
  a, b = boxes.astype(np.float64)[:, None, :], boxes.astype(np.float64)[None, :, :]
  iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = iw * ih
  b = boxes.astype(np.float64)
  area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
  # The 1e-9 floor (as in `box_iou`) makes two zero-area boxes IoU 0, not NaN.
  return inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-9)


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
  """Greedy NMS for one image and one class: the reference `batched_nms` must match.

  Args:
    boxes: (N, 4) corners (x0, y0, x1, y1).
    scores: (N,) scores; higher is better.
    iou_threshold: a box whose IoU with an already-kept box is > this is dropped.

  Returns:
    int64 indices of the kept boxes, by descending score (ties: lower index first).
  """
  boxes, scores = np.asarray(boxes), np.asarray(scores)
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
  if scores.shape != boxes.shape[:1]:
    raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {scores.shape}")
  order = np.argsort(-scores.astype(np.float64), kind="stable")
  iou = _iou_matrix_numpy(boxes)
  suppressed = np.zeros(len(order), dtype=bool)
  keep = []
  for i in order:
    if suppressed[i]:
      continue
    keep.append(i)
    suppressed |= iou[i] > iou_threshold
  return np.asarray(keep, dtype=np.int64)


def _check_args(boxes, scores, classes, iou_threshold, score_threshold, pre_nms_top_k,
                max_detections):
  """Fail on the caller's line with the reason, not deep inside a trace with a shape error."""
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must have shape (B, N, 4), got {tuple(boxes.shape)}")
  if tuple(scores.shape) != tuple(boxes.shape[:2]):
    raise ValueError(f"scores must have shape {tuple(boxes.shape[:2])} (B, N) to match boxes, "
                     f"got {tuple(scores.shape)}")
  if tuple(classes.shape) != tuple(boxes.shape[:2]):
    raise ValueError(f"classes must have shape {tuple(boxes.shape[:2])} (B, N) to match boxes, "
                     f"got {tuple(classes.shape)}")
  if not jnp.issubdtype(classes.dtype, jnp.integer):
    raise ValueError(f"classes must be an integer array, got dtype {classes.dtype}")
  for name, value in (("iou_threshold", iou_threshold), ("score_threshold", score_threshold)):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
      raise ValueError(f"{name} must be a Python number (it is static under jit), got {value!r}")
  if not 0.0 <= iou_threshold <= 1.0:
    raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
  if np.isnan(score_threshold):
    raise ValueError("score_threshold must not be NaN")
  for name, value in (("pre_nms_top_k", pre_nms_top_k), ("max_detections", max_detections)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive int, got {value!r}")


def _greedy_keep(suppresses: Array, valid: Array) -> Array:
  """Exact greedy NMS on score-sorted candidates.

  `suppresses[i, j]` says box i would drop box j (i < j, same class, IoU above the
  threshold). Walking i in score order, a box is kept iff it is valid and no *kept*
  earlier box suppresses it; a suppressed box suppresses nothing, which is why this is
  a loop and not a single `any` over the matrix (that would drop C in the chain
  A -> B -> C even though B is gone).
  """
  def body(i, dropped):
    row = jax.lax.dynamic_index_in_dim(suppresses, i, axis=0, keepdims=False)
    return dropped | (row & ~dropped[i])

  return ~jax.lax.fori_loop(0, valid.shape[0], body, ~valid)


@functools.partial(jax.jit, static_argnames=(
    "iou_threshold", "score_threshold", "pre_nms_top_k", "max_detections", "class_agnostic"))
def _batched_nms(boxes, scores, classes, *, iou_threshold, score_threshold, pre_nms_top_k,
                 max_detections, class_agnostic):
  num = boxes.shape[1]
  k = min(pre_nms_top_k, num)

  def one_image(b, s, c):
    valid = s > score_threshold  # also False for NaN scores
    # -inf so invalid (and NaN) scores rank last: lax.top_k would put NaN first.
    _, idx = jax.lax.top_k(jnp.where(valid, s, -jnp.inf), k)  # stable: ties by lower index
    b, s, c, valid = b[idx], s[idx], c[idx], valid[idx]
    bf = b.astype(jnp.promote_types(b.dtype, jnp.float32))
    sup = box_iou(bf[:, None, :], bf[None, :, :], box_format="xyxy") > iou_threshold
    sup &= jnp.triu(jnp.ones((k, k), bool), 1)  # only a higher-ranked box suppresses
    if not class_agnostic:
      sup &= c[:, None] == c[None, :]
    keep = _greedy_keep(sup, valid)
    # The first `max_detections` kept candidates, still in score order; pad with slot 0.
    (slot,) = jnp.nonzero(keep, size=max_detections, fill_value=0)
    ok = jnp.arange(max_detections) < jnp.sum(keep)
    return {
        "boxes": jnp.where(ok[:, None], b[slot], 0).astype(boxes.dtype),
        "scores": jnp.where(ok, s[slot], 0).astype(scores.dtype),
        "classes": jnp.where(ok, c[slot], 0).astype(jnp.int32),
        "valid": ok,
    }

  if k == 0:  # no candidates at all: nothing to rank, every slot is padding
    batch, d = boxes.shape[0], max_detections
    return {"boxes": jnp.zeros((batch, d, 4), boxes.dtype),
            "scores": jnp.zeros((batch, d), scores.dtype),
            "classes": jnp.zeros((batch, d), jnp.int32), "valid": jnp.zeros((batch, d), bool)}
  return jax.vmap(one_image)(boxes, scores, classes)


def batched_nms(boxes: Array, scores: Array, classes: Array, *, iou_threshold: float = 0.45,
                score_threshold: float = 0.0, pre_nms_top_k: int = 256,
                max_detections: int = 100, class_agnostic: bool = False) -> dict[str, Array]:
  """Per-class greedy NMS over a batch, with static shapes so it runs under `jax.jit`.

  Per image: scores <= `score_threshold` are discarded; the `min(pre_nms_top_k, N)`
  best-scored boxes are kept as candidates (capping the O(K^2) IoU matrix); greedy NMS
  runs among them, where boxes of different classes never suppress each other unless
  `class_agnostic`; the first `max_detections` survivors are returned by descending
  score. The result equals `nms_numpy` run per class on those candidates.

  Args:
    boxes: (B, N, 4) corners (x0, y0, x1, y1).
    scores: (B, N) scores.
    classes: (B, N) integer class ids.
    iou_threshold: in [0, 1]; IoU strictly above it suppresses.
    score_threshold: scores must be strictly above it to count.
    pre_nms_top_k: candidates per image before NMS.
    max_detections: D, output slots per image.
    class_agnostic: let boxes of any class suppress each other.

  Returns:
    {'boxes': (B, D, 4), 'scores': (B, D), 'classes': (B, D) int32, 'valid': (B, D) bool};
    padding slots have valid False and zero box, score and class.
  """
  boxes, scores, classes = jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(classes)
  _check_args(boxes, scores, classes, iou_threshold, score_threshold, pre_nms_top_k,
              max_detections)
  return _batched_nms(boxes, scores, classes,
                      iou_threshold=float(iou_threshold), score_threshold=float(score_threshold),
                      pre_nms_top_k=int(pre_nms_top_k), max_detections=int(max_detections),
                      class_agnostic=bool(class_agnostic))
