"""Convolution kernels as an image grid ("AlexNet: 64 filters, each 3 x 11 x 11").

The first convolution sees the image, so its kernels can be looked at as little images:
one tile per output channel, in colour (RGB) when the input has 3 channels, grey when it
has 1. A deeper layer's kernel mixes many feature maps, so it is shown as one grey tile
per (input, output) channel pair: rows are output channels, columns input channels,
capped at `max_tiles` tiles.

Each tile is min-max normalised on its own (its smallest weight black, its largest
white, a constant tile mid-grey; an RGB tile over its three channels together), so
tiles show shape, not relative magnitude. The PNG is the grid itself, pixel for pixel:
each weight an s x s block (s so that a tile is about 48 px), tiles 2 px apart on white.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image

from cnn_jax.trained_run import TrainedRun
from cnn_jax import viz

GAP = 2
TILE_PX = 48


def _tiles(kernel: np.ndarray, rgb: bool, max_tiles: int) -> tuple[list[np.ndarray], int, int]:
  """(tiles in [0, 1], rows, cols) of an HWIO kernel."""
  kh, kw, cin, cout = kernel.shape
  if rgb or cin == 1:
    n = min(cout, max_tiles)
    tiles = [viz.minmax(kernel[:, :, :, o] if rgb else kernel[:, :, 0, o]) for o in range(n)]
    rows, cols = viz.grid_shape(n, 8)
    return tiles, rows, cols
  cols = min(cin, 8, max_tiles)
  rows = min(cout, max(1, max_tiles // cols))
  tiles = [viz.minmax(kernel[:, :, i, o]) for o in range(rows) for i in range(cols)]
  return tiles, rows, cols


def grid_image(tiles: list[np.ndarray], rows: int, cols: int, scale: int) -> np.ndarray:
  """uint8 grid: tile k at row k // cols, column k % cols; each value an s x s block."""
  kh, kw = tiles[0].shape[:2]
  channels = tiles[0].shape[2:]
  grid = np.full((rows * (kh * scale + GAP) + GAP, cols * (kw * scale + GAP) + GAP, *channels),
                 255, np.uint8)
  for k, t in enumerate(tiles):
    r, c = divmod(k, cols)
    block = np.kron(np.round(t * 255), np.ones((scale, scale) + (1,) * len(channels)))
    y, x = GAP + r * (kh * scale + GAP), GAP + c * (kw * scale + GAP)
    grid[y:y + kh * scale, x:x + kw * scale] = block.astype(np.uint8)
  return grid


def plot_filters(run: TrainedRun, out: str, layer: Optional[str] = None, max_tiles: int = 64,
                 overwrite: bool = False) -> dict:
  """Write the kernels of `layer` (a conv's param path; default the first conv) to `out`.

  Returns {"path", "layer", "layout" ("rgb", "grey" or "pairs"), "rows", "cols",
  "scale", "size"}; tile k starts at pixel (GAP + r * (kh * scale + GAP), likewise x).
  """
  if max_tiles < 1:
    raise ValueError(f"max_tiles must be at least 1, got {max_tiles}")
  x = run.model_input(np.zeros(run.predictor.image_shape, np.uint8))
  convs = viz.conv_paths(run.model, run.variables, x)
  if not convs:
    raise ValueError(f"the model of {run.workdir} has no convolution layers")
  path = convs[0] if layer is None else viz.find_conv(run.model, run.variables, x, layer)
  kernel = np.asarray(viz.param_at(run.variables, path)["kernel"], np.float32)
  rgb = path == convs[0] and kernel.shape[2] == 3
  tiles, rows, cols = _tiles(kernel, rgb, max_tiles)
  scale = max(1, math.ceil(TILE_PX / max(kernel.shape[:2])))
  grid = grid_image(tiles, rows, cols, scale)
  viz.check_out(out, overwrite)
  Image.fromarray(grid, "RGB" if grid.ndim == 3 else "L").save(out, format="PNG")
  layout = "rgb" if rgb else ("grey" if kernel.shape[2] == 1 else "pairs")
  return {"path": out, "layer": path, "layout": layout, "rows": rows, "cols": cols,
          "scale": scale, "size": (grid.shape[1], grid.shape[0]), "kernel_shape": kernel.shape}


def first_conv_image(model: Any, variables: Any, input_shape: Sequence[int],
                     path: Optional[str] = None) -> tuple[Optional[np.ndarray], Optional[str]]:
  """(uint8 grid of the first convolution's kernels, its param path), without a figure:
  what the training loop sends to TensorBoard at each evaluation. (None, None) for a model
  with no convolution. Pass the returned `path` back in to skip finding it again."""
  if path is None:
    convs = viz.conv_paths(model, variables, jnp.zeros((1, *input_shape), jnp.float32))
    if not convs:
      return None, None
    path = convs[0]
  kernel = np.asarray(viz.param_at(variables, path)["kernel"], np.float32)
  tiles, rows, cols = _tiles(kernel, kernel.shape[2] == 3, 64)
  return grid_image(tiles, rows, cols, max(1, math.ceil(TILE_PX / max(kernel.shape[:2])))), path
