"""Synthetic data sets: small, deterministic, generated in memory in a second.

`make_shapes` is a one-object localization task (a filled square, circle or triangle on
a noisy background, with its class and bounding box) for training the detection heads
on CPU without downloading anything.
"""
from __future__ import annotations

import numpy as np


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
