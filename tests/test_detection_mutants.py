"""Detection lines that a plausible one-token bug could change while every other test passes.

Each test here was written against a surviving mutant of `benchmarks/mutation.py`
(docs/testing.md): a hand-worked value, or an independent implementation (numpy written
out here, pycocotools' COCOeval). Shapes are tiny: the whole file runs in seconds.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.detection import localization_task
from cnn_jax.detection.localization import Localizer
from cnn_jax.detection.localization import localization_loss as _localization_loss

# Jitted: op-by-op dispatch compiles every primitive separately (seconds on a busy CPU).
localization_loss = jax.jit(_localization_loss,
                            static_argnames=("cls_weight", "box_weight", "box_loss"))


# ------------------------------------------------------------------- localization loss
def test_localization_loss_default_weights_by_hand():
  """The defaults are 0.8 x cross entropy + 0.2 x smooth L1 (delta 1), summed over the 4
  box numbers and averaged over the batch; swapped weights, another delta, a sum over the
  wrong axis or a mean where a sum belongs all change these numbers."""
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  labels = jnp.array([0, 2])
  boxes = jnp.array([[0.5, 0.5, 0.5, 0.5], [0.2, 0.4, 0.6, 0.8]])
  truth = jnp.array([[0.5, 0.5, 0.8, 2.0], [0.2, 0.4, 0.6, 0.8]])
  loss, m = localization_loss(logits, boxes, labels, truth)
  # Cross entropy: log(e^2 + 2) - 2 and log(e + 2) - 0.
  ce = (np.log(np.e ** 2 + 2) - 2 + np.log(np.e + 2)) / 2
  # Box 0: |d| = 0, 0, 0.3, 1.5 -> 0.5 * 0.09 + (1.5 - 0.5) = 1.045; box 1: 0.
  reg = (1.045 + 0.0) / 2
  assert float(m["cls_loss"]) == pytest.approx(ce, rel=1e-6)
  assert float(m["box_loss"]) == pytest.approx(reg, rel=1e-6)
  assert float(loss) == float(m["loss"]) == pytest.approx(0.8 * ce + 0.2 * reg, rel=1e-6)
  assert float(m["accuracy"]) == 0.5  # example 0 right (argmax 0), example 1 wrong (1 vs 2)
  assert float(localization_loss(logits, boxes, jnp.array([0, 1]), truth)[1]["accuracy"]) == 1.0
  # The MSE variant: squared errors summed over the box, 0.09 + 2.25 = 2.34 on box 0.
  loss, m = localization_loss(logits, boxes, labels, truth, box_loss="mse")
  assert float(m["box_loss"]) == pytest.approx(2.34 / 2, rel=1e-6)
  assert float(loss) == pytest.approx(0.8 * ce + 0.2 * 2.34 / 2, rel=1e-6)
  loss, m = localization_loss(logits, boxes, labels, truth, cls_weight=1.0, box_weight=3.0)
  assert float(loss) == pytest.approx(ce + 3.0 * reg, rel=1e-6)
  with pytest.raises(ValueError, match="box_loss must be"):
    _localization_loss(logits, boxes, labels, truth, box_loss="l1")


def test_localization_metrics_of_totals():
  """Sums over a split -> means over the examples with an object; one example divides by
  1, none gives zeros, not NaN, and old totals without 'no_object' report 0."""
  out = localization_task.metrics({"loss": 1.5, "correct": 1.0, "iou": 0.6, "iou50": 1.0,
                                   "count": 1.0})
  assert out == {"loss": 1.5, "accuracy": 1.0, "mean_iou": 0.6, "iou50": 1.0,
                 "num_examples": 1.0, "num_without_object": 0.0}
  out = localization_task.metrics({"loss": 0.0, "correct": 0.0, "iou": 0.0, "iou50": 0.0,
                                   "count": 0.0, "no_object": 3.0})
  assert out["loss"] == 0.0 and out["num_examples"] == 0.0 and out["num_without_object"] == 3.0
  out = localization_task.metrics({"loss": 3.0, "correct": 2.0, "iou": 1.5, "iou50": 1.0,
                                   "count": 4.0, "no_object": 1.0})
  assert out["loss"] == 0.75 and out["accuracy"] == 0.5 and out["mean_iou"] == 0.375
  assert out["iou50"] == 0.25


def _loc_config(parallel="sharded"):
  from cnn_jax.config import base_config
  c = base_config()
  c.task, c.parallel = "localization", parallel
  return c


def _loc_by_hand(logits, boxes, labels, truth):
  """Per example: 0.8 x cross entropy + 0.2 x smooth L1 (delta 1) summed over the box; IoU."""
  z = logits - logits.max(-1, keepdims=True)
  ce = -(z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(len(labels)), labels]
  d = np.abs(boxes - truth)
  reg = np.where(d < 1, 0.5 * d ** 2, d - 0.5).sum(-1)
  lo, hi = np.maximum(boxes[:, :2], truth[:, :2]), np.minimum(boxes[:, 2:], truth[:, 2:])
  inter = np.clip(hi - lo, 0, None).prod(-1)
  area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
  with np.errstate(invalid="ignore"):
    iou = inter / (area(boxes) + area(truth) - inter)
  return 0.8 * ce + 0.2 * reg, ce, reg, iou


# Four examples; slot 0 of each target is the object, slot 1 a decoy that differs in every
# field. Example 2 has no object (its empty predicted and true boxes give a NaN IoU).
LOGITS = np.array([[2.0, 0.0], [1.0, 0.0], [0.5, 0.2], [0.9, 0.3]], np.float32)
PRED = np.array([[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 0.4, 0.8], [0.0, 0.0, 0.0, 0.0],
                 [0.0, 0.0, 0.5, 0.5]], np.float32)
TRUTH = np.array([[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.0, 0.0],
                  [0.0, 0.0, 0.5, 0.25]], np.float32)  # IoU exactly 0.5 with its prediction
LABELS = np.array([0, 1, 0, 0])
VALID = np.array([1.0, 1.0, 0.0, 1.0], np.float32)


def _loc_batch():
  decoy = lambda a, other: np.stack([a, other], axis=1)  # noqa: E731
  return {"boxes": jnp.asarray(decoy(TRUTH, TRUTH[::-1] + 0.05)),
          "labels": jnp.asarray(decoy(LABELS, 1 - LABELS)),
          "valid": jnp.asarray(decoy(VALID, 1.0 - VALID))}


def test_localization_loss_fn_means_over_examples_with_an_object():
  """The training loss and metrics are means over the examples whose slot 0 holds an
  object, worked out in numpy; an example without one (whose IoU is NaN) adds nothing.
  Under pmap each replica divides by the replicas' mean valid count, so the mean of the
  replicas' values is the global mean even when their counts differ (3 and 0 of 2+2)."""
  loss, ce, reg, iou = _loc_by_hand(LOGITS, PRED, LABELS, TRUTH)
  v = VALID > 0
  assert iou[0] == 1.0 and np.isnan(iou[2])
  want = {"loss": loss[v].mean(), "cls_loss": ce[v].mean(), "box_loss": reg[v].mean(),
          "accuracy": (LOGITS.argmax(-1) == LABELS)[v].mean(), "mean_iou": iou[v].mean()}
  assert want["accuracy"] == pytest.approx(2 / 3)
  fn = localization_task.loss_fn(_loc_config())
  value, m = fn((jnp.asarray(LOGITS), jnp.asarray(PRED)), _loc_batch())
  assert float(value) == pytest.approx(want["loss"], rel=1e-5)
  for k, w in want.items():
    assert float(m[k]) == pytest.approx(w, rel=1e-5), k
  # pmap, 2 replicas of 2: rows [2, 0 | 1, 3] with example 0's object removed, so
  # replica 0 has no object and replica 1 two.
  order = [2, 0, 1, 3]
  batch = {k: v[np.array(order)] for k, v in _loc_batch().items()}
  batch["valid"] = batch["valid"].at[1, 0].set(0.0)
  keep = np.array([False, False, True, True])
  glob = {"loss": loss[order][keep].mean(), "mean_iou": iou[order][keep].mean()}
  pm = localization_task.loss_fn(_loc_config("pmap"))
  split = lambda a: a.reshape((2, 2) + a.shape[1:])  # noqa: E731
  values, ms = jax.vmap(pm, axis_name="batch")(
      (split(jnp.asarray(LOGITS[order])), split(jnp.asarray(PRED[order]))),
      {k: split(v) for k, v in batch.items()})
  assert float(values.mean()) == pytest.approx(glob["loss"], rel=1e-5)
  assert float(ms["mean_iou"].mean()) == pytest.approx(glob["mean_iou"], rel=1e-5)
  assert float(values[0]) == 0.0  # a replica without objects adds nothing, not NaN
  # A batch without any object: every mean is 0, not NaN (0 / 0).
  empty = {**_loc_batch(), "valid": jnp.zeros((4, 2))}
  for f in (fn, lambda o, b: jax.vmap(pm, axis_name="batch")(
      tuple(split(x) for x in o), {k: split(v) for k, v in b.items()})):
    value, m = f((jnp.asarray(LOGITS), jnp.asarray(PRED)), empty)
    assert np.asarray(value).tolist() in (0.0, [0.0, 0.0])
    assert all(not np.isnan(np.asarray(v)).any() for v in m.values())
  # One object in 4 examples over 2 replicas: the mean count 0.5 divides, not 1.
  one = {k: v for k, v in batch.items()}
  one["valid"] = batch["valid"].at[3, 0].set(0.0)
  values, _ = jax.vmap(pm, axis_name="batch")(
      (split(jnp.asarray(LOGITS[order])), split(jnp.asarray(PRED[order]))),
      {k: split(v) for k, v in one.items()})
  assert float(values.mean()) == pytest.approx(loss[order][2], rel=1e-5)


