"""Detection mean average precision: Pascal VOC and COCO, in plain numpy.

Evaluation runs on the host after the detector's boxes have been decoded and
suppressed, and its result must be comparable with published numbers, so this
module reproduces the two reference implementations rather than inventing a
third: the Pascal VOC devkit (`voc_eval` / `voc_ap` of py-faster-rcnn) and
pycocotools' `COCOeval` for bounding boxes (area range 'all', no crowd). The
tests check both against hand-worked scenes and COCOeval itself.

Inputs are one dict per image (the same images, in the same order, in both lists):

* detections:   {"boxes": (k, 4), "scores": (k,), "classes": (k,) int}
* ground truth: {"boxes": (m, 4), "classes": (m,) int, "difficult": (m,) bool}
  ("difficult" optional, default all False)

Boxes are corners (x0, y0, x1, y1) in any coordinates consistent between the two,
continuous (area = (x1 - x0) * (y1 - y0), no +1 pixel convention, as COCO).
Classes are 0 .. num_classes - 1. Classes without (non-difficult) ground truth
get AP NaN and are left out of the means, as both references do.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# COCOeval's own expressions, so the thresholds are bitwise the same.
COCO_IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
COCO_RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU (n, m) of corner boxes a (n, 4) and b (m, 4).

  Disjoint or touching boxes give exactly 0, and the union is summed in the order
  pycocotools' C code uses (area_a + area_b - inter), so on exactly representable
  coordinates both give the same bits and break ties the same way.
  """
  a = np.asarray(a, np.float64).reshape(-1, 4)[:, None, :]
  b = np.asarray(b, np.float64).reshape(-1, 4)[None, :, :]
  iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
  ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
  inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.)
  area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
  area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(inter > 0, inter / (area_a + area_b - inter), 0.)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
  """Average precision from a recall / precision curve, as the VOC devkit.

  All-point (VOC2010+): the area under the precision envelope (precision made
  non-increasing from the right) over the recall steps. use_07_metric: VOC2007's
  11-point mean of the best precision at recall >= t, t = 0, 0.1, ..., 1 (the t's
  from np.arange(0., 1.1, 0.1), as py-faster-rcnn, so 0.30000000000000004 etc.).
  """
  rec = np.asarray(recall, np.float64)
  prec = np.asarray(precision, np.float64)
  if use_07_metric:
    ap = 0.
    for t in np.arange(0., 1.1, 0.1):
      p = np.max(prec[rec >= t]) if np.any(rec >= t) else 0.
      ap += p / 11.
    return float(ap)
  mrec = np.concatenate(([0.], rec, [1.]))
  mpre = np.concatenate(([0.], prec, [0.]))
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]
  i = np.where(mrec[1:] != mrec[:-1])[0]
  return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _by_class(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int):
  """Per class, the images holding a detection or a ground truth of it, in image order.

  Both metrics match only within one image and one class, so everything below works
  on these (det boxes, det scores, gt boxes, gt difficult) groups.
  """
  if len(detections) != len(ground_truth):
    raise ValueError(f"{len(detections)} detection entries for {len(ground_truth)} images")
  groups: list[list[tuple]] = [[] for _ in range(num_classes)]
  for i, (det, gt) in enumerate(zip(detections, ground_truth)):
    d_boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
    d_scores = np.asarray(det["scores"], np.float64).reshape(-1)
    d_classes = np.asarray(det["classes"]).reshape(-1).astype(np.int64)
    g_boxes = np.asarray(gt["boxes"], np.float64).reshape(-1, 4)
    g_classes = np.asarray(gt["classes"]).reshape(-1).astype(np.int64)
    g_difficult = np.asarray(gt.get("difficult", np.zeros(len(g_classes), bool)), bool)
    g_difficult = g_difficult.reshape(-1)
    if not (len(d_boxes) == len(d_scores) == len(d_classes)):
      raise ValueError(f"image {i}: detections of different lengths")
    if not (len(g_boxes) == len(g_classes) == len(g_difficult)):
      raise ValueError(f"image {i}: ground truth of different lengths")
    both = np.concatenate([d_classes, g_classes])
    if np.any((both < 0) | (both >= num_classes)):
      raise ValueError(f"image {i}: a class outside 0..{num_classes - 1}")
    for c in np.unique(both):
      d, g = d_classes == c, g_classes == c
      groups[c].append((d_boxes[d], d_scores[d], g_boxes[g], g_difficult[g]))
  return groups


