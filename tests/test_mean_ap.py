"""Detection mAP (cnn_jax.detection.mean_ap): hand-worked VOC scenes, parity with COCOeval."""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from cnn_jax.detection import mean_ap


def det(boxes, scores, classes):
  return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
          "classes": np.asarray(classes, int)}


def gt(boxes, classes, difficult=None):
  out = {"boxes": np.asarray(boxes, float).reshape(-1, 4), "classes": np.asarray(classes, int)}
  if difficult is not None:
    out["difficult"] = np.asarray(difficult, bool)
  return out


# --- voc_ap ------------------------------------------------------------------------------

def test_voc_ap_hand_computed():
  rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 0.667])
  # All-point: mrec = [0, .5, .5, 1, 1], mpre = [0, 1, .5, .667, 0] -> envelope
  # [1, 1, .667, .667, 0]; recall steps 0->.5 at precision 1 and .5->1 at .667:
  # .5 * 1 + .5 * .667 = .8335.
  assert mean_ap.voc_ap(rec, prec) == pytest.approx(0.8335, abs=1e-12)
  # 11-point: t = 0 .. .5 (6 points) best precision 1, t = .6 .. 1 (5 points) .667:
  # (6 + 5 * .667) / 11.
  assert mean_ap.voc_ap(rec, prec, use_07_metric=True) == pytest.approx(
      (6 + 5 * 0.667) / 11, abs=1e-12)


def test_voc_ap_perfect_and_empty():
  for use_07 in (False, True):
    # (The 11-point sum of p / 11, as the devkit, lands on 1 + 2e-16.)
    assert mean_ap.voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), use_07) == pytest.approx(1.0)
    assert mean_ap.voc_ap(np.array([]), np.array([]), use_07) == 0.0
    # Only false positives: recall stays 0.
    assert mean_ap.voc_ap(np.zeros(3), np.zeros(3), use_07) == 0.0


# --- voc_evaluate on a hand-worked scene -----------------------------------------------

def hand_scene():
  """Two images, three classes; the TP / FP of each detection worked out below."""
  ground_truth = [
      # image A: class 0 g1, class 0 g2 difficult
      gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], [False, True]),
      # image B: class 0 g3, class 1 g4
      gt([[0, 0, 10, 10], [50, 50, 70, 70]], [0, 1]),
  ]
  detections = [
      det([[0, 0, 10, 10],     # d1 .9  c0: IoU 1 with g1                     -> TP
           [0, 0, 10, 9],      # d2 .8  c0: IoU .9 with g1, already taken     -> FP
           [20, 20, 30, 30],   # d3 .7  c0: best is difficult g2             -> ignored
           [50, 50, 70, 70]],  # d5 .95 c1: no class-1 ground truth in A      -> FP
          [0.9, 0.8, 0.7, 0.95], [0, 0, 0, 1]),
      det([[0, 0, 10, 5],      # d4 .6  c0: IoU 50/100 = .5, not > .5         -> FP
           [1, 0, 11, 10],     # d6 .5  c0: IoU 90/110 with g3                -> TP
           [52, 50, 72, 70],   # d7 .3  c1: IoU 360/440 with g4               -> TP
           [0, 0, 5, 5]],      # d8 .4  c2: class without ground truth        -> (NaN)
          [0.6, 0.5, 0.3, 0.4], [0, 0, 1, 2]),
  ]
  return detections, ground_truth


