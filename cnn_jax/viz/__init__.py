"""Pictures of what a network learned (`cnn-jax viz ...`), one module per picture.

curves (metrics.jsonl), filters (conv kernels), activations (feature maps), confusion
(matrix + misclassified examples), gradcam (class evidence), augment (a training batch),
kernels_sheet (the classic kernels on a photo, `cnn-jax kernels`), and samples (images with
their predictions, what training sends to TensorBoard).

Every picture is a PNG of a known size in pixels, drawn with matplotlib's Agg canvas
through the object-oriented `matplotlib.figure.Figure` (never pyplot): nothing is set
at import, no global backend is switched (a notebook's stays as it was), and no figure
is left open. matplotlib is imported only by the functions that draw. No file is
overwritten unless asked (`overwrite=True`, `--overwrite`).

This module holds what they share: the `Run` they draw (a model, its variables and how
image files become its input), the model's conv / pool stages in call order (found by
intercepting module calls, no model changes), and figure helpers.

The drawing modules are leaves: they import neither `training`, `inference` nor
`predict` (training draws TensorBoard pictures with them, `training/eval_pictures.py`).
Loading a run from a work directory and predicting a split is `viz/runs.py`, used by the
commands (`viz/commands.py`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np

from cnn_jax import layers
from cnn_jax.data import input_pipeline

DPI = 80  # figures are sized in pixels: inches = pixels / DPI


# ------------------------------------------------------------------------- figures
def check_out(path: str, overwrite: bool = False) -> str:
  """Refuse to replace an existing file silently; create the folder it goes in."""
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  return path


def figure(width_px: int, height_px: int) -> Any:
  """A matplotlib Figure of exactly width_px x height_px pixels when saved by `save`."""
  from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib (~1 s) only when drawing
  return Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)


def save(fig: Any, path: str, overwrite: bool = False) -> str:
  """Write `fig` as a PNG (Agg canvas, no tight bbox: the size stays the one asked for)."""
  check_out(path, overwrite)
  fig.savefig(path, dpi=DPI, format="png")
  return path


def pixels(fig: Any) -> np.ndarray:
  """The figure's uint8 RGB pixels (H, W, 3), drawn on a fresh Agg canvas: for pictures
  that go to TensorBoard rather than to a file."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - as in figure()
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def show_image(ax: Any, image: np.ndarray, title: Optional[str] = None, **kw: Any) -> None:
  """An (H, W), (H, W, 1) or (H, W, 3) image without axes; grey when single-channel."""
  img = np.asarray(image)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim == 2:
    kw.setdefault("cmap", "gray")
    if img.dtype == np.uint8:  # the stored pixel values, not stretched to their range
      kw.setdefault("vmin", 0)
      kw.setdefault("vmax", 255)
  ax.imshow(img, interpolation="nearest", **kw)
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=8)


def minmax(a: np.ndarray) -> np.ndarray:
  """Scaled to [0, 1] by its own min and max (a constant array becomes 0.5)."""
  a = np.asarray(a, np.float32)
  lo, hi = float(a.min()), float(a.max())
  return np.full_like(a, 0.5) if hi - lo < 1e-12 else (a - lo) / (hi - lo)


def denormalize(x: np.ndarray, config: Any) -> np.ndarray:
  """Undo the run's normalization ((x - mean) / std, `augment.preprocess_from_config`):
  [0, 1] images for display."""
  mean, std = input_pipeline.normalization(config.dataset.name)
  if config.dataset.get("mean") is not None:
    mean, std = tuple(config.dataset.mean), tuple(config.dataset.std)
  return np.clip(np.asarray(x) * np.asarray(std) + np.asarray(mean), 0, 1)


# -------------------------------------------------------------------------- stages
@dataclasses.dataclass(frozen=True)
class Stage:
  path: str                   # the module's path, as in the params ("conv1", "block/conv")
  kind: str                   # "conv" or "pool"
  shape: tuple[int, ...]      # its output's shape


def _kind(module: Any) -> Optional[str]:
  if isinstance(module, (layers.Conv2D, nn.Conv)):
    return "conv"
  if isinstance(module, (layers.MaxPool, layers.AvgPool, layers.AdaptiveAvgPool)):
    return "pool"
  return None


def stages(model: Any, variables: Any, x: jax.Array) -> list[Stage]:
  """The conv and pool modules of `model`, in the order its forward pass calls them.

  Found with `flax.linen.intercept_methods` under `jax.eval_shape` (nothing is computed,
  the model is unchanged); parameter dicts alone cannot tell the order (pytrees sort
  their keys). Pooling done by plain functions (`nn.max_pool`) is not a module and is
  not listed; a module called twice is listed once.
  """
  found: dict[str, Stage] = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    kind = _kind(context.module)
    if kind and context.method_name == "__call__" and getattr(out, "ndim", 0) == 4:
      path = "/".join(context.module.path)
      found.setdefault(path, Stage(path, kind, tuple(out.shape)))
    return out

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, a: model.apply(v, a, train=False), variables, x)
  return list(found.values())


def conv_paths(model: Any, variables: Any, x: jax.Array) -> list[str]:
  return [s.path for s in stages(model, variables, x) if s.kind == "conv"]


def find_conv(model: Any, variables: Any, x: jax.Array, layer: Optional[str]) -> str:
  """`layer` (a conv's param path, "/" or "." separated) checked, or the last conv."""
  convs = conv_paths(model, variables, x)
  if not convs:
    raise ValueError("the model has no convolution layers (Conv2D / nn.Conv modules)")
  if layer is None:
    return convs[-1]
  name = layer.replace(".", "/")
  if name not in convs:
    raise ValueError(f"unknown layer {layer!r}; conv layers: {', '.join(convs)}")
  return name


def param_at(variables: Any, path: str) -> dict:
  node = variables["params"]
  for part in path.split("/"):
    node = node[part]
  return node


def grid_shape(n: int, max_cols: int = 8) -> tuple[int, int]:
  cols = max(1, min(n, max_cols))
  return -(-n // cols), cols
