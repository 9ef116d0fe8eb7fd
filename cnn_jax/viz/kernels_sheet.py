"""`cnn-jax kernels photo.jpg --kernel sharpen --kernel edge --out OUTDIR`: the GIMP demo.

Each kernel of `cnn_jax.kernels` is applied to the photo (per channel, zero "same"
padding unless told otherwise, clipped to 0..255) and written as
OUTDIR/<photo>_<kernel>.png, plus one side-by-side sheet OUTDIR/<photo>_kernels.png:
the original and each filtered image under its kernel's name. No file is replaced
unless `overwrite` is set; the check is made for every file before any is written.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from cnn_jax import kernels, viz
from cnn_jax.data import images

CELL_PX = 320


def load_photo(path: str, grey: bool = False) -> np.ndarray:
  """uint8 (H, W, 3), or (H, W) with grey=True; any PIL mode is converted."""
  image = images.decode_image(path, 1 if grey else 3)  # the one decoder: unreadable files, bombs
  return image[..., 0] if grey else image


def kernel_sheet(photo: str, names: Sequence[str], out_dir: str, padding: str = "same",
                 grey: bool = False, overwrite: bool = False) -> dict:
  """Filter `photo` with each kernel in `names`; returns {"images": {name: path},
  "sheet": path, "size": sheet size in pixels}."""
  if not names:
    raise ValueError(f"give at least one --kernel; kernels: {', '.join(kernels.names())}")
  for name in names:
    kernels.get(name)  # unknown names fail before anything is read or written
  if len(set(names)) != len(names):
    raise ValueError(f"a kernel is named twice in {list(names)}")
  image = load_photo(photo, grey)
  stem = os.path.splitext(os.path.basename(photo))[0]
  paths = {n: os.path.join(out_dir, f"{stem}_{n}.png") for n in names}
  sheet = os.path.join(out_dir, f"{stem}_kernels.png")
  for p in [*paths.values(), sheet]:
    viz.check_out(p, overwrite)
  filtered = {n: kernels.apply(image, n, padding=padding) for n in names}
  for n, p in paths.items():
    Image.fromarray(filtered[n]).save(p, format="PNG")
  panels = [("original", image), *((f"{n}\n{kernels.describe(n)}", filtered[n]) for n in names)]
  rows, cols = viz.grid_shape(len(panels), 4)
  h, w = image.shape[:2]
  cell_h = int(CELL_PX * min(h / w, 2.0)) + 40
  size = (CELL_PX * cols, cell_h * rows)
  fig = viz.figure(*size)
  for k, (title, img) in enumerate(panels):
    viz.show_image(fig.add_subplot(rows, cols, k + 1), img, title)
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 36 / cell_h / rows,
                      wspace=0.04, hspace=36 / cell_h * 2)
  viz.save(fig, sheet, overwrite)
  return {"images": paths, "sheet": sheet, "size": size}
