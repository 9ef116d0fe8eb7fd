"""Training curves from `metrics.jsonl`: train / validation loss and accuracy against step.

Each line of a run's metrics.jsonl is one JSON object with a "step" and metrics named
"<split>/<metric>" ("train/loss", "validation/accuracy", a detector's
"validation/mAP50", ...). Several runs are overlaid, each named by its folder, to compare
experiments; train is drawn solid, validation dashed with markers (one point per epoch).
A metric a run lacks is skipped for that run; a panel no run has is left out.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from cnn_jax import viz

# Panels, in order: (title, metric) — each shows train/<metric> and validation/<metric>.
PANELS = (("loss", "loss"), ("accuracy", "accuracy"), ("top-5 accuracy", "top5_accuracy"),
          ("mAP@0.5", "mAP50"))
SPLITS = (("train", "-", None), ("validation", "--", "o"))
PANEL_PX = (480, 360)


def read_metrics(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{"train/loss": (steps, values), ...} of one run; bad or partial lines are skipped
  (a run still being written may end in half a line)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no metrics.jsonl in {workdir}: not a work directory of "
                            "`cnn-jax train`, or a run that has not logged yet")
  series: dict[str, list[tuple[float, float]]] = {}
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if not isinstance(row, dict) or "step" not in row:
        continue
      for k, v in row.items():
        if "/" in k and isinstance(v, (int, float)) and np.isfinite(v):
          series.setdefault(k, []).append((float(row["step"]), float(v)))
  return {k: (np.array([s for s, _ in v]), np.array([x for _, x in v])) for k, v in series.items()}


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Each run's folder name; the whole path where two folders share a name."""
  base = [os.path.basename(os.path.normpath(w)) or w for w in workdirs]
  return [w if base.count(b) > 1 else b for w, b in zip(workdirs, base)]


def plot_curves(workdirs: Sequence[str], out: str, overwrite: bool = False) -> dict:
  """Write the curves of `workdirs` to `out`; returns {"path", "panels", "size"}."""
  if not workdirs:
    raise ValueError("give at least one work directory")
  runs = [(name, read_metrics(w)) for name, w in zip(run_names(workdirs), workdirs)]
  panels = [(title, metric) for title, metric in PANELS
            if any(f"{split}/{metric}" in m for _, m in runs for split, _, _ in SPLITS)]
  if not panels:
    raise ValueError(f"no train / validation loss, accuracy or mAP in the metrics.jsonl of "
                     f"{', '.join(workdirs)}")
  viz.check_out(out, overwrite)
  size = (PANEL_PX[0] * len(panels), PANEL_PX[1])
  fig = viz.figure(*size)
  for i, (title, metric) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    for r, (name, m) in enumerate(runs):
      for split, style, marker in SPLITS:
        key = f"{split}/{metric}"
        if key in m:
          steps, values = m[key]
          ax.plot(steps, values, style, marker=marker, markersize=3, color=f"C{r}",
                  label=f"{name} {split}" if len(runs) > 1 else split)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  viz.save(fig, out, overwrite)
  return {"path": out, "panels": [t for t, _ in panels], "size": size}
