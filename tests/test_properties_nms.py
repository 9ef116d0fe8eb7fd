"""Properties of greedy NMS that hold for every input, checked on generated boxes.

The hand-worked cases are in tests/test_nms.py; these let hypothesis search for the input
that breaks one of NMS's defining properties: no two kept boxes of a class overlap above
the threshold, every dropped box is explained by a better kept box of its class, the kept
boxes come out by score, and reordering the inputs does not change what is kept. Both
`nms_numpy` and `batched_nms` are held to a plain-Python greedy NMS written out here.

Coordinates are quarter pixels on a small grid, so every area, intersection and union is
exact in float32 and float64 and an IoU differs from any threshold k/64 by far more than
float32's rounding: the three implementations must agree exactly, not up to a tolerance.
`batched_nms` runs with one fixed shape (boxes padded with invalid scores) and two sets of
static arguments (SETTINGS), so it compiles twice, not once per example.
"""
from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings, strategies as st

from cnn_jax.detection.nms import batched_nms, nms_numpy

PROPS = settings(max_examples=100, deadline=None, derandomize=True, database=None)
N = 10  # boxes per image in the batched calls (the rest of the slots are padding)
THRESHOLDS = [0.0, 0.25, 0.5, 43 / 64, 1.0]


@st.composite
def boxes_st(draw, max_n: int = N) -> list[tuple[float, float, float, float]]:
  """Up to max_n boxes with quarter-pixel corners in [0, 8]: crowded enough that most
  overlap (chains of suppression included); zero-area boxes included."""
  n = draw(st.integers(0, max_n))
  corner, size = st.integers(0, 12), st.integers(2, 20).map(lambda v: v if v > 2 else 0)
  return [(x / 4, y / 4, (x + w) / 4, (y + h) / 4)
          for x, y, w, h in (draw(st.tuples(corner, corner, size, size)) for _ in range(n))]


def iou(a, b) -> float:
  """IoU of two corner boxes in Python floats; 0 where the union is empty."""
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def greedy(boxes, scores, classes, thr: float) -> list[int]:
  """Textbook greedy NMS: best score first (ties: lower index), drop same-class boxes
  overlapping a kept one by more than thr."""
  kept: list[int] = []
  for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
    if all(classes[k] != classes[i] or iou(boxes[k], boxes[i]) <= thr for k in kept):
      kept.append(i)
  return kept


@st.composite
def image_st(draw, unique_scores: bool = False):
  boxes = draw(boxes_st())
  score = st.integers(1, 8 if not unique_scores else 1000).map(lambda s: s / 8)
  scores = draw(st.lists(score, min_size=len(boxes), max_size=len(boxes),
                         unique=unique_scores))
  classes = draw(st.lists(st.integers(0, 1), min_size=len(boxes), max_size=len(boxes)))
  return boxes, scores, classes


def check_greedy_properties(boxes, scores, classes, thr, kept):
  """What defines a greedy NMS result, without running one."""
  assert len(set(kept)) == len(kept)
  assert [scores[k] for k in kept] == sorted((scores[k] for k in kept), reverse=True)
  for a in kept:
    for b in kept:
      if a != b and classes[a] == classes[b]:
        assert iou(boxes[a], boxes[b]) <= thr, (a, b)
  for d in set(range(len(boxes))) - set(kept):
    assert any(classes[k] == classes[d] and (scores[k], -k) > (scores[d], -d)
               and iou(boxes[k], boxes[d]) > thr for k in kept), d


@PROPS
@given(data=image_st(), thr=st.sampled_from(THRESHOLDS) | st.integers(0, 64).map(lambda k: k / 64))
def test_nms_numpy_is_greedy_nms(data, thr):
  boxes, scores, _ = data
  one_class = [0] * len(boxes)
  kept = nms_numpy(np.asarray(boxes, np.float64).reshape(-1, 4),
                   np.asarray(scores, np.float64), thr).tolist()
  assert kept == greedy(boxes, scores, one_class, thr)
  check_greedy_properties(boxes, scores, one_class, thr, kept)