def test_voc_evaluate_hand_worked():
  detections, ground_truth = hand_scene()
  out = mean_ap.voc_evaluate(detections, ground_truth, num_classes=3)
  # Class 0, npos = 2 (g2 difficult). Score order d1 TP, d2 FP, d3 -, d4 FP, d6 TP:
  # cum tp 1 1 1 1 2, cum fp 0 1 1 2 2 -> recall .5 .5 .5 .5 1, precision 1 .5 .5 1/3 .5.
  # Envelope 1 at recall .5 and .5 at recall 1: AP = .5 * 1 + .5 * .5 = .75.
  # Class 1, npos = 1: d5 FP, d7 TP -> recall 0 1, precision 0 .5: AP = 1 * .5 = .5.
  # Class 2: no ground truth -> NaN, left out of the mean.
  np.testing.assert_allclose(out["ap"][:2], [0.75, 0.5], atol=1e-12)
  assert math.isnan(out["ap"][2])
  assert out["map"] == pytest.approx(0.625, abs=1e-12)

  out07 = mean_ap.voc_evaluate(detections, ground_truth, num_classes=3, use_07_metric=True)
  # Class 0: t = 0 .. .5 best precision 1 (6 points), t = .6 .. 1 best .5 (5 points):
  # 8.5 / 11. Class 1: precision .5 at recall 1 >= every t: .5.
  np.testing.assert_allclose(out07["ap"][:2], [8.5 / 11, 0.5], atol=1e-12)
  assert math.isnan(out07["ap"][2])
  assert out07["map"] == pytest.approx((8.5 / 11 + 0.5) / 2, abs=1e-12)

  # At IoU threshold .4, d4 (IoU .5, scored above d6) takes g3 and d6 becomes the duplicate.
  # Class 0: d1 TP, d2 FP, d3 -, d4 TP, d6 FP: recall .5 .5 .5 1 1, precision 1 .5 .5 2/3 .5
  # -> AP = .5 * 1 + .5 * 2/3.
  low = mean_ap.voc_evaluate(detections, ground_truth, num_classes=3, iou_threshold=0.4)
  assert low["ap"][0] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)


def test_voc_evaluate_no_detections_and_no_ground_truth():
  ground_truth = [gt([[0, 0, 1, 1]], [0]), gt(np.zeros((0, 4)), [])]
  detections = [det(np.zeros((0, 4)), [], []), det(np.zeros((0, 4)), [], [])]
  out = mean_ap.voc_evaluate(detections, ground_truth, num_classes=2)
  assert out["ap"][0] == 0.0 and math.isnan(out["ap"][1]) and out["map"] == 0.0
  out = mean_ap.voc_evaluate(detections, [gt(np.zeros((0, 4)), [])] * 2, num_classes=2)
  assert np.all(np.isnan(out["ap"])) and math.isnan(out["map"])


def test_bad_inputs():
  with pytest.raises(ValueError, match="class outside"):
    mean_ap.voc_evaluate([det([[0, 0, 1, 1]], [1.], [3])], [gt([[0, 0, 1, 1]], [0])], 2)
  with pytest.raises(ValueError, match="entries"):
    mean_ap.coco_evaluate([], [gt([[0, 0, 1, 1]], [0])], 2)


# --- random scenes: COCOeval parity and a literal devkit port -------------------------

def random_scene(seed, num_images=30, num_classes=4, difficult_fraction=0.15):
  """Ground truth for classes 0..num_classes-2 (the last class has detections only).

  Coordinates are multiples of 1/4 in a 300 x 200 image, so IoUs are computed exactly
  alike here and in pycocotools' C code, ties between boxes included.
  """
  rng = np.random.default_rng(seed)
  q = lambda x: np.round(np.asarray(x) * 4) / 4  # noqa: E731

  def random_boxes(n):
    x0, y0 = q(rng.uniform(0, 250, n)), q(rng.uniform(0, 160, n))
    w, h = q(rng.uniform(4, 50, n)), q(rng.uniform(4, 40, n))
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)

  ground_truth, detections = [], []
  for _ in range(num_images):
    m = int(rng.integers(0, 7))
    g_boxes = random_boxes(m)
    g_classes = rng.integers(0, num_classes - 1, m)
    ground_truth.append(gt(g_boxes, g_classes, rng.random(m) < difficult_fraction))
    # Jittered copies (some twice: duplicates), some with the wrong class, plus noise.
    copies = rng.integers(0, 3, m)
    src = np.repeat(np.arange(m), copies)
    wh = (g_boxes[src, 2:] - g_boxes[src, :2]) if m else np.zeros((0, 2))
    jit = q(rng.normal(0, 0.12, (len(src), 4)) * np.concatenate([wh, wh], axis=1))
    d_boxes = g_boxes[src] + jit
    d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)
    d_classes = np.where(rng.random(len(src)) < 0.1, rng.integers(0, num_classes, len(src)),
                         g_classes[src])
    n_noise = int(rng.integers(0, 5))
    d_boxes = np.concatenate([d_boxes, random_boxes(n_noise)])
    d_classes = np.concatenate([d_classes, rng.integers(0, num_classes, n_noise)])
    detections.append(det(d_boxes, rng.random(len(d_boxes)), d_classes))
  return detections, ground_truth