def test_localization_eval_step_sums_by_hand():
  """Sums over the real examples (mask) with an object (valid slot 0): loss, correct,
  IoU, IoU > 0.5 (an IoU of exactly 0.5 is not counted); the real examples without one
  counted apart; the model and preprocessing run in inference mode."""
  import types
  seen = []

  def preprocess(images, key, train):
    seen.append(("pp", train, np.asarray(jax.random.key_data(key)).tolist()))
    return images

  def apply_fn(variables, images, train):
    seen.append(("model", train))
    return jnp.asarray(LOGITS), jnp.asarray(PRED)
  state = types.SimpleNamespace(apply_fn=apply_fn, params={}, batch_stats={})
  batch = {**_loc_batch(), "image": jnp.zeros((4, 2, 2, 1), jnp.uint8),
           "mask": jnp.array([1.0, 0.0, 1.0, 1.0])}  # example 1: padding (with an object)
  sums = localization_task.eval_step(state, batch, config=_loc_config(), preprocess=preprocess)
  loss, _, _, iou = _loc_by_hand(LOGITS, PRED, LABELS, TRUTH)
  assert iou[3] == pytest.approx(0.5)  # on the boundary: not an IoU > 0.5
  scored = np.array([True, False, False, True])  # real and with an object: examples 0 and 3
  want = {"loss": loss[scored].sum(), "correct": 2.0, "iou": iou[scored].sum(),
          "iou50": 1.0, "count": 2.0, "no_object": 1.0}
  for k, w in want.items():
    assert float(sums[k]) == pytest.approx(w, rel=1e-5), k
  assert seen == [("pp", False, np.asarray(jax.random.key_data(jax.random.key(0))).tolist()),
                  ("model", False)]
  with pytest.raises(ValueError, match="eval_flip is for classifiers"):
    localization_task.eval_step(state, batch, config=_loc_config(), preprocess=preprocess,
                                flip=True)


