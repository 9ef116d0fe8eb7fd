"""Synthetic data sets: small, deterministic, generated in memory in a second.

`make_shapes` is a one-object localization task (a filled square, circle or triangle on
a noisy background, with its class and bounding box) for training the detection heads
on CPU without downloading anything.
"""
from __future__ import annotations

import numpy as np

from cnn_jax.data.split import parse_split, slice_range


SHAPE_NAMES = ("square", "circle", "triangle")


def make_shapes(num: int, size: int = 32, seed: int = 0, min_frac: float = 0.3,
                max_frac: float = 0.7, noise: float = 0.15) -> dict[str, np.ndarray]:
  """One filled square, circle or triangle per image on a noisy background.

  Returns {'image': (num, size, size, 3) float32 in about [0, 1], 'label': (num,) int32
  (0 square, 1 circle, 2 triangle), 'box': (num, 4) float32 normalized (cx, cy, w, h)
  of the shape's bounding box}. Colours are random but always differ from the
  background by at least 0.3 in brightness, so shape is the only cue to the class.
  """
  rs = np.random.RandomState(seed)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  images = np.empty((num, size, size, 3), np.float32)
  labels = rs.randint(0, 3, num).astype(np.int32)
  boxes = np.empty((num, 4), np.float32)
  for i in range(num):
    s = rs.uniform(min_frac, max_frac) * size
    x0, y0 = rs.uniform(0, size - s), rs.uniform(0, size - s)
    u, v = (xx - x0) / s, (yy - y0) / s  # shape coordinates in [0, 1]
    if labels[i] == 0:
      m = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    elif labels[i] == 1:
      m = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    else:  # apex at the top centre, base along the bottom
      m = (v <= 1) & (np.abs(u - 0.5) <= 0.5 * v)
    bg = rs.uniform(0, 1, 3).astype(np.float32)
    fg = np.clip(bg + rs.choice([-1, 1]) * rs.uniform(0.3, 0.6, 3), 0, 1)
    if abs(fg.mean() - bg.mean()) < 0.25:  # guarantee contrast
      fg = np.where(bg.mean() > 0.5, bg - 0.5, bg + 0.5).clip(0, 1)
    img = np.where(m[..., None], fg, bg) + rs.normal(0, noise, (size, size, 3))
    images[i] = img
    boxes[i] = [(x0 + s / 2) / size, (y0 + s / 2) / size, s / size, s / size]
  return {"image": images, "label": labels, "box": boxes}


class ShapesSource:
  """`make_shapes` as a detection-style source: source[i] -> (uint8 image, {boxes (1, 4)
  normalized corners, labels (1,), difficult (1,)}), so the loop's localization task (and
  any box-aware host pp) reads it like a VOC folder with one object per photo."""

  class_names = list(SHAPE_NAMES)
  num_classes = len(SHAPE_NAMES)
  channels = 3
  max_objects = 1

  def __init__(self, num: int, size: int = 32, seed: int = 0):
    d = make_shapes(num, size, seed)
    self.images = np.round(np.clip(d["image"], 0, 1) * 255).astype(np.uint8)
    cx, cy, w, h = d["box"].T
    self.boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).astype(np.float32)
    self.labels = d["label"]

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.images.shape[1:])

  def target(self, i: int) -> dict[str, np.ndarray]:
    return {"boxes": self.boxes[i:i + 1].copy(), "labels": self.labels[i:i + 1].copy(),
            "difficult": np.zeros(1, bool)}

  def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return self.images[i], self.target(i)

  def subset(self, index: np.ndarray) -> "ShapesSource":
    new = object.__new__(ShapesSource)
    new.images, new.boxes, new.labels = (self.images[index], self.boxes[index],
                                         self.labels[index])
    return new


# dataset.name="shapes": split name -> (examples, seed); slice them tfds-style, "train[:90%]".
SHAPES_SPLITS = {"train": (4096, 0), "test": (512, 1)}


def shapes_source(split: str, size: int = 32) -> ShapesSource:
  """A split of the synthetic shapes data set (`SHAPES_SPLITS`), generated in a second."""
  name, (start, stop), spec = parse_split(split)
  if name not in SHAPES_SPLITS:
    raise ValueError(f"shapes has splits {sorted(SHAPES_SPLITS)}, not {spec!r}")
  num, seed = SHAPES_SPLITS[name]
  source = ShapesSource(num, size, seed)
  return source.subset(slice_range(start, stop, num))