def run_cocoeval(detections, ground_truth, num_classes, max_dets=(1, 10, 100)):
  """COCOeval on the same data; difficult boxes get area -1, so COCO ignores them."""
  pytest.importorskip("pycocotools")
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  def xywh(b):
    return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

  anns = []
  for i, g in enumerate(ground_truth):
    difficult = g.get("difficult", np.zeros(len(g["classes"]), bool))
    for b, c, d in zip(g["boxes"], g["classes"], difficult):
      box = xywh(b)
      anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "bbox": box,
                   "area": -1.0 if d else box[2] * box[3], "iscrowd": 0})
  coco_gt = COCO()
  coco_gt.dataset = {"images": [{"id": i} for i in range(len(ground_truth))], "annotations": anns,
                     "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt.createIndex()
    results = [{"image_id": i, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
               for i, d in enumerate(detections)
               for b, s, c in zip(d["boxes"], d["scores"], d["classes"])]
    coco_dt = coco_gt.loadRes(results)
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.params.maxDets = list(max_dets)
    ev.evaluate()
    ev.accumulate()
    if max_dets[-1] == 100:
      ev.summarize()
  return ev


def coco_per_class(ev, max_det_index=2):
  """Per-class AP (T, K) from COCOeval's precision [T, R, K, A, M], -1 -> NaN."""
  p = ev.eval["precision"][:, :, :, 0, max_det_index]
  with np.errstate(invalid="ignore"):
    ap = np.where((p > -1).all(axis=1), p.mean(axis=1), np.nan)
  assert np.array_equal(np.isnan(ap), (p == -1).all(axis=1))  # whole classes only
  return ap


@pytest.mark.parametrize("seed,difficult_fraction", [(0, 0.0), (1, 0.15), (2, 0.3)])
def test_coco_evaluate_matches_cocoeval(seed, difficult_fraction):
  num_classes = 4
  detections, ground_truth = random_scene(seed, difficult_fraction=difficult_fraction)
  ev = run_cocoeval(detections, ground_truth, num_classes)
  ours = mean_ap.coco_evaluate(detections, ground_truth, num_classes)
  assert ours["map"] == pytest.approx(ev.stats[0], abs=1e-6)
  assert ours["map50"] == pytest.approx(ev.stats[1], abs=1e-6)
  assert ours["map75"] == pytest.approx(ev.stats[2], abs=1e-6)
  ref = coco_per_class(ev)
  np.testing.assert_allclose(ours["ap_per_threshold"], ref, atol=1e-9, equal_nan=True)
  np.testing.assert_allclose(ours["ap"], ref.mean(axis=0), atol=1e-9, equal_nan=True)
  assert math.isnan(ours["ap"][3])  # the class without ground truth
  assert 0.05 < ours["map"] < 0.95  # a scene that exercises both hits and misses


def test_coco_evaluate_ties_and_ignored_match_cocoeval():
  """COCOeval's matching details the random scenes rarely reach, checked against it."""
  ground_truth = [
      # R regular, D difficult (COCO: ignored).
      gt([[0, 0, 10, 10], [0, 0, 10, 9]], [0, 0], [False, True]),
      # G1, G2 side by side.
      gt([[0, 0, 10, 10], [5, 0, 15, 10]], [0, 0]),
  ]
  detections = [
      # a .9: IoU 1 with D, .9 with R: the regular R comes first -> TP (not ignored).
      # c .85: nothing -> FP. b .8: R taken, D at .9 -> ignored.
      det([[0, 0, 10, 9], [50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.85, 0.8], [0, 0, 0]),
      # a' .7: IoU 75/125 = .6 with both G1 and G2: the tie goes to the later G2, so
      # b' .6 (IoU 1 with G1) is TP too.
      det([[2.5, 0, 12.5, 10], [0, 0, 10, 10]], [0.7, 0.6], [0, 0]),
  ]
  ours = mean_ap.coco_evaluate(detections, ground_truth, 1)
  ev = run_cocoeval(detections, ground_truth, 1)
  np.testing.assert_allclose(ours["ap_per_threshold"], coco_per_class(ev), atol=1e-12)
  # At .5: a TP, c FP, b -, a' TP, b' TP with 3 boxes: recall 1/3 1/3 1/3 2/3 1, precision
  # 1 .5 .5 2/3 .75 -> envelope 1 up to recall 1/3 (34 of the 101 points), then .75.
  assert ours["ap50"][0] == pytest.approx((34 + 67 * 0.75) / 101, abs=1e-12)


def test_coco_evaluate_max_detections_matches_cocoeval():
  num_classes = 4
  detections, ground_truth = random_scene(3, difficult_fraction=0.1)
  ev = run_cocoeval(detections, ground_truth, num_classes, max_dets=(1, 2, 3))
  for index, max_det in enumerate((1, 2, 3)):
    ours = mean_ap.coco_evaluate(detections, ground_truth, num_classes, max_detections=max_det)
    np.testing.assert_allclose(ours["ap_per_threshold"], coco_per_class(ev, index), atol=1e-9,
                               equal_nan=True)


def test_coco_evaluate_perfect_and_greedy():
  # Two overlapping ground truths; detections equal to them: AP 1 at every threshold.
  ground_truth = [gt([[0, 0, 10, 10], [0, 0, 10, 8]], [0, 0])]
  perfect = [det([[0, 0, 10, 10], [0, 0, 10, 8]], [0.9, 0.8], [0, 0])]
  out = mean_ap.coco_evaluate(perfect, ground_truth, 1)
  np.testing.assert_allclose(out["ap_per_threshold"], 1.0)
  assert out["map"] == out["map50"] == out["map75"] == 1.0
  # A box 0,0,10,9 (IoU 90/100 = .9 with g1, 80/90 = .889 with g2) scored above an exact
  # copy of g1: COCO gives it g1 (highest IoU) and the copy falls back to g2 at IoU
  # 80/100 = .8, so at t <= .8 both are TP (AP 1), where VOC counts the copy a duplicate.
  dets = [det([[0, 0, 10, 9], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
  out = mean_ap.coco_evaluate(dets, ground_truth, 1, iou_thresholds=[0.5, 0.8])
  np.testing.assert_allclose(out["ap_per_threshold"][:, 0], 1.0)
  assert math.isnan(out["ap75"][0])  # 0.75 not among the thresholds
  # VOC: both detections' best box is g1 (IoU .9 and 1), the second is a duplicate (FP):
  # recall .5 .5, precision 1 .5 -> AP .5.
  assert mean_ap.voc_evaluate(dets, ground_truth, 1)["ap"][0] == pytest.approx(0.5)


def devkit_voc_eval(detections, ground_truth, cls, ovthresh=0.5, use_07_metric=False):
  """py-faster-rcnn's voc_eval, nearly verbatim (continuous boxes: no +1, stable sort)."""
  class_recs, npos = {}, 0
  for i, g in enumerate(ground_truth):
    keep = g["classes"] == cls
    difficult = g.get("difficult", np.zeros(len(g["classes"]), bool))[keep]
    class_recs[i] = {"bbox": g["boxes"][keep], "difficult": difficult,
                     "det": [False] * int(keep.sum())}
    npos += int(np.sum(~difficult))
  image_ids = [i for i, d in enumerate(detections) for c in d["classes"] if c == cls]
  confidence = np.concatenate([d["scores"][d["classes"] == cls] for d in detections])
  BB = np.concatenate([d["boxes"][d["classes"] == cls] for d in detections])
  sorted_ind = np.argsort(-confidence, kind="mergesort")
  BB = BB[sorted_ind, :]
  image_ids = [image_ids[x] for x in sorted_ind]
  nd = len(image_ids)
  tp, fp = np.zeros(nd), np.zeros(nd)
  for d in range(nd):
    R = class_recs[image_ids[d]]
    bb = BB[d, :].astype(float)
    ovmax = -np.inf
    BBGT = R["bbox"].astype(float)
    if BBGT.size > 0:
      ixmin = np.maximum(BBGT[:, 0], bb[0])
      iymin = np.maximum(BBGT[:, 1], bb[1])
      ixmax = np.minimum(BBGT[:, 2], bb[2])
      iymax = np.minimum(BBGT[:, 3], bb[3])
      iw = np.maximum(ixmax - ixmin, 0.)
      ih = np.maximum(iymax - iymin, 0.)
      inters = iw * ih
      uni = ((bb[2] - bb[0]) * (bb[3] - bb[1]) +
             (BBGT[:, 2] - BBGT[:, 0]) * (BBGT[:, 3] - BBGT[:, 1]) - inters)
      overlaps = inters / uni
      ovmax = np.max(overlaps)
      jmax = np.argmax(overlaps)
    if ovmax > ovthresh:
      if not R["difficult"][jmax]:
        if not R["det"][jmax]:
          tp[d] = 1.
          R["det"][jmax] = 1
        else:
          fp[d] = 1.
    else:
      fp[d] = 1.
  fp, tp = np.cumsum(fp), np.cumsum(tp)
  rec = tp / float(npos)
  prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  return devkit_voc_ap(rec, prec, use_07_metric)


def devkit_voc_ap(rec, prec, use_07_metric=False):
  """py-faster-rcnn's voc_ap, verbatim: the port computes AP itself, not with
  `mean_ap.voc_ap`, the function under test."""
  if use_07_metric:
    # 11 point metric
    ap = 0.
    for t in np.arange(0., 1.1, 0.1):
      if np.sum(rec >= t) == 0:
        p = 0
      else:
        p = np.max(prec[rec >= t])
      ap = ap + p / 11.
  else:
    # correct AP calculation
    # first append sentinel values at the end
    mrec = np.concatenate(([0.], rec, [1.]))
    mpre = np.concatenate(([0.], prec, [0.]))

    # compute the precision envelope
    for i in range(mpre.size - 1, 0, -1):
      mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])

    # to calculate area under PR curve, look for points
    # where X axis (recall) changes value
    i = np.where(mrec[1:] != mrec[:-1])[0]

    # and sum (\Delta recall) * prec
    ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
  return ap


@pytest.mark.parametrize("full_recall", [False, True])
@pytest.mark.parametrize("use_07_metric", [False, True])
def test_voc_evaluate_matches_devkit_port(use_07_metric, full_recall):
  detections, ground_truth = random_scene(4, difficult_fraction=0.2)
  if full_recall:  # every box also detected exactly, at a random score: recall reaches 1
    rng = np.random.default_rng(5)
    detections = [det(np.concatenate([d["boxes"], g["boxes"]]),
                      np.concatenate([d["scores"], rng.random(len(g["classes"]))]),
                      np.concatenate([d["classes"], g["classes"]]))
                  for d, g in zip(detections, ground_truth)]
  out = mean_ap.voc_evaluate(detections, ground_truth, 4, use_07_metric=use_07_metric)
  ref = [devkit_voc_eval(detections, ground_truth, c, use_07_metric=use_07_metric)
         for c in range(3)]
  np.testing.assert_allclose(out["ap"][:3], ref, atol=1e-12)
  assert math.isnan(out["ap"][3])


def test_evaluate_detections_summary():
  detections, ground_truth = hand_scene()
  out = mean_ap.evaluate_detections(detections, ground_truth, 3, ["cat", "dog", "bird"])
  assert set(out) == {"mAP50", "mAP50_07", "mAP", "mAP75", "AP50/cat", "AP50/dog", "AP50/bird"}
  assert all(type(v) is float for v in out.values())
  assert out["mAP50"] == pytest.approx(0.625)
  assert out["mAP50_07"] == pytest.approx((8.5 / 11 + 0.5) / 2)
  assert out["AP50/cat"] == pytest.approx(0.75) and math.isnan(out["AP50/bird"])
  coco = mean_ap.coco_evaluate(detections, ground_truth, 3)
  assert out["mAP"] == coco["map"] and out["mAP75"] == coco["map75"]
  assert "AP50/0" in mean_ap.evaluate_detections(detections, ground_truth, 3)