# ------------------------------------------------------------------- Localizer
class _Probe(nn.Module):
  """A parameter-free 'backbone': the input itself, negated in train mode, so the heads'
  input shows which mode the Localizer ran its backbone in."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return -x if train else x


def _dense(p, x):
  return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _init_apply(model, x, train=False):
  v = model.init(jax.random.key(0), x)
  return v, model.apply(v, x, train=train)


@pytest.mark.parametrize("pooling", ["avg", "flatten"])
def test_localizer_heads_by_hand(pooling):
  """Logits and boxes recomputed in numpy from the initialised weights: average pooling
  over (H, W) or flattening, the optional relu hidden layer, sigmoid boxes."""
  x = np.random.default_rng(0).normal(size=(3, 2, 3, 2)).astype(np.float32)  # N != C
  model = Localizer(_Probe(), num_classes=3, box_format="xyxy", pooling=pooling, hidden=5)
  v, (logits, boxes) = _init_apply(model, x)
  assert logits.shape == (3, 3) and boxes.shape == (3, 4)
  f = x.astype(np.float64).mean(axis=(1, 2)) if pooling == "avg" else x.reshape(3, -1)
  p = v["params"]
  h = np.maximum(_dense(p["hidden"], f), 0)
  np.testing.assert_allclose(logits, _dense(p["head"], h), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(boxes, _sigmoid(_dense(p["box_head"], h)), rtol=1e-5, atol=1e-6)
  assert logits.dtype == boxes.dtype == jnp.float32
  # No hidden layer: the heads read the pooled features directly.
  v, (logits, _) = _init_apply(Localizer(_Probe(), num_classes=3, pooling=pooling), x)
  assert set(v["params"]) == {"head", "box_head"}
  np.testing.assert_allclose(logits, _dense(v["params"]["head"], f), rtol=1e-5, atol=1e-6)


def test_localizer_backbone_mode_and_bad_settings():
  """The backbone runs in train mode only when the Localizer trains and is not frozen."""
  x = np.ones((1, 1, 1, 2), np.float32)
  v = Localizer(_Probe(), num_classes=2).init(jax.random.key(0), x)  # frozen: same params
  for frozen, train, sign in ((False, False, 1), (False, True, -1), (True, True, 1),
                              (True, False, 1)):
    model = Localizer(_Probe(), num_classes=2, frozen_backbone=frozen)
    logits, _ = model.apply(v, x, train=train)
    np.testing.assert_allclose(logits, _dense(v["params"]["head"], sign * x.reshape(1, 2)),
                               rtol=1e-6, atol=1e-6)
  # Defaults: not frozen, and apply without `train` is inference.
  model = Localizer(_Probe(), num_classes=2)
  for kw, sign in (({}, 1), ({"train": True}, -1)):
    np.testing.assert_allclose(model.apply(v, x, **kw)[0],
                               _dense(v["params"]["head"], sign * x.reshape(1, 2)), rtol=1e-6,
                               atol=1e-6)
  with pytest.raises(ValueError, match="box_format"):
    Localizer(_Probe(), num_classes=2, box_format="xywh").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="pooling"):
    Localizer(_Probe(), num_classes=2, pooling="max").init(jax.random.key(0), x)


# ------------------------------------------------------------------- NMS
def _nms_one(boxes, scores, **kw):
  from cnn_jax.detection.nms import batched_nms
  out = batched_nms(jnp.asarray([boxes], jnp.float32), jnp.asarray([scores], jnp.float32),
                    jnp.zeros((1, len(scores)), jnp.int32), **kw)
  return np.asarray(out["valid"][0]), np.asarray(out["scores"][0])


def test_nms_argument_boundaries():
  """The documented ranges are closed: iou_threshold 0 and 1, pre_nms_top_k and
  max_detections 1 are accepted; bools and strings are not numbers here."""
  from cnn_jax.detection.nms import _check_args, batched_nms, nms_numpy
  args = (np.zeros((1, 2, 4)), np.zeros((1, 2)), np.zeros((1, 2), np.int32))
  for iou in (0, 0.0, 1.0, np.float32(1.0)):
    _check_args(*args, iou, 0.0, 1, 1)
  _check_args(*args, 0.5, -1e30, np.int64(1), 1)
  # One candidate (the best score), one slot.
  valid, scores = _nms_one([[0, 0, 2, 1], [5, 5, 6, 6]], [0.8, 0.9], pre_nms_top_k=1,
                           max_detections=1)
  assert valid.tolist() == [True] and scores.tolist() == pytest.approx([0.9])
  for kw, match in ((dict(iou_threshold=True), "iou_threshold"),
                    (dict(iou_threshold="0.5"), "iou_threshold"),
                    (dict(score_threshold=False), "score_threshold"),
                    (dict(max_detections=True), "max_detections"),
                    (dict(pre_nms_top_k=np.int64(0)), "pre_nms_top_k")):
    with pytest.raises(ValueError, match=match):
      batched_nms(*args, **kw)
  with pytest.raises(ValueError, match="scores must have shape"):
    nms_numpy(np.zeros((3, 4)), np.zeros(2), 0.5)


def test_nms_default_candidates_and_thresholds():
  """Defaults: 256 candidates per image, IoU threshold 0.45, score threshold 0 (strictly
  above), per class. (100 output slots: tests/test_nms.py::test_empty_input.)"""
  from cnn_jax.detection.nms import batched_nms
  n = 259
  xs = np.arange(n, dtype=np.float32)
  boxes = np.stack([xs * 2 + 20, np.zeros(n), xs * 2 + 21, np.ones(n)], -1)  # disjoint
  # IoU 0.5 (> 0.45: the second is dropped) and IoU 0.4 (kept), ahead of the rest.
  boxes[:4] = [[0, 0, 2, 1], [0, 0, 1, 1], [4, 0, 9, 1], [4, 0, 6, 1]]
  scores = np.linspace(1.0, 0.5, n, dtype=np.float32)
  scores[-1] = 0.0  # not above the score threshold: never a candidate
  out = batched_nms(boxes[None], scores[None], np.zeros((1, n), np.int32), max_detections=n)
  # 258 boxes score above 0; the 256 best are candidates; one of them is suppressed.
  assert int(out["valid"].sum()) == 255
  np.testing.assert_array_equal(out["scores"][0, :3], scores[[0, 2, 3]])
  np.testing.assert_array_equal(out["scores"][0, 254], scores[255])  # the 256th candidate


def test_nms_reference_iou_messages_and_edge_outputs():
  """The numpy reference's IoU matrix by hand (boxes apart on both axes share nothing; an
  inverted box has no area; two empty boxes are 0, not NaN); each shape error names the
  expected shape; no candidates at all still give (B, D, 4) boxes; a score of exactly 0
  is not above the default threshold."""
  from cnn_jax.detection.nms import _iou_matrix_numpy, batched_nms, nms_numpy
  boxes = np.array([[0.0, 0.0, 1.0, 1.0],    # area 1
                    [1.5, 1.5, 2.0, 2.0],    # 0.5 apart on both axes: IoU 0 (not 0.25)
                    [0.5, 0.0, 1.5, 1.0],    # half of box 0: IoU 0.5 / 1.5
                    [1.0, 1.0, 0.5, 0.5],    # inverted: no area, overlaps nothing
                    [3.0, 3.0, 3.0, 3.0],    # a point
                    [3.0, 3.0, 3.0, 3.0],    # the same point
                    [1.5, 0.0, 2.5, 1.0],    # right of box 0, level with it
                    [0.0, 1.5, 1.0, 2.5]])   # below box 0
  iou = _iou_matrix_numpy(boxes)
  assert iou[0, 1] == 0.0 and iou[0, 2] == pytest.approx(1 / 3) and iou[1, 2] == 0.0
  assert iou[0, 6] == 0.0 and iou[0, 7] == 0.0 and iou[2, 6] == 0.0
  assert iou[0, 3] == 0.0 and iou[3, 3] == 0.0 and iou[4, 5] == 0.0
  assert not np.isnan(iou).any()
  with pytest.raises(ValueError, match=r"^scores must have shape \(3,\), got \(2,\)$"):
    nms_numpy(np.zeros((3, 4)), np.zeros(2), 0.5)
  b, c = np.zeros((2, 3, 4)), np.zeros((2, 3), np.int32)
  with pytest.raises(ValueError, match=r"^scores must have shape \(2, 3\) \(B, N\) to match "
                     r"boxes, got \(2, 2\)$"):
    batched_nms(b, np.zeros((2, 2)), c)
  with pytest.raises(ValueError, match=r"^classes must have shape \(2, 3\) \(B, N\) to match "
                     r"boxes, got \(3,\)$"):
    batched_nms(b, np.zeros((2, 3)), np.zeros(3, np.int32))
  out = batched_nms(np.zeros((2, 0, 4)), np.zeros((2, 0)), np.zeros((2, 0), np.int32),
                    max_detections=5)
  assert out["boxes"].shape == (2, 5, 4) and out["scores"].shape == (2, 5)
  assert not bool(out["valid"].any())
  out = batched_nms(np.array([[[0, 0, 1, 1], [5, 5, 6, 6]]], np.float32),
                    np.array([[0.9, 0.0]], np.float32), np.zeros((1, 2), np.int32))
  assert out["valid"][0].tolist()[:2] == [True, False]


# ------------------------------------------------------------------- YOLO v2
TALL_WIDE = ((0.2, 0.6), (0.6, 0.2))  # (w, h) anchors


def _yolo(name, *static):
  """A yolo_v2 function jitted with its anchors (and grid) static: op by op, each of the
  many small primitives compiles separately (a minute on a busy CPU)."""
  from cnn_jax.detection import yolo_v2
  return jax.jit(getattr(yolo_v2, name), static_argnames=static)


def _iou_xyxy(a, b):
  """IoU of two corner boxes, in plain Python floats."""
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _softplus(x):
  return float(np.log1p(np.exp(x)))


def test_yolo_v2_loss_terms_by_hand():
  """Every term of the loss on a 1x1 grid, two images (the second empty), worked out in
  numpy: coordinate (scale-weighted squared errors), objectness (BCE against the IoU of
  the decoded box), no-object (softplus of the logit), class (cross entropy), each summed
  and divided by the batch size, each with its lambda (default 1)."""
  encode = _yolo("encode_yolo_v2_targets", "anchors", "grid_shape")
  loss_fn = _yolo("yolo_v2_loss", "anchors")
  gt = jnp.array([[[0.3, 0.1, 0.5, 0.7]], [[0.0, 0.0, 0.0, 0.0]]])  # w .2, h .6: tall
  valid = jnp.array([[True], [False]])
  t = encode(gt, jnp.array([[1], [0]], jnp.int32), valid, anchors=TALL_WIDE, grid_shape=(1, 1))
  np.testing.assert_array_equal(t["has_obj"][:, 0, 0], [[1, 0], [0, 0]])
  xy = np.array([[[0.5, 0.3], [0.5, 0.5]], [[0.2, 0.7], [0.5, 0.5]]], np.float32)
  twh = np.array([[[0.1, -0.2], [0.0, 0.0]], [[0.3, 0.0], [0.0, 0.0]]], np.float32)
  obj = np.array([[1.0, -2.0], [0.5, -1.0]], np.float32)
  cls = np.array([[[-0.5, 0.5], [2.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]], np.float32)
  pred = {"xy": jnp.asarray(xy)[:, None, None], "twh": jnp.asarray(twh)[:, None, None],
          "objectness": jnp.asarray(obj)[:, None, None],
          "class_logits": jnp.asarray(cls)[:, None, None]}
  # Image 0, anchor 0 (responsible): target offsets (0.4, 0.4), log-scales (0, 0), scale
  # 2 - 0.2 * 0.6 = 1.88.
  coord = 1.88 * ((0.5 - 0.4) ** 2 + (0.3 - 0.4) ** 2 + 0.1 ** 2 + 0.2 ** 2)
  w, h = 0.2 * np.exp(0.1), 0.6 * np.exp(-0.2)
  iou = _iou_xyxy([0.5 - w / 2, 0.3 - h / 2, 0.5 + w / 2, 0.3 + h / 2], [0.3, 0.1, 0.5, 0.7])
  obj_loss = _softplus(1.0) - 1.0 * iou
  cls_loss = np.log(np.exp(-0.5) + np.exp(0.5)) - 0.5  # label 1
  # Anchor 1 of image 0: the wide prior at the centre, IoU .04 / .2 = .2 with the gt (not
  # ignored); every anchor of image 1 (no gt).
  assert _iou_xyxy([0.2, 0.4, 0.8, 0.6], [0.3, 0.1, 0.5, 0.7]) == pytest.approx(0.2)
  noobj = _softplus(-2.0) + _softplus(0.5) + _softplus(-1.0)
  want = {"coord_loss": coord / 2, "obj_loss": obj_loss / 2, "noobj_loss": noobj / 2,
          "cls_loss": cls_loss / 2}
  loss, m = loss_fn(pred, t, gt, valid, anchors=TALL_WIDE)
  for k, v in want.items():
    assert float(m[k]) == pytest.approx(v, rel=1e-5), k
  assert float(loss) == pytest.approx(sum(want.values()), rel=1e-5)
  assert float(m["mean_iou"]) == pytest.approx(iou, rel=1e-5)  # one responsible anchor
  _, m = loss_fn(pred, t, gt, valid, anchors=TALL_WIDE, lambda_coord=2.0, lambda_obj=3.0,
                 lambda_noobj=4.0, ignore_iou=0.6)
  for k, lam in (("coord_loss", 2.0), ("obj_loss", 3.0), ("noobj_loss", 4.0), ("cls_loss", 1.0)):
    assert float(m[k]) == pytest.approx(lam * want[k], rel=1e-5), k
  # Anchor 1 of image 0 reshaped to 0.25 x 0.6 at the gt's centre, IoU .12 / .15 = .8 with
  # it: above the default ignore_iou 0.6, so it pays no no-object loss; at 0.9 it does.
  xy2, twh2 = xy.copy(), twh.copy()
  xy2[0, 1], twh2[0, 1] = (0.4, 0.4), (np.log(0.25 / 0.6), np.log(0.6 / 0.2))
  assert _iou_xyxy([0.275, 0.1, 0.525, 0.7], [0.3, 0.1, 0.5, 0.7]) == pytest.approx(0.8)
  pred2 = dict(pred, xy=jnp.asarray(xy2)[:, None, None], twh=jnp.asarray(twh2)[:, None, None])
  _, m = loss_fn(pred2, t, gt, valid, anchors=TALL_WIDE)
  assert float(m["noobj_loss"]) == pytest.approx((_softplus(0.5) + _softplus(-1.0)) / 2, rel=1e-5)
  _, m = loss_fn(pred2, t, gt, valid, anchors=TALL_WIDE, lambda_coord=1.0, lambda_obj=1.0,
                 lambda_noobj=1.0, ignore_iou=0.9)
  assert float(m["noobj_loss"]) == pytest.approx(noobj / 2, rel=1e-5)


def _shape_iou(w, h, aw, ah):
  """IoU of a w x h box and an aw x ah anchor sharing a centre."""
  inter = min(w, aw) * min(h, ah)
  return inter / (w * h + aw * ah - inter)


def test_yolo_v2_anchor_choice_by_shape_iou_with_unequal_anchors():
  """Each object goes to the anchor of highest shape IoU, with w and h read as (w, h):
  three non-square anchors and boxes whose best anchor (worked out above in plain Python)
  would change if the box's area were w / h or an anchor's sides swapped; `twh` is then
  log of the box's sides over that anchor's."""
  anchors = ((0.1, 0.3), (0.5, 0.2), (0.25, 0.25))
  sizes = [(0.12, 0.35), (0.45, 0.15), (0.2, 0.3), (0.6, 0.3), (0.05, 0.05), (0.3, 0.6),
           (0.15, 0.4)]
  boxes = np.array([[[0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2] for w, h in sizes]],
                   np.float32)
  want = [int(np.argmax([_shape_iou(w, h, aw, ah) for aw, ah in anchors])) for w, h in sizes]
  # Each box alone (one per call: several share the single cell).
  for i, ((w, h), best) in enumerate(zip(sizes, want)):
    t = _yolo("encode_yolo_v2_targets", "anchors", "grid_shape")(
        jnp.asarray(boxes[:, i:i + 1]), jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool),
        anchors=anchors, grid_shape=(1, 1))
    assert np.asarray(t["has_obj"][0, 0, 0]).tolist() == [float(a == best) for a in range(3)], (
        (w, h), best)
    aw, ah = anchors[best]
    np.testing.assert_allclose(t["twh"][0, 0, 0, best], [np.log(w / aw), np.log(h / ah)],
                               rtol=1e-4, atol=1e-5)
    assert float(t["scale"][0, 0, 0, best]) == pytest.approx(2.0 - w * h, rel=1e-5)
  assert want == [0, 1, 2, 1, 0, 2, 0]  # every anchor chosen


def test_yolo_v2_head_starts_at_the_objectness_prior():
  """The prediction layer's bias: logit(obj_prior) on each anchor's objectness channel
  (index 4 of its 5 + C), zero elsewhere, so every cell starts at P(object) = obj_prior."""
  from cnn_jax.detection import yolo_v2

  class Identity(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return x
  anchors = ((0.2, 0.6), (0.6, 0.2))
  head = yolo_v2.YOLOv2Head(backbone=Identity(), anchors=anchors, num_classes=3, hidden=0,
                            obj_prior=0.05)
  variables = head.init(jax.random.key(0), jnp.zeros((1, 2, 2, 4)))
  bias = np.asarray(variables["params"]["pred"]["bias"]).reshape(2, 8)
  want = np.zeros((2, 8), np.float32)
  want[:, 4] = np.log(0.05 / 0.95)
  np.testing.assert_allclose(bias, want, rtol=1e-6, atol=1e-7)
  out = head.apply(variables, jnp.zeros((1, 2, 2, 4)))
  np.testing.assert_allclose(jax.nn.sigmoid(out["objectness"]), 0.05, rtol=1e-5)


def test_yolo_v2_head_layout_defaults_and_anchor_shapes():
  """The head's default layout: a 3x3 conv of 256 channels without bias (padding 1: the
  grid keeps its size), a 1x1 prediction conv of A * (5 + C); the outputs are slices of
  that prediction (xy through a sigmoid); the objectness prior defaults to 0.01; the
  backbone runs in the mode of the call (eval unless train=True) unless frozen. Anchor
  lists need at least one (w, h) pair."""
  from cnn_jax.detection import yolo_v2
  anchors = ((0.2, 0.6), (0.6, 0.2))
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 8))
  head = yolo_v2.YOLOv2Head(backbone=_Probe(), anchors=anchors, num_classes=3)
  variables = head.init(jax.random.key(1), x)
  params = variables["params"]
  assert params["conv"]["kernel"].shape == (3, 3, 8, 256) and "bias" not in params["conv"]
  assert params["pred"]["kernel"].shape == (1, 1, 256, 16)
  bias = np.asarray(params["pred"]["bias"]).reshape(2, 8)
  np.testing.assert_allclose(bias[:, 4], np.log(0.01 / 0.99), rtol=1e-6)
  out, inter = head.apply(variables, x, capture_intermediates=True)
  raw = np.asarray(inter["intermediates"]["pred"]["__call__"][0]).reshape(1, 4, 4, 2, 8)
  np.testing.assert_allclose(out["xy"], jax.nn.sigmoid(raw[..., :2]), rtol=1e-6)
  np.testing.assert_array_equal(out["twh"], raw[..., 2:4])
  np.testing.assert_array_equal(out["objectness"], raw[..., 4])
  np.testing.assert_array_equal(out["class_logits"], raw[..., 5:])
  # The backbone's mode (the probe negates in train mode), without the hidden layer.
  bare = yolo_v2.YOLOv2Head(backbone=_Probe(), anchors=anchors, num_classes=3, hidden=0)
  v = bare.init(jax.random.key(1), x)
  w, b = np.asarray(v["params"]["pred"]["kernel"])[0, 0], np.asarray(v["params"]["pred"]["bias"])
  for kwargs, sign in (({}, 1.0), ({"train": True}, -1.0)):
    got = bare.apply(v, x, **kwargs)["objectness"]
    np.testing.assert_allclose(got, ((sign * np.asarray(x)) @ w + b).reshape(1, 4, 4, 2, 8)[..., 4],
                               rtol=1e-4, atol=1e-5)
  frozen = bare.clone(frozen_backbone=True)
  np.testing.assert_allclose(frozen.apply(v, x, train=True)["objectness"],
                             bare.apply(v, x)["objectness"], rtol=1e-6)
  one = {"xy": jnp.full((1, 1, 1, 1, 2), 0.5), "twh": jnp.zeros((1, 1, 1, 1, 2))}
  np.testing.assert_allclose(yolo_v2.decode_boxes(one, ((0.5, 0.25),))[0, 0, 0, 0],
                             [0.25, 0.375, 0.75, 0.625], rtol=1e-6)
  for bad in ((), np.zeros((0, 2)), ((0.1, 0.2, 0.3),), (0.1, 0.2)):
    with pytest.raises(ValueError, match=r"anchors must be \(A, 2\)"):
      yolo_v2.decode_boxes(one, bad)


def test_yolo_v2_encode_edges_and_decode_clips():
  """A centre on the image's right / bottom edge goes to the last cell; a valid zero-width
  box gets a finite log-scale; decoding clips twh to TWH_CLIP = (-10, 4) and the flattened
  detections' corners to [0, 1]; score = sigmoid(objectness) * best class probability."""
  from cnn_jax.detection import yolo_v2
  boxes = jnp.array([[[0.9, 0.8, 1.1, 1.2], [0.2, 0.2, 0.2, 0.5]]])
  t = _yolo("encode_yolo_v2_targets", "anchors", "grid_shape")(
      boxes, jnp.array([[0, 1]], jnp.int32), jnp.array([[True, True]]), anchors=TALL_WIDE,
      grid_shape=(2, 4))
  assert float(t["has_obj"][0, 1, 3].sum()) == 1  # centre (1.0, 1.0): row 1, col 3
  np.testing.assert_allclose(t["xy"][0, 1, 3, 0], [1.0, 1.0], atol=1e-6)
  # The zero-width box (centre (0.2, 0.35): row 0, col 0) is the tall anchor's.
  assert float(t["has_obj"][0, 0, 0, 0]) == 1
  np.testing.assert_allclose(t["twh"][0, 0, 0, 0],
                             [np.log(1e-9 / 0.2), np.log(0.3 / 0.6)], rtol=1e-5)
  xy = jnp.full((1, 1, 2, 2, 2), 0.5)
  twh = jnp.array([[6.0, -12.0], [4.0, -10.0]]).reshape(1, 1, 1, 2, 2) * jnp.ones((1, 1, 2, 1, 1))
  pred = {"xy": xy, "twh": twh, "objectness": jnp.array([[[[0.0, 2.0], [0.0, 0.0]]]]),
          "class_logits": jnp.zeros((1, 1, 2, 2, 3)).at[0, 0, 0, 1].set(jnp.array([0.0, 1.0, 0.0]))}
  dec = np.asarray(_yolo("decode_boxes", "anchors")(pred, anchors=TALL_WIDE))
  w0, h0 = 0.2 * np.exp(4.0), 0.6 * np.exp(-10.0)   # clipped from 6 and -12
  np.testing.assert_allclose(dec[0, 0, 0, 0], [0.25 - w0 / 2, 0.5 - h0 / 2, 0.25 + w0 / 2,
                                               0.5 + h0 / 2], rtol=1e-5)
  # h0 = 2.7e-5 sits below float32's resolution at 0.5 in the corners: its own check
  # (e^-11 instead of e^-10 would be 2.7 times smaller).
  assert float(dec[0, 0, 0, 0, 3] - dec[0, 0, 0, 0, 1]) == pytest.approx(h0, rel=0.05)
  det = _yolo("decode_yolo_v2", "anchors")(pred, anchors=TALL_WIDE)
  np.testing.assert_allclose(det["boxes"][0, 0], [0.0, 0.5 - h0 / 2, 1.0, 0.5 + h0 / 2],
                             rtol=1e-5, atol=1e-7)
  # Slot 1 (cell 0, anchor 1): sigmoid(2) * softmax([0, 1, 0])[1], class 1.
  p1 = np.e / (np.e + 2)
  assert float(det["scores"][0, 1]) == pytest.approx(p1 / (1 + np.exp(-2.0)), rel=1e-5)
  assert int(det["classes"][0, 1]) == 1
  assert float(det["scores"][0, 0]) == pytest.approx(0.5 / 3, rel=1e-5)
  for bad in ((0.2, 0.6), ((0.2, 0.6, 0.1),), ()):
    with pytest.raises(ValueError, match="anchors must be"):
      yolo_v2.decode_boxes(pred, bad)


