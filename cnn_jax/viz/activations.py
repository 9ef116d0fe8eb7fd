"""Feature maps of each convolution / pooling stage for one image.

The course shows low-, mid- and high-level features: edges and blobs after the first
convolution, parts further on. Here the outputs of every conv and pool module are
captured in one forward pass with flax's `capture_intermediates` (no model changes)
and drawn one row per stage, in the order the model calls them (`viz.stages`), under
the input itself. A conv's output is shown before its activation function (the module's
own output). Each map is min-max normalised on its own (grey, black = its minimum),
so a row shows where each channel responds, not how strongly channels compare;
`max_maps` channels per stage (the first ones).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from cnn_jax.trained_run import TrainedRun
from cnn_jax import viz

CELL_PX = 96


def feature_maps(model: Any, variables: Any, x: Any) -> list[tuple[viz.Stage, np.ndarray]]:
  """[(stage, its (H, W, C) output for the first image of x)] in call order."""
  order = viz.stages(model, variables, x)
  wanted = {s.path for s in order}

  def capture(module: Any, method_name: str) -> bool:
    return method_name == "__call__" and "/".join(module.path) in wanted

  _, state = model.apply(variables, x, train=False, capture_intermediates=capture,
                         mutable=["intermediates"])
  maps = []
  for s in order:
    node = state["intermediates"]
    for part in s.path.split("/"):
      node = node[part]
    maps.append((s, np.asarray(node["__call__"][0])[0]))
  return maps


def plot_activations(run: TrainedRun, image: np.ndarray, out: str, max_maps: int = 16,
                     overwrite: bool = False, title: Optional[str] = None) -> dict:
  """Write the feature maps of `image` (a stored-shape uint8 image, e.g. from
  `run.predictor.load_image(path)`) to `out`; returns {"path", "stages", "size"}."""
  if max_maps < 1:
    raise ValueError(f"max_maps must be at least 1, got {max_maps}")
  x = run.model_input(image)
  maps = feature_maps(run.model, run.variables, x)
  if not maps:
    raise ValueError(f"the model of {run.workdir} has no conv or pool modules to show")
  viz.check_out(out, overwrite)
  cols = min(max_maps, max(m.shape[-1] for _, m in maps))
  rows = 1 + len(maps)
  size = (CELL_PX * (cols + 1), CELL_PX * rows)  # one extra column for the row labels
  fig = viz.figure(*size)
  grid = fig.add_gridspec(rows, cols + 1, left=0.01, right=0.99, top=0.97, bottom=0.01,
                          wspace=0.08, hspace=0.35)
  label = fig.add_subplot(grid[0, 0])
  label.axis("off")
  label.text(0.5, 0.5, title or "input", ha="center", va="center", fontsize=8, wrap=True)
  viz.show_image(fig.add_subplot(grid[0, 1]), viz.minmax(np.asarray(x)[0]))
  for r, (stage, m) in enumerate(maps, start=1):
    label = fig.add_subplot(grid[r, 0])
    label.axis("off")
    label.text(0.5, 0.5, f"{stage.path}\n{stage.kind} {'x'.join(map(str, m.shape))}",
               ha="center", va="center", fontsize=7)
    for c in range(min(cols, m.shape[-1])):
      viz.show_image(fig.add_subplot(grid[r, c + 1]), viz.minmax(m[..., c]),
                     title=str(c) if r == 1 else None)
  viz.save(fig, out, overwrite)
  return {"path": out, "stages": [(s.path, s.kind, m.shape) for s, m in maps], "size": size}