def voc_evaluate(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int,
                 iou_threshold: float = 0.5, use_07_metric: bool = False) -> dict:
  """Pascal VOC AP per class and its mean (see the module docstring for the inputs).

  Per class, detections of all images in descending score (stable) are each given
  the ground truth of their image and class that overlaps them most. Above the
  threshold (strictly, as the devkit's `ovmax > ovthresh`): a difficult one makes
  the detection neither TP nor FP, a free one makes it TP, an already taken one FP
  (VOC does not fall back to the next best box, unlike COCO). Below it: FP.

  Returns {"ap": (num_classes,) with NaN where a class has no non-difficult ground
  truth, "map": the mean over the others (NaN if none)}.
  """
  ap = np.full(num_classes, np.nan)
  for c, groups in enumerate(_by_class(detections, ground_truth, num_classes)):
    npos = sum(int(np.sum(~difficult)) for _, _, _, difficult in groups)
    if npos == 0:
      continue
    scores, tp, fp = [], [], []
    for d_boxes, d_scores, g_boxes, difficult in groups:
      # A detection's outcome depends only on higher-scored ones of its own image, so
      # match image by image in score order; the stable global sort below keeps
      # the relative order of each image's detections.
      order = np.argsort(-d_scores, kind="mergesort")
      ious = pairwise_iou(d_boxes[order], g_boxes)
      taken = np.zeros(len(g_boxes), bool)
      t, f = np.zeros(len(order)), np.zeros(len(order))
      for r in range(len(order)):
        if ious.shape[1] == 0:
          f[r] = 1
          continue
        j = int(np.argmax(ious[r]))
        if ious[r, j] > iou_threshold:
          if not difficult[j]:
            if not taken[j]:
              t[r], taken[j] = 1, True
            else:
              f[r] = 1
        else:
          f[r] = 1
      scores.append(d_scores[order])
      tp.append(t)
      fp.append(f)
    scores = np.concatenate(scores)
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(np.concatenate(tp)[order])
    fp = np.cumsum(np.concatenate(fp)[order])
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap[c] = voc_ap(rec, prec, use_07_metric)
  return {"ap": ap, "map": _nanmean(ap)}


def _coco_match(ious: np.ndarray, ignore: np.ndarray, thresholds: np.ndarray):
  """COCOeval.evaluateImg's greedy matching for one image and class.

  ious (D, G): detections in score order, ground truth with the ignored ones last.
  Each detection takes, among ground truth not yet matched at that threshold, the
  one of highest IoU >= t (ties: the later box, as COCOeval's `<` comparison),
  trying the regular boxes before the ignored ones. Returns (matched, ignored),
  both (T, D) bool.
  """
  num_d, num_g = ious.shape
  matched = np.zeros((len(thresholds), num_d), bool)
  ignored = np.zeros((len(thresholds), num_d), bool)
  if num_d == 0 or num_g == 0:
    return matched, ignored
  regular = ~ignore
  for ti, t in enumerate(thresholds):
    thr = min(t, 1 - 1e-10)
    taken = np.zeros(num_g, bool)
    for d in range(num_d):
      ok = (ious[d] >= thr) & ~taken
      for pool in (ok & regular, ok & ignore):
        if pool.any():
          cand = np.where(pool, ious[d], -np.inf)
          m = num_g - 1 - int(np.argmax(cand[::-1]))  # the last maximum
          taken[m], matched[ti, d], ignored[ti, d] = True, True, ignore[m]
          break
  return matched, ignored


