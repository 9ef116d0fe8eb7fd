"""NMS: hand-worked cases for the NumPy reference, then batched_nms held to it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.detection.nms import batched_nms, nms_numpy

# [0,0,2,1] vs [1,0,3,1]: intersection 1, union 3 -> IoU 1/3.
A, B = [0, 0, 2, 1], [1, 0, 3, 1]


def _nms(boxes, scores, thr):
  return nms_numpy(np.asarray(boxes, np.float64), np.asarray(scores, np.float64), thr).tolist()


def _one(boxes, scores, classes, **kw):
  """batched_nms on a single image given as lists; returns the valid rows as lists."""
  out = batched_nms(jnp.asarray([boxes], jnp.float32), jnp.asarray([scores], jnp.float32),
                    jnp.asarray([classes], jnp.int32), **kw)
  v = np.asarray(out["valid"][0])
  return (np.asarray(out["boxes"][0])[v].tolist(), np.asarray(out["scores"][0])[v].tolist(),
          np.asarray(out["classes"][0])[v].tolist())


def test_overlap_against_threshold():
  assert _nms([A, B], [0.9, 0.8], 0.3) == [0]
  assert _nms([A, B], [0.9, 0.8], 0.34) == [0, 1]
  assert _nms([A, B], [0.8, 0.9], 0.3) == [1]  # the better score wins, not the lower index


def test_iou_equal_to_threshold_is_kept():
  # [0,0,2,1] vs [0,0,1,1]: intersection 1, union 2 -> IoU exactly 0.5 in any float.
  boxes, scores = [[0, 0, 2, 1], [0, 0, 1, 1]], [0.9, 0.8]
  assert _nms(boxes, scores, 0.5) == [0, 1]
  assert _nms(boxes, scores, 0.49) == [0]
  assert len(_one(boxes, scores, [0, 0], iou_threshold=0.5)[1]) == 2
  assert len(_one(boxes, scores, [0, 0], iou_threshold=0.49)[1]) == 1


def test_equal_scores_keep_lower_index():
  assert _nms([A, A, B], [0.5, 0.5, 0.5], 0.3) == [0]
  assert _nms([B, A, [5, 5, 6, 6]], [0.5, 0.5, 0.5], 0.3) == [0, 2]
  boxes, scores, _ = _one([A, B], [0.5, 0.5], [0, 0], iou_threshold=0.3)
  assert boxes == [A] and scores == [0.5]


def test_identical_boxes():
  assert _nms([A, A, A], [0.7, 0.9, 0.8], 0.99) == [1]  # IoU 1 > any threshold below 1
  assert _nms([A, A], [0.7, 0.9], 1.0) == [1, 0]  # ... and 1 is not > 1


def test_zero_area_boxes_never_overlap():
  point, line = [1, 1, 1, 1], [0, 0, 2, 0]
  assert _nms([point, point, line, A], [0.9, 0.8, 0.7, 0.6], 0.0) == [0, 1, 2, 3]


def test_empty_input():
  assert nms_numpy(np.zeros((0, 4)), np.zeros((0,)), 0.5).shape == (0,)
  out = batched_nms(jnp.ones((2, 5, 4)), jnp.full((2, 5), 0.1), jnp.zeros((2, 5), jnp.int32),
                    score_threshold=0.5, max_detections=3)
  assert not out["valid"].any()
  assert not out["boxes"].any() and not out["scores"].any() and not out["classes"].any()
  out = batched_nms(jnp.ones((2, 0, 4)), jnp.ones((2, 0)), jnp.zeros((2, 0), jnp.int32))
  assert out["valid"].shape == (2, 100) and not out["valid"].any()


def test_chain_suppressed_box_does_not_suppress():
  # IoU(a, b) = IoU(b, c) = 1/3 > 0.3, IoU(a, c) = 0: a drops b, so c survives.
  a, b, c = [0, 0, 2, 1], [1, 0, 3, 1], [2, 0, 4, 1]
  assert _nms([a, b, c], [0.9, 0.8, 0.7], 0.3) == [0, 2]
  boxes, scores, _ = _one([c, a, b], [0.7, 0.9, 0.8], [1, 1, 1], iou_threshold=0.3)
  assert boxes == [a, c] and scores == pytest.approx([0.9, 0.7])


def test_classes_suppress_only_their_own():
  boxes, scores = [A, A, B], [0.9, 0.8, 0.7]
  assert _one(boxes, scores, [0, 1, 1], iou_threshold=0.3)[2] == [0, 1]
  got = _one(boxes, scores, [0, 1, 2], iou_threshold=0.3, class_agnostic=True)
  assert got[2] == [0] and got[1] == pytest.approx([0.9])


def test_score_threshold_and_truncation():
  boxes = [[i, 0, i + 1, 1] for i in range(6)]  # disjoint
  scores = [0.1, 0.6, 0.3, 0.9, 0.5, 0.3]
  _, s, _ = _one(boxes, scores, [0] * 6, score_threshold=0.3)  # 0.3 itself is dropped
  assert s == pytest.approx([0.9, 0.6, 0.5])
  b, s, _ = _one(boxes, scores, [0] * 6, max_detections=2)
  assert s == pytest.approx([0.9, 0.6]) and b == [boxes[3], boxes[1]]
  _, s, _ = _one(boxes, scores, [0] * 6, pre_nms_top_k=4)  # only the 4 best are candidates
  assert s == pytest.approx([0.9, 0.6, 0.5, 0.3])


def _reference(boxes, scores, classes, iou_threshold, score_threshold, top_k, max_det,
               class_agnostic=False):
  """batched_nms spelled out with nms_numpy: per image, per class, then merged by rank."""
  out = []
  for b, s, c in zip(boxes, scores, classes):
    ok = np.flatnonzero(s > score_threshold)
    cand = ok[np.argsort(-s[ok], kind="stable")][:top_k]  # rank order, ties by index
    kept = []
    for cls in ([None] if class_agnostic else np.unique(c[cand])):
      rank = np.arange(len(cand)) if cls is None else np.flatnonzero(c[cand] == cls)
      kept += rank[nms_numpy(b[cand[rank]], s[cand[rank]], iou_threshold)].tolist()
    out.append(cand[sorted(kept)][:max_det])
  return out


def _check_parity(boxes, scores, classes, **kw):
  out = jax.jit(lambda b, s, c: batched_nms(b, s, c, **kw))(boxes, scores, classes)
  ref = _reference(boxes, scores, classes, kw["iou_threshold"], kw["score_threshold"],
                   kw["pre_nms_top_k"], kw["max_detections"], kw.get("class_agnostic", False))
  for i, idx in enumerate(ref):
    n = len(idx)
    assert np.asarray(out["valid"][i]).tolist() == [True] * n + [False] * (len(out["valid"][i]) - n)
    np.testing.assert_array_equal(out["boxes"][i, :n], boxes[i, idx])
    np.testing.assert_array_equal(out["scores"][i, :n], scores[i, idx])
    np.testing.assert_array_equal(out["classes"][i, :n], classes[i, idx])
    assert not out["boxes"][i, n:].any() and not out["scores"][i, n:].any()
  return out


def test_parity_with_reference_on_random_boxes():
  rng = np.random.default_rng(0)
  bsz, n = 3, 200
  # Small-integer corners: dense overlaps, duplicates and ~150 same-class pairs with IoU
  # exactly 0.5 (and some exactly 0.4), computed exactly in float32 and float64 alike.
  xy = rng.integers(0, 8, (bsz, n, 2))
  boxes = np.concatenate([xy, xy + rng.integers(2, 6, (bsz, n, 2))], -1).astype(np.float32)
  boxes[:, 100:120] = boxes[:, 0:20]  # identical boxes
  scores = (rng.integers(0, 20, (bsz, n)) / 20).astype(np.float32)  # many exact ties
  classes = rng.integers(0, 3, (bsz, n)).astype(np.int32)
  out = _check_parity(boxes, scores, classes, iou_threshold=0.5, score_threshold=0.1,
                      pre_nms_top_k=256, max_detections=150)
  kept = np.asarray(out["valid"].sum(1))
  assert (kept < (scores > 0.1).sum(1) - 40).all() and (kept < 150).all()  # NMS did work
  _check_parity(boxes, scores, classes, iou_threshold=0.4, score_threshold=0.0,
                pre_nms_top_k=64, max_detections=20, class_agnostic=True)
  # Continuous coordinates and scores.
  xy = rng.uniform(0, 1, (bsz, n, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(0, 0.4, (bsz, n, 2))], -1).astype(np.float32)
  scores = rng.uniform(0, 1, (bsz, n)).astype(np.float32)
  _check_parity(boxes, scores, classes, iou_threshold=0.5, score_threshold=0.05,
                pre_nms_top_k=256, max_detections=100)


def test_compiles_once_with_fixed_shapes():
  traces = []

  @jax.jit
  def detect(b, s, c):
    traces.append(1)
    return batched_nms(b, s, c, max_detections=7, pre_nms_top_k=32)

  rng = np.random.default_rng(1)
  for fill in (0.0, 0.5, 1.0):  # nothing, some, everything above the score threshold
    xy = rng.uniform(0, 1, (2, 50, 2))
    b = np.concatenate([xy, xy + 0.1], -1).astype(np.float32)
    s = (rng.uniform(0, 1, (2, 50)) < fill).astype(np.float32)
    out = detect(b, s, np.zeros((2, 50), np.int32))
    assert out["boxes"].shape == (2, 7, 4) and out["scores"].shape == (2, 7)
    assert out["classes"].shape == (2, 7) and out["classes"].dtype == jnp.int32
    assert out["valid"].shape == (2, 7) and out["valid"].dtype == jnp.bool_
  assert len(traces) == 1


@pytest.mark.parametrize("kw, match", [
    (dict(boxes=np.zeros((2, 5, 3))), "boxes must have shape"),
    (dict(boxes=np.zeros((5, 4))), "boxes must have shape"),
    (dict(scores=np.zeros((2, 6))), "scores must have shape"),
    (dict(classes=np.zeros((2, 5), np.int32)[:, :4]), "classes must have shape"),
    (dict(classes=np.zeros((2, 5), np.float32)), "integer"),
    (dict(iou_threshold=1.5), "iou_threshold"),
    (dict(iou_threshold=-0.1), "iou_threshold"),
    (dict(score_threshold=float("nan")), "score_threshold"),
    (dict(pre_nms_top_k=0), "pre_nms_top_k"),
    (dict(max_detections=2.5), "max_detections"),
])
def test_bad_arguments(kw, match):
  args = dict(boxes=np.zeros((2, 5, 4)), scores=np.zeros((2, 5)),
              classes=np.zeros((2, 5), np.int32))
  args.update(kw)
  with pytest.raises(ValueError, match=match):
    batched_nms(args.pop("boxes"), args.pop("scores"), args.pop("classes"), **args)
  with pytest.raises(ValueError, match="boxes must have shape"):
    nms_numpy(np.zeros((3, 5)), np.zeros(3), 0.5)
