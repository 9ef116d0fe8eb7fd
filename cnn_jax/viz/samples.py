"""A few images with their true class, predicted class and confidence, as one picture.

What the training loop sends to TensorBoard at each evaluation (`samples/predictions`,
`training/eval_pictures.py`): the first validation images as the eval pipeline gives them
(stored pixels after `dataset.pp_eval`, before the device-side normalisation), each over
two lines of text, "true NAME" and "pred NAME p", green when right and red when wrong.

Drawn with matplotlib's Agg canvas through `viz.figure` like every other picture, and
returned as pixels (no file): tile k is the CELL x (CELL + LABEL) block at row k // cols,
column k % cols, so the picture's size says how many samples it holds.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from cnn_jax import viz

CELL = 112       # px: each image is shown in a CELL x CELL square (nearest-neighbour)
LABEL = 28       # px of text under it: two lines at 8 pt
MAX_COLS = 8
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green, red
MAX_NAME = 14    # characters of a class name that fit in a tile
FRAME = 2        # px of the green / red frame around each image


def _name(i: int, names: Optional[Sequence[str]]) -> str:
  text = str(names[i]) if names and 0 <= i < len(names) else str(i)
  return text if len(text) <= MAX_NAME else text[:MAX_NAME - 1] + "…"


def size(n: int) -> tuple[int, int]:
  """(height, width) in pixels of the picture of `n` samples."""
  rows, cols = viz.grid_shape(n, MAX_COLS)
  return rows * (CELL + LABEL), cols * CELL


def _tile(image: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
  """(CELL, CELL, 3) uint8: `image` scaled nearest-neighbour (stored grey values as they
  are, not stretched), framed FRAME px in `color`."""
  img = np.asarray(image)
  img = img[..., None] if img.ndim == 2 else img
  h, w = img.shape[:2]
  tile = img[np.arange(CELL) * h // CELL][:, np.arange(CELL) * w // CELL]
  tile = np.repeat(tile, 3, -1) if tile.shape[-1] == 1 else tile[..., :3]
  tile = np.ascontiguousarray(tile, np.uint8)
  for edge in (np.s_[:FRAME], np.s_[-FRAME:]):
    tile[edge], tile[:, edge] = color, color
  return tile


def predictions_image(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                      class_names: Optional[Sequence[str]] = None) -> np.ndarray:
  """uint8 (H, W, 3) picture of `images` (N, h, w, C uint8) with their `labels` (N,) and the
  model's class probabilities `probs` (N, classes): predicted class = argmax.

  The tiles are numpy pixels placed with one `figimage` (8 image axes cost ~100 ms per
  picture in matplotlib; this ~10x less); only the text is drawn by matplotlib."""
  images, labels, probs = np.asarray(images), np.asarray(labels), np.asarray(probs, np.float32)
  n = len(images)
  if n == 0:
    raise ValueError("no sample images to draw")
  height, width = size(n)
  _, cols = viz.grid_shape(n, MAX_COLS)
  grid = np.full((height, width, 3), 255, np.uint8)
  fig = viz.figure(width, height)
  pred = probs.argmax(-1)
  for k in range(n):
    r, c = divmod(k, cols)
    y, x = r * (CELL + LABEL), c * CELL
    t, p = int(labels[k]), int(pred[k])
    color = RIGHT if t == p else WRONG
    grid[y:y + CELL, x:x + CELL] = _tile(images[k], _rgb(color))
    lines = f"true {_name(t, class_names)}\npred {_name(p, class_names)} {probs[k, p]:.2f}"
    fig.text((x + CELL / 2) / width, 1 - (y + CELL + 2) / height, lines, ha="center", va="top",
             fontsize=8, color=color, linespacing=1.1)
  fig.figimage(grid, 0, 0, origin="upper", zorder=0)
  return viz.pixels(fig)


def _rgb(color: str) -> tuple[int, int, int]:
  return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