def coco_evaluate(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int,
                  iou_thresholds: np.ndarray = COCO_IOU_THRESHOLDS,
                  max_detections: int = 100) -> dict:
  """COCO bbox AP per class, as pycocotools' COCOeval (area 'all', `max_detections`).

  Per image and class, the `max_detections` best-scored detections are matched
  greedily at each IoU threshold (see `_coco_match`); over all images the class's
  precision is made monotone and read at the 101 recall points 0, 0.01, ..., 1
  (0 beyond the reached recall), and AP is their mean. Difficult ground truth is
  treated as COCOeval's ignored boxes (crowd-free, as outside the area range): it
  adds no recall and a detection matched to it is neither TP nor FP.

  Returns "ap_per_threshold" (T, num_classes), "ap" (mean over thresholds),
  "ap50" / "ap75" (NaN if that threshold is not evaluated), and "map", "map50",
  "map75" over the classes with ground truth (COCOeval's -1 are NaN here).
  """
  thresholds = np.asarray(iou_thresholds, np.float64).reshape(-1)
  ap_t = np.full((len(thresholds), num_classes), np.nan)
  for c, groups in enumerate(_by_class(detections, ground_truth, num_classes)):
    npig = sum(int(np.sum(~difficult)) for _, _, _, difficult in groups)
    if npig == 0:
      continue
    scores, matched, ignored = [], [], []
    for d_boxes, d_scores, g_boxes, difficult in groups:
      order = np.argsort(-d_scores, kind="mergesort")[:max_detections]
      g_order = np.argsort(difficult, kind="mergesort")
      m, ig = _coco_match(pairwise_iou(d_boxes[order], g_boxes[g_order]),
                          difficult[g_order], thresholds)
      scores.append(d_scores[order])
      matched.append(m)
      ignored.append(ig)
    scores = np.concatenate(scores)
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate(matched, axis=1)[:, order]
    ignored = np.concatenate(ignored, axis=1)[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    nd = tp.shape[1]
    for ti in range(len(thresholds)):
      rc = tp[ti] / npig
      pr = tp[ti] / (fp[ti] + tp[ti] + np.spacing(1))
      pr = np.maximum.accumulate(pr[::-1])[::-1]
      inds = np.searchsorted(rc, COCO_RECALL_THRESHOLDS, side="left")
      q = np.where(inds < nd, pr[np.minimum(inds, nd - 1)], 0.) if nd else np.zeros(len(inds))
      ap_t[ti, c] = np.mean(q)
  ap = ap_t.mean(axis=0) if len(thresholds) else np.full(num_classes, np.nan)

  def at(t):
    hit = np.flatnonzero(np.isclose(thresholds, t, rtol=0, atol=1e-12))
    return ap_t[hit[0]] if len(hit) else np.full(num_classes, np.nan)

  ap50, ap75 = at(0.5), at(0.75)
  return {"ap_per_threshold": ap_t, "ap": ap, "ap50": ap50, "ap75": ap75,
          "map": _nanmean(ap), "map50": _nanmean(ap50), "map75": _nanmean(ap75)}


def evaluate_detections(detections: Sequence[dict], ground_truth: Sequence[dict],
                        num_classes: int,
                        class_names: Sequence[str] | None = None) -> dict[str, float]:
  """The summary the training loop logs, as plain floats.

  "mAP50": VOC all-point AP at IoU 0.5, "mAP50_07": its VOC2007 11-point variant,
  "mAP": COCO AP@[.5:.95], "mAP75": COCO AP at 0.75, and per class "AP50/<name>"
  (VOC all-point; name from class_names, else the index; NaN without ground truth).
  """
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
  voc = voc_evaluate(detections, ground_truth, num_classes)
  voc07 = voc_evaluate(detections, ground_truth, num_classes, use_07_metric=True)
  coco = coco_evaluate(detections, ground_truth, num_classes)
  out = {"mAP50": float(voc["map"]), "mAP50_07": float(voc07["map"]),
         "mAP": float(coco["map"]), "mAP75": float(coco["map75"])}
  for c in range(num_classes):
    name = class_names[c] if class_names is not None else str(c)
    out[f"AP50/{name}"] = float(voc["ap"][c])
  return out


def _nanmean(x: np.ndarray) -> float:
  """Mean over the non-NaN entries; NaN (without numpy's warning) when there are none."""
  x = np.asarray(x, np.float64)
  return float(np.mean(x[~np.isnan(x)])) if np.any(~np.isnan(x)) else float("nan")