def test_yolo_v2_hidden_layer_is_leaky_relu_of_its_batch_norm():
  """The hidden layer: 3x3 conv, batch norm, leaky ReLU of slope 0.1 (darknet's), then the
  1x1 prediction conv; checked from the batch norm's output, so the slope shows on the
  negative half."""
  from cnn_jax.detection import yolo_v2
  x = jax.random.normal(jax.random.key(0), (1, 3, 3, 4))
  head = yolo_v2.YOLOv2Head(backbone=_Probe(), anchors=((0.3, 0.3),), num_classes=2, hidden=8)
  variables = head.init(jax.random.key(1), x)
  _, inter = head.apply(variables, x, capture_intermediates=True)
  bn = np.asarray(inter["intermediates"]["bn"]["__call__"][0])
  assert (bn < -0.1).sum() > 10
  raw = np.asarray(inter["intermediates"]["pred"]["__call__"][0])
  pred = variables["params"]["pred"]
  want = np.where(bn > 0, bn, 0.1 * bn) @ np.asarray(pred["kernel"])[0, 0] + np.asarray(pred["bias"])
  np.testing.assert_allclose(raw, want, rtol=1e-4, atol=1e-5)


def test_yolo_v2_off_image_centres_and_zero_height_boxes():
  """A box whose centre lies left of (above) the image goes to column (row) 0, not to the
  last one, its offset measured from that cell (negative); a valid zero-height box gets the
  finite log-scale log(1e-9 / anchor_h)."""
  boxes = jnp.array([[[-0.3, 0.2, 0.1, 0.4], [0.6, -0.3, 0.8, 0.1], [0.2, 0.7, 0.4, 0.7]]])
  t = _yolo("encode_yolo_v2_targets", "anchors", "grid_shape")(
      boxes, jnp.array([[0, 1, 2]], jnp.int32), jnp.ones((1, 3), bool), anchors=((0.3, 0.3),),
      grid_shape=(4, 4))
  has = np.asarray(t["has_obj"])[0, ..., 0]
  want = np.zeros((4, 4))
  want[1, 0] = want[0, 2] = want[2, 1] = 1  # centres (-0.1, 0.3), (0.7, -0.1), (0.3, 0.7)
  np.testing.assert_array_equal(has, want)
  np.testing.assert_allclose(t["xy"][0, 1, 0, 0], [-0.4, 0.2], atol=1e-6)
  np.testing.assert_allclose(t["xy"][0, 0, 2, 0], [0.8, -0.4], atol=1e-6)
  np.testing.assert_allclose(t["twh"][0, 2, 1, 0], [np.log(0.2 / 0.3), np.log(1e-9 / 0.3)],
                             rtol=1e-5)


