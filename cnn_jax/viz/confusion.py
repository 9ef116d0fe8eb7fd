"""Confusion matrix of a run over a split, its most confused pairs, and misclassified examples.

The matrix comes from `viz.runs.predict_source` (the split read as `cnn-jax eval` reads
it, through evaluation's own forward pass, `eval_flip` included): rows are true classes,
columns predicted ones, matrix[t, p] counts examples of class t predicted as p, and the
matrix sums to the number of examples. This module only draws it.
"""
from __future__ import annotations


import numpy as np

from cnn_jax.trained_run import TrainedRun
from cnn_jax import viz


def most_confused(matrix: np.ndarray, k: int = 5) -> list[tuple[int, int, int]]:
  """The k largest off-diagonal counts as (true, predicted, count), largest first."""
  off = matrix.copy()
  np.fill_diagonal(off, 0)
  order = np.argsort(-off, axis=None, kind="stable")[:k]
  pairs = [(int(t), int(p), int(off[t, p])) for t, p in zip(*np.unravel_index(order, off.shape))]
  return [pair for pair in pairs if pair[2] > 0]


def plot_confusion(run: TrainedRun, result: dict, out: str, overwrite: bool = False) -> dict:
  """Matrix (left, counts written in when it has at most 20 classes) and a grid of
  misclassified examples labelled true -> predicted (right)."""
  viz.check_out(out, overwrite)
  matrix, errors = result["matrix"], result["errors"]
  names = [run.class_name(i) for i in range(matrix.shape[0])]
  size = (1200, 600)
  fig = viz.figure(*size)
  outer = fig.add_gridspec(1, 2, left=0.1, right=0.99, bottom=0.14, top=0.92, wspace=0.15)
  ax = fig.add_subplot(outer[0, 0])
  ax.imshow(matrix, cmap="Blues", interpolation="nearest")
  ticks = np.arange(len(names))
  ax.set_xticks(ticks, names, rotation=90 if len(names) > 6 else 0, fontsize=7)
  ax.set_yticks(ticks, names, fontsize=7)
  ax.set_xlabel("predicted", fontsize=9)
  ax.set_ylabel("true", fontsize=9)
  ax.set_title(f"{result['num_examples']} examples, accuracy {result['accuracy']:.3f}",
               fontsize=10)
  if len(names) <= 20:
    half = matrix.max() / 2
    for (t, p), v in np.ndenumerate(matrix):
      ax.text(p, t, str(v), ha="center", va="center", fontsize=7,
              color="white" if v > half else "black")
  rows, cols = viz.grid_shape(max(len(errors), 1), 4)
  inner = outer[0, 1].subgridspec(max(rows, 4), cols, hspace=0.4, wspace=0.1)
  if not errors:
    ax = fig.add_subplot(outer[0, 1])
    ax.axis("off")
    ax.text(0.5, 0.5, "no misclassified examples", ha="center", va="center")
  for k, (image, t, p) in enumerate(errors):
    viz.show_image(fig.add_subplot(inner[k // cols, k % cols]), image,
                   f"{names[t]} -> {names[p]}")
  viz.save(fig, out, overwrite)
  pairs = [(names[t], names[p], c) for t, p, c in most_confused(matrix)]
  return {"path": out, "size": size, "pairs": pairs, "names": names}