def pad(images):
  """(B, N, 4) boxes, (B, N) scores and classes; padding slots score -1, under every
  score_threshold used here."""
  b = np.zeros((len(images), N, 4), np.float32)
  s = np.full((len(images), N), -1.0, np.float32)
  c = np.zeros((len(images), N), np.int32)
  for i, (boxes, scores, classes) in enumerate(images):
    b[i, :len(boxes)] = np.reshape(boxes, (-1, 4))
    s[i, :len(boxes)], c[i, :len(boxes)] = scores, classes
  return b, s, c


# Each setting is static under jit and compiles once (~1 s): two cover the switches.
SETTINGS = [
    {"iou_threshold": 0.5, "score_threshold": 0.0, "pre_nms_top_k": N, "max_detections": 4,
     "class_agnostic": False},
    # Scores are k / 8: 4 / 8 and up pass (3 / 8 is not above); the 5 best are candidates.
    {"iou_threshold": 0.25, "score_threshold": 3 / 8, "pre_nms_top_k": 5, "max_detections": N,
     "class_agnostic": True},
]


def run_batched(images, setting):
  b, s, c = pad(images)
  return {k: np.asarray(v) for k, v in batched_nms(b, s, c, **setting).items()}


def expected(boxes, scores, classes, setting) -> list[int]:
  """batched_nms's contract in plain Python: drop scores <= score_threshold, keep the
  pre_nms_top_k best (ties: lower index), greedy NMS, the first max_detections kept."""
  above = [i for i in range(len(boxes)) if scores[i] > setting["score_threshold"]]
  cand = sorted(sorted(above, key=lambda i: (-scores[i], i))[:setting["pre_nms_top_k"]])
  cls = [0 if setting["class_agnostic"] else classes[i] for i in cand]
  kept = greedy([boxes[i] for i in cand], [scores[i] for i in cand], cls,
                setting["iou_threshold"])
  check_greedy_properties([boxes[i] for i in cand], [scores[i] for i in cand], cls,
                          setting["iou_threshold"], kept)
  return [cand[k] for k in kept][:setting["max_detections"]]


def rows(out, i) -> list[tuple]:
  """Image i's valid output rows (box, score, class), in the output's order."""
  return [(tuple(out["boxes"][i, j]), float(out["scores"][i, j]), int(out["classes"][i, j]))
          for j in range(out["valid"].shape[1]) if out["valid"][i, j]]


# A chain: A drops B, B would drop C but is gone, so C stays (kept only by a real greedy).
CHAIN = ([(0, 0, 4, 1), (1, 0, 5, 1), (2, 0, 6, 1)], [0.875, 0.75, 0.625], [0, 0, 0])


@PROPS
@given(images=st.lists(image_st(), min_size=2, max_size=2), setting=st.sampled_from(SETTINGS))
@example(images=[CHAIN, CHAIN], setting=SETTINGS[0])
def test_batched_nms_is_greedy_nms_per_class(images, setting):
  out = run_batched(images, setting)
  d = setting["max_detections"]
  for i, (boxes, scores, classes) in enumerate(images):
    kept = expected(boxes, scores, classes, setting)
    n = len(kept)
    assert out["valid"][i].tolist() == [True] * n + [False] * (d - n)
    # Boxes need not be unique: compare whole rows, in order.
    assert rows(out, i) == [(boxes[k], scores[k], classes[k]) for k in kept]
    assert not out["boxes"][i, n:].any() and not out["scores"][i, n:].any()
    assert not out["classes"][i, n:].any()


@PROPS
@given(data=image_st(unique_scores=True), seed=st.integers(0, 99))
def test_batched_nms_does_not_depend_on_input_order(data, seed):
  """With distinct scores what is kept is a function of the set of inputs, not their order."""
  boxes, scores, classes = data
  perm = np.random.default_rng(seed).permutation(len(boxes))
  shuffled = ([boxes[p] for p in perm], [scores[p] for p in perm], [classes[p] for p in perm])
  out = run_batched([data, shuffled], SETTINGS[0])
  assert rows(out, 0) == rows(out, 1)
