"""Training curves from `metrics.jsonl`: train / validation loss and accuracy against step,
epoch or wall time.

Each line of a run's metrics.jsonl is one JSON object with a "step", a "time" and metrics
named "<split>/<metric>" ("train/loss", "validation/accuracy", a detector's
"validation/mAP50", ...). Several runs are overlaid to compare experiments, each named in
the legend by the config keys whose values differ between them (`run_dir`, as
`cnn-jax runs` shows them), or by its folder when none differ; train is drawn solid,
validation dashed with markers (one point per epoch). A metric a run lacks is skipped for
that run; a panel no run has is left out. x = "epoch" is step / steps per epoch (from
what the run wrote: `run_dir.Run.steps_per_epoch`); x = "time" is the run's wall time at each
line, its starts summed as `cnn-jax runs` sums them (a resumed run's pause is not drawn).
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from cnn_jax import run_dir
from cnn_jax import viz

# Panels, in order: (title, metric) — each shows train/<metric> and validation/<metric>.
PANELS = (("loss", "loss"), ("accuracy", "accuracy"), ("top-5 accuracy", "top5_accuracy"),
          ("mAP@0.5", "mAP50"))
SPLITS = (("train", "-", None), ("validation", "--", "o"))
PANEL_PX = (480, 360)
X_AXES = ("step", "epoch", "time")


def _read(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """{"train/loss": (steps, times, values), ...} of one run; bad or partial lines are
  skipped (a run still being written may end in half a line)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no metrics.jsonl in {workdir}: not a work directory of "
                            "`cnn-jax train`, or a run that has not logged yet")
  series: dict[str, list[tuple[float, float, float]]] = {}
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
        continue
      when = row.get("time")
      when = float(when) if isinstance(when, (int, float)) else np.nan
      for k, v in row.items():
        if "/" in k and isinstance(v, (int, float)) and np.isfinite(v):
          series.setdefault(k, []).append((float(row["step"]), when, float(v)))
  return {k: tuple(np.array(c) for c in zip(*v)) for k, v in series.items()}


def read_metrics(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{"train/loss": (steps, values), ...} of one run (see _read)."""
  return {k: (steps, values) for k, (steps, _, values) in _read(workdir).items()}


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Each run's folder name; the whole path where two folders share a name."""
  base = [os.path.basename(os.path.normpath(w)) or w for w in workdirs]
  return [w if base.count(b) > 1 else b for w, b in zip(workdirs, base)]


def _x_values(run: run_dir.Run, x: str, steps: np.ndarray, times: np.ndarray) -> np.ndarray:
  """The x of each line (its step and time) of one run."""
  if x == "step":
    return steps
  if x == "epoch":
    spe = run.steps_per_epoch()
    if not spe:
      raise ValueError(f"cannot tell the epochs of {run.path} (no results.json, validation line "
                       "or best/ checkpoint to count the steps of an epoch by): use --x step")
    return steps / spe
  return np.array([run.elapsed(t) for t in times])


def _labels(workdirs: Sequence[str], loaded: list[run_dir.Run]) -> list[str]:
  """Each run's differing config keys ("optimizer.learning_rate=0.01, seed=1"), else its
  folder name (no config differs, or a run has none)."""
  keys = run_dir.differing_keys([r.config for r in loaded])
  if not keys or not all(r.config for r in loaded):
    return run_names(workdirs)
  fmt = lambda v: f"{v:g}" if isinstance(v, float) else json.dumps(v) if not isinstance(  # noqa: E731
      v, str) else v
  return [", ".join(f"{k}={fmt(r.config.get(k))}" for k in keys if k in r.config)
          for r in loaded]


def draw_curves(workdirs: Sequence[str], x: str = "step") -> tuple[Any, list[str]]:
  """(matplotlib Figure, panel titles) of the curves of `workdirs` against x."""
  if not workdirs:
    raise ValueError("give at least one work directory")
  if x not in X_AXES:
    raise ValueError(f"--x {x!r}: expected one of {', '.join(X_AXES)}")
  metrics = [_read(w) for w in workdirs]
  loaded = [run_dir.Run(w) for w in workdirs]
  runs = [(name, {k: (_x_values(run, x, steps, times), values)
                  for k, (steps, times, values) in m.items()})
          for name, run, m in zip(_labels(workdirs, loaded), loaded, metrics)]
  panels = [(title, metric) for title, metric in PANELS
            if any(f"{split}/{metric}" in m for _, m in runs for split, _, _ in SPLITS)]
  if not panels:
    raise ValueError(f"no train / validation loss, accuracy or mAP in the metrics.jsonl of "
                     f"{', '.join(workdirs)}")
  scale, unit = 1.0, "s"
  if x == "time":
    longest = max((float(xs.max()) for _, m in runs for xs, _ in m.values() if len(xs)),
                  default=0.0)
    scale, unit = (3600.0, "h") if longest > 3 * 3600 else (60.0, "min") if longest > 600 \
        else (1.0, "s")
  size = (PANEL_PX[0] * len(panels), PANEL_PX[1])
  fig = viz.figure(*size)
  for i, (title, metric) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    for r, (name, m) in enumerate(runs):
      for split, style, marker in SPLITS:
        key = f"{split}/{metric}"
        if key in m:
          xs, values = m[key]
          ax.plot(np.asarray(xs) / scale, values, style, marker=marker, markersize=3,
                  color=f"C{r}", label=f"{name} {split}" if len(runs) > 1 else split)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel({"step": "step", "epoch": "epoch", "time": f"wall time ({unit})"}[x],
                  fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig, [t for t, _ in panels]


def plot_curves(workdirs: Sequence[str], out: str, overwrite: bool = False,
                x: str = "step") -> dict:
  """Write the curves of `workdirs` against x (step, epoch or time) to `out`; returns
  {"path", "panels", "size"}."""
  fig, panels = draw_curves(workdirs, x)
  viz.save(fig, out, overwrite)
  return {"path": out, "panels": panels, "size": (PANEL_PX[0] * len(panels), PANEL_PX[1])}