def test_yolo_v2_no_object_term_ignores_only_overlaps_above_the_threshold():
  """ignore_iou is a strict bound: with ignore_iou = 0 an anchor whose box overlaps no
  ground truth (IoU exactly 0) still pays softplus(objectness) as a no-object."""
  gt = jnp.array([[[0.0, 0.0, 0.2, 0.2]]])          # centre (0.1, 0.1): cell 0 of a 1x2 grid
  t = _yolo("encode_yolo_v2_targets", "anchors", "grid_shape")(
      gt, jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool), anchors=((0.1, 0.1),),
      grid_shape=(1, 2))
  obj = jnp.array([[[[0.3], [1.2]]]])
  pred = {"xy": jnp.full((1, 1, 2, 1, 2), 0.5), "twh": jnp.zeros((1, 1, 2, 1, 2)),
          "objectness": obj, "class_logits": jnp.zeros((1, 1, 2, 1, 2))}
  # Cell 1's box [0.7, 0.45, 0.8, 0.55] does not touch the ground truth.
  _, m = _yolo("yolo_v2_loss", "anchors")(pred, t, gt, jnp.ones((1, 1), bool),
                                          anchors=((0.1, 0.1),), ignore_iou=0.0)
  assert float(m["noobj_loss"]) == pytest.approx(_softplus(1.2), rel=1e-5)


