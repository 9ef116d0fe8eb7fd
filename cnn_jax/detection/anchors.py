"""Anchor boxes from the data: YOLO v2's dimension clusters (Redmon & Farhadi 2017, 2.).

YOLO v2 picks its anchor shapes by k-means over the training boxes' (w, h), with the
distance d(box, centroid) = 1 - IoU(box, centroid) of the two boxes placed at the same
centre. Euclidean k-means on (w, h) would let large boxes dominate the error; the IoU
distance is scale-free, and it is exactly what matching a box to an anchor rewards.
`mean_iou` is the paper's Table 1 "Avg IoU" (5 clusters: 61.0 on VOC).

Plain numpy: this runs once over a data set's boxes, before training.
"""
from __future__ import annotations

import numpy as np


def wh_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of boxes (..., 2) = (w, h) placed at the same centre, broadcast over `...`.

  inter = min(w1, w2) * min(h1, h2), union = w1*h1 + w2*h2 - inter.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  inter = np.minimum(a[..., 0], b[..., 0]) * np.minimum(a[..., 1], b[..., 1])
  return inter / (a[..., 0] * a[..., 1] + b[..., 0] * b[..., 1] - inter)


def _check_wh(wh: np.ndarray) -> np.ndarray:
  wh = np.asarray(wh, np.float64)
  if wh.ndim != 2 or wh.shape[1] != 2:
    raise ValueError(f"wh must be (n, 2) box widths and heights, got shape {wh.shape}")
  if not np.all(np.isfinite(wh)) or np.any(wh <= 0):
    raise ValueError("box widths and heights must be finite and positive "
                     f"(smallest: {wh.min(initial=np.inf)}); drop degenerate boxes first")
  return wh


def _init_plus_plus(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """k-means++ seeding with the IoU distance: each next centroid is drawn with
  probability proportional to d^2 to its nearest chosen one.

  Plain random seeding can put two centroids in one obvious cluster and leave another
  cluster without one, a local minimum Lloyd's iterations never leave; k-means++ makes
  that unlikely. A chosen box has d = 0, so the k centroids are k distinct boxes.
  """
  centroids = [wh[rng.integers(len(wh))]]
  for _ in range(1, k):
    d = 1.0 - wh_iou(wh[:, None, :], np.asarray(centroids)[None, :, :]).max(axis=1)
    p = np.square(np.maximum(d, 0.0))
    centroids.append(wh[rng.choice(len(wh), p=p / p.sum())])
  return np.asarray(centroids)


def kmeans_anchors(wh: np.ndarray, k: int, seed: int = 0, iters: int = 300) -> np.ndarray:
  """YOLO v2 dimension clusters: k anchor (w, h) pairs, (k, 2) sorted by area ascending.

  wh: (n, 2) box widths and heights (normalized to the image, or pixels: IoU does not
  care about units). Seeding is k-means++ with the IoU distance (np.random.default_rng
  (seed), so a seed gives the same anchors every time); each step assigns every box to
  the centroid it overlaps most, then moves each centroid to the *mean* (w, h) of its
  boxes, as YOLO v2 does (the median is more robust to outliers, but the mean is the
  paper's). It stops when no assignment changes, or after `iters` steps. A cluster
  left empty keeps its centroid.

  Raises ValueError for non-positive sizes or fewer distinct boxes than k (k centroids
  could not be distinct).
  """
  wh = _check_wh(wh)
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  distinct = len(np.unique(wh, axis=0))
  if distinct < k:
    raise ValueError(f"k-means needs at least k={k} distinct boxes, got {distinct}")
  rng = np.random.default_rng(seed)
  centroids = _init_plus_plus(wh, k, rng)
  assign = None
  for _ in range(iters):
    new = np.argmax(wh_iou(wh[:, None, :], centroids[None, :, :]), axis=1)
    if assign is not None and np.array_equal(new, assign):
      break
    assign = new
    for j in range(k):
      members = wh[assign == j]
      if len(members):
        centroids[j] = members.mean(axis=0)
  return centroids[np.argsort(centroids[:, 0] * centroids[:, 1], kind="stable")]


def mean_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
  """Average over the boxes of the best IoU with any anchor (YOLO v2 Table 1, "Avg IoU").

  A higher value means the anchors fit the data's shapes better, so the network starts
  its box regression closer to the answer.
  """
  wh = _check_wh(wh)
  anchors = _check_wh(anchors)
  return float(wh_iou(wh[:, None, :], anchors[None, :, :]).max(axis=1).mean())
