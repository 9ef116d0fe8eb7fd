"""tfds detection data sets (`voc/2007`, `voc/2012`, and others shaped alike) as sources.

    dataset.name = "voc/2007"; dataset.train_split = "train"; dataset.val_split = "validation"

Examples come out as the VOC folders' do (`data/voc.py`): (uint8 image, {"boxes" (k, 4)
normalized corners x0, y0, x1, y1, "labels" (k,), "difficult" (k,)}), so the same box-aware
pp, padding and mAP apply. tfds stores boxes as (ymin, xmin, ymax, xmax); they are
reordered here. Reading an annotation decodes its image too (tfds keeps them in one
record), so the annotations are read once, at start-up, and kept (`target`).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from cnn_jax.data import tfds_data


class TfdsDetectionSource:
  """A tfds `data_source` with an `objects` sequence of `bbox` / `label` (/ `is_difficult`)."""

  labels = None
  image_shape = None
  channels = 3

  def __init__(self, data: Any, class_names: Sequence[str], index: Optional[np.ndarray] = None):
    self.data, self.class_names = data, list(class_names)
    self.num_classes = len(self.class_names)
    self.index = np.arange(len(data)) if index is None else np.asarray(index, np.int64)
    self._targets: Optional[list[dict[str, np.ndarray]]] = None

  def __len__(self) -> int:
    return len(self.index)

  @staticmethod
  def _target(objects: dict) -> dict[str, np.ndarray]:
    """Boxes, labels, difficult flags; lengths aligned (the shortest wins, for mock data)."""
    k = min(len(objects["bbox"]), len(objects["label"]))
    difficult = np.asarray(objects.get("is_difficult", np.zeros(k, bool)))[:k].astype(bool)
    k = min(k, len(difficult))
    y0, x0, y1, x1 = np.asarray(objects["bbox"], np.float32)[:k].reshape(-1, 4).T
    boxes = np.stack([np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1),
                      np.maximum(y0, y1)], 1).clip(0, 1).astype(np.float32)
    return {"boxes": boxes, "labels": np.asarray(objects["label"])[:k].astype(np.int32),
            "difficult": difficult}

  def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    ex = self.data[int(self.index[i])]
    image = np.asarray(ex["image"], np.uint8)
    if image.ndim == 2 or image.shape[-1] == 1:
      image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
    return image, self._target(ex["objects"])

  def target(self, i: int) -> dict[str, np.ndarray]:
    """Example i's annotation. The first call reads every record once (tfds keeps an
    image and its boxes together) and keeps the small arrays: max_objects and the k-means
    anchors both ask for all of them at start-up."""
    if self._targets is None:
      self._targets = [self[j][1] for j in range(len(self))]
    return {k: v.copy() for k, v in self._targets[i].items()}

  @property
  def max_objects(self) -> int:
    return max([len(self.target(i)["labels"]) for i in range(len(self))] or [0])

  def subset(self, index: Sequence[int]) -> "TfdsDetectionSource":
    return TfdsDetectionSource(self.data, self.class_names, self.index[np.asarray(index, np.int64)])


def tfds_detection_source(ds: Any, split: str, *, max_examples: Optional[int] = None,
                          process_index: int = 0, process_count: int = 1) -> TfdsDetectionSource:
  """This process's share of a tfds detection split (`max_examples` is a global count)."""
  builder, _, data = tfds_data.process_data_source(ds, split, process_index, process_count)
  features = builder.info.features
  if "objects" not in features or "bbox" not in features["objects"].feature:
    raise ValueError(f"{ds.name!r} has no objects/bbox feature: it is not a detection data set")
  source = TfdsDetectionSource(data, features["objects"]["label"].names)
  if max_examples is not None:
    mine = tfds_data.examples_share(max_examples, process_index, process_count)
    source = source.subset(np.arange(min(mine, len(source))))
  return source
