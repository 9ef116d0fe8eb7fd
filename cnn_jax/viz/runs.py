"""What the `cnn-jax viz` commands draw from a run (`cnn_jax.load`): a split's predictions.

Kept apart from the drawing modules (`cnn_jax.viz` and its picture modules, which import
neither `training`, `inference` nor `predict`): `training/eval_pictures.py` draws with
them during training, so they must not lead back to the training code. Only the commands
(`viz/commands.py`) and notebooks load runs.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.data import input_pipeline
from cnn_jax.training import setup, steps
from cnn_jax.trained_run import TrainedRun


def split_source(run: TrainedRun, split: str, data_dir: Optional[str] = None) -> tuple[str, Any]:
  """(split spec, source) of "test", "validation" or a split spec such as 'train[:10%]'.

  The split is read as `cnn-jax eval` reads it (`setup.setup(config, for_training=False)`),
  so every example counts once."""
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


def predict_source(run: TrainedRun, source: Any, batch_size: Optional[int] = None,
                   max_examples: int = 16) -> dict:
  """{"matrix", "num_examples", "accuracy", "errors": [(image, true, predicted)]}.

  Rows are true classes, columns predicted ones. The model sees the eval host pipeline
  (`input_pipeline.eval_batches` with the run's pp_eval) and evaluation's own forward
  pass (`steps.eval_logits`: its preprocessing, matmul precision and `eval_flip`), so the
  accuracy is the one evaluation reports."""
  ds = run.config.dataset
  n = int(run.meta.get("num_classes") or 0) or len(run.predictor.class_names or [])
  batch_size = batch_size or int(run.config.eval_batch_size)
  p = run.predictor

  @jax.jit
  def predicted(variables: Any, images: jax.Array) -> jax.Array:
    return jnp.argmax(steps.eval_logits(run.model.apply, variables, images,
                                        preprocess=p.preprocess,
                                        matmul_precision=p.matmul_precision, flip=p.flip), -1)

  matrix = None
  errors: list[tuple[np.ndarray, int, int]] = []
  for batch in input_pipeline.eval_batches(source, batch_size, pp=ds.get("pp_eval") or "",
                                           **input_pipeline.reader_options(ds)):
    pred = np.asarray(predicted(run.variables, jnp.asarray(batch["image"])))
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