def test_yolo_v2_decode_keeps_the_batch_axis():
  """Two images, one anchor, a 1x3 grid: (2, 3) detections, image 1's in row 1."""
  xy = jnp.full((2, 1, 3, 1, 2), 0.5)
  twh = jnp.zeros((2, 1, 3, 1, 2)).at[1].set(-1.0)
  pred = {"xy": xy, "twh": twh, "objectness": jnp.zeros((2, 1, 3, 1)).at[1].set(2.0),
          "class_logits": jnp.zeros((2, 1, 3, 1, 2))}
  det = _yolo("decode_yolo_v2", "anchors")(pred, anchors=((0.3, 0.3),))
  assert det["boxes"].shape == (2, 3, 4) and det["scores"].shape == (2, 3)
  assert det["classes"].shape == (2, 3)
  w = 0.3 * np.exp(-1.0)
  np.testing.assert_allclose(det["boxes"][1, 2], [5 / 6 - w / 2, 0.5 - w / 2, 5 / 6 + w / 2,
                                                  0.5 + w / 2], rtol=1e-5)
  np.testing.assert_allclose(det["scores"][1], 0.5 / (1 + np.exp(-2.0)), rtol=1e-5)
  np.testing.assert_allclose(det["scores"][0], 0.25, rtol=1e-5)


