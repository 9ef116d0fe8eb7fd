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
  x = np.random.default_rng(0).normal(size=(2, 2, 3, 2)).astype(np.float32)
  model = Localizer(_Probe(), num_classes=3, box_format="xyxy", pooling=pooling, hidden=5)
  v, (logits, boxes) = _init_apply(model, x)
  f = x.astype(np.float64).mean(axis=(1, 2)) if pooling == "avg" else x.reshape(2, -1)
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
