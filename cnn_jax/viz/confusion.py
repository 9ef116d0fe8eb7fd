"""Confusion matrix of a run over a split, its most confused pairs, and misclassified examples.

The split is read as `cnn-jax eval` reads it (`training.setup.setup(config,
for_training=False)`, then `input_pipeline.eval_batches` with the run's eval pp), so
every example counts once; the model sees the same preprocessing as in evaluation.
Rows are true classes, columns predicted ones: matrix[t, p] counts examples of class t
predicted as p, and the matrix sums to the number of examples.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from cnn_jax import viz


def split_source(run: "viz.Run", split: str, data_dir: Optional[str] = None) -> tuple[str, Any]:
  """(split spec, source) of "test", "validation" or a split spec such as 'train[:10%]'."""
  from cnn_jax.training import setup
  config = run.config.copy_and_resolve_references()
  ds = config.dataset
  spec = {"test": ds.get("test_split") or "test", "validation": ds.get("val_split")
          }.get(split, split)
  if not spec:
    raise ValueError(f"the run in {run.workdir} has no validation split; pass --split SPLIT")
  ds.test_split, ds.val_split = spec, ""
  ds.max_eval_examples = None
  if data_dir:
    ds.data_dir = data_dir
  return spec, setup.setup(config, for_training=False).test_data


def predict_source(run: "viz.Run", source: Any, batch_size: Optional[int] = None,
                   max_examples: int = 16) -> dict:
  """{"matrix", "num_examples", "accuracy", "errors": [(image, true, predicted)]}."""
  import jax
  import jax.numpy as jnp
  from cnn_jax.data import input_pipeline
  ds = run.config.dataset
  n = int(run.meta.get("num_classes") or 0) or len(run.predictor.class_names or [])
  batch_size = batch_size or int(run.config.eval_batch_size)

  @jax.jit
  def predict(variables: Any, images: jax.Array) -> jax.Array:
    x = run.predictor.preprocess(images, jax.random.key(0), False)
    return jnp.argmax(run.model.apply(variables, x, train=False), -1)

  matrix = None
  errors: list[tuple[np.ndarray, int, int]] = []
  for batch in input_pipeline.eval_batches(source, batch_size, pp=ds.get("pp_eval") or "",
                                           **input_pipeline.reader_options(ds)):
    pred = np.asarray(predict(run.variables, jnp.asarray(batch["image"])))
    real = batch["mask"] > 0
    true, pred, images = batch["label"][real], pred[real], batch["image"][real]
    if matrix is None:
      matrix = np.zeros((max(n, 1),) * 2, np.int64)
    k = max(matrix.shape[0], int(true.max(initial=0)) + 1, int(pred.max(initial=0)) + 1)
    if k > matrix.shape[0]:
      matrix = np.pad(matrix, [(0, k - matrix.shape[0])] * 2)
    np.add.at(matrix, (true, pred), 1)
    for i in np.flatnonzero(true != pred)[:max(0, max_examples - len(errors))]:
      errors.append((images[i], int(true[i]), int(pred[i])))
  if matrix is None:
    raise ValueError("the split holds no examples")
  total = int(matrix.sum())
  return {"matrix": matrix, "num_examples": total, "accuracy": float(np.trace(matrix)) / total,
          "errors": errors}


def most_confused(matrix: np.ndarray, k: int = 5) -> list[tuple[int, int, int]]:
  """The k largest off-diagonal counts as (true, predicted, count), largest first."""
  off = matrix.copy()
  np.fill_diagonal(off, 0)
  order = np.argsort(-off, axis=None, kind="stable")[:k]
  pairs = [(int(t), int(p), int(off[t, p])) for t, p in zip(*np.unravel_index(order, off.shape))]
  return [pair for pair in pairs if pair[2] > 0]


def plot_confusion(run: "viz.Run", result: dict, out: str, overwrite: bool = False) -> dict:
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