# ------------------------------------------------------------------- mean AP
def _det(boxes, scores, classes):
  return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
          "classes": np.asarray(classes, int)}


def _gt(boxes, classes):
  return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "classes": np.asarray(classes, int)}


def test_pairwise_iou_by_hand_in_normalized_coordinates():
  """Detections are evaluated in normalized [0, 1] coordinates, where overlaps are
  smaller than 1; disjoint, touching and zero-area pairs are exactly 0 (not NaN)."""
  from cnn_jax.detection.mean_ap import pairwise_iou
  a = [[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2],
       [0, 0, 0.5, 0.5]]
  b = [[0.25, 0.25, 0.75, 0.75],  # 0.0625 / (0.25 + 0.25 - 0.0625) = 1/7
       [0.6, 0, 0.9, 0.5],        # disjoint in x only
       [0.5, 0, 1.0, 0.5],        # touching
       [0.2, 0.2, 0.2, 0.2],      # the same zero-area box
       [0.6, 0.6, 0.9, 0.9]]      # disjoint in both
  got = np.diagonal(pairwise_iou(np.array(a), np.array(b)))
  np.testing.assert_allclose(got, [1 / 7, 0, 0, 0, 0], rtol=1e-12, atol=0)
  assert pairwise_iou(np.array(a[:1]), np.array(b)).shape == (1, 5)


def test_mean_ap_class_range_and_classes_without_ground_truth():
  """Classes must be 0 .. num_classes - 1 (the message says so); a class without ground
  truth is NaN and the classes after it are still evaluated."""
  from cnn_jax.detection import mean_ap
  g = [_gt([[0, 0, 1, 1]], [1])]
  for bad in (2, -1):
    for fn in (mean_ap.voc_evaluate, mean_ap.coco_evaluate):
      with pytest.raises(ValueError) as e:
        fn([_det([[0, 0, 1, 1]], [0.9], [bad])], g, 2)
      assert str(e.value) == "image 0: a class outside 0..1"
  d = [_det([[0, 0, 1, 1], [0, 0, 1, 1]], [0.9, 0.8], [0, 1])]
  voc = mean_ap.voc_evaluate(d, g, 2)
  assert np.isnan(voc["ap"][0]) and voc["ap"][1] == 1.0 and voc["map"] == 1.0
  coco = mean_ap.coco_evaluate(d, g, 2)
  assert np.isnan(coco["ap"][0]) and coco["ap"][1] == pytest.approx(1.0)  # a mean of 101 ones
  assert coco["map"] == pytest.approx(1.0)


def test_coco_threshold_one_and_thresholds_from_arange():
  """COCOeval matches at IoU threshold t as IoU >= min(t, 1 - 1e-10): at t = 1 a box off
  by 1e-11 still matches. ap50 / ap75 find thresholds that arange left 1 ulp off."""
  from cnn_jax.detection import mean_ap
  g = [_gt([[0, 0, 1, 1]], [0])]
  d = [_det([[0, 0, 1, 1 - 1e-11]], [0.9], [0])]
  assert mean_ap.coco_evaluate(d, g, 1, iou_thresholds=[1.0])["ap"][0] == pytest.approx(1.0)
  d = [_det([[0, 0, 1, 1 - 1e-9]], [0.9], [0])]
  assert mean_ap.coco_evaluate(d, g, 1, iou_thresholds=[1.0])["ap"][0] == 0.0
  thresholds = np.arange(0.5, 0.96, 0.05)
  assert thresholds[5] != 0.75  # 0.7500000000000002
  # IoU 0.78: a hit at the thresholds 0.5 .. 0.75, not at 0.8 .. 0.95.
  d = [_det([[0, 0, 1, 0.78]], [0.9], [0])]
  out = mean_ap.coco_evaluate(d, g, 1, iou_thresholds=thresholds)
  assert out["ap50"][0] == out["ap75"][0] == out["map75"] == pytest.approx(1.0)
  np.testing.assert_allclose(out["ap_per_threshold"][:, 0], [1.0] * 6 + [0.0] * 4, atol=1e-15)


def test_coco_keeps_the_100_best_detections_per_image_and_class():
  """Two ground-truth boxes, 99 false positives scored above them, then the two exact
  hits: with the default max_detections=100 only the first hit counts, at precision
  1/100, for recall 0 .. 0.5 (51 of the 101 recall points). COCOeval agrees."""
  from cnn_jax.detection import mean_ap
  g = [_gt([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 0])]
  noise = [[100 + 3 * i, 50, 101 + 3 * i, 51] for i in range(99)]
  boxes = noise + [[0, 0, 10, 10], [20, 0, 30, 10]]
  scores = np.concatenate([np.linspace(0.99, 0.5, 99), [0.4, 0.3]])
  d = [_det(boxes, scores, np.zeros(101, int))]
  out = mean_ap.coco_evaluate(d, g, 1)
  np.testing.assert_allclose(out["ap_per_threshold"][:, 0], 51 * 0.01 / 101, rtol=1e-12)
  sys_path = __import__("sys").path
  sys_path.insert(0, __import__("os").path.dirname(__file__))
  from test_mean_ap import coco_per_class, run_cocoeval
  np.testing.assert_allclose(out["ap_per_threshold"], coco_per_class(run_cocoeval(d, g, 1)),
                             atol=1e-12)
  # One exact hit: COCOeval's precision is tp / (tp + fp + np.spacing(1)), so its AP is
  # 1 / (1 + 2.2e-16), one ulp under 1; ours is bitwise the same.
  one = [_det([[0, 0, 10, 10]], [0.9], [0])]
  ours = mean_ap.coco_evaluate(one, [_gt([[0, 0, 10, 10]], [0])], 1)
  ref = coco_per_class(run_cocoeval(one, [_gt([[0, 0, 10, 10]], [0])], 1))
  assert ours["ap"][0] == ref[:, 0].mean() == 1 / (1 + np.spacing(1)) < 1.0
  # With room for all 101, recall 1 is reached at precision 2/101.
  out = mean_ap.coco_evaluate(d, g, 1, max_detections=101)
  np.testing.assert_allclose(out["ap_per_threshold"][:, 0], 2 / 101, rtol=1e-12)
