"""Evaluation: every example of a split counted once, on every process alike.

Per epoch the loop evaluates the *validation* split and keeps the best checkpoint by it;
the *test* split is evaluated only at the end of a run — for the final state and for
the best-on-validation one — so no choice is ever made on test data.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import flax
import jax
from ml_collections import ConfigDict

from cnn_jax import checkpoint as ckpt_lib
from cnn_jax import config as config_lib
from cnn_jax import parallel
from cnn_jax.data import input_pipeline
from cnn_jax.training.setup import Setup
from cnn_jax.training.train_state import TrainState
from cnn_jax.weights import files as weight_files

log = logging.getLogger("cnn_jax")


def evaluate(s: Setup, state: TrainState, data: Any) -> dict[str, float]:
  """The task's metrics over every example of this process's share of `data`: loss /
  top-1 / top-5 (classification), mAP (detection: `detection.task.evaluate`), accuracy /
  IoU (localization)."""
  task = s.config.get("task", "classification")
  if task == "detection":
    from cnn_jax.detection import task as detection_task  # noqa: PLC0415
    return detection_task.evaluate(s, state, data)
  per_process = s.config.eval_batch_size // jax.process_count()
  totals: dict[str, float] = {}
  num_batches = parallel.agree(-(-len(data) // per_process), max)
  ds = s.config.dataset
  for batch in input_pipeline.eval_batches(data, per_process, num_batches, pp=ds.pp_eval,
                                           **s.batch_options()):
    sums = jax.device_get(s.compiled.eval_step(state, s.compiled.put_batch(batch)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  if not totals:  # the agreed batch count is 0: no process has an example
    raise ValueError("nothing to evaluate: the split has 0 examples; check config.dataset's "
                     "val_split / test_split (e.g. 'train[90%:]', 'test')")
  if task == "localization":
    from cnn_jax.detection import localization_task  # noqa: PLC0415
    return localization_task.metrics(totals)
  n = totals["count"]  # > 0: the sums are over the global batch, and some example is real
  return {"loss": totals["loss"] / n, "accuracy": totals["correct"] / n,
          "top5_accuracy": totals["top5_correct"] / n, "num_examples": totals["count"]}


def describe(metrics: dict[str, Any]) -> str:
  """One line for the log: the headline metrics of a classifier or a detector."""
  shown = [(k, metrics[k]) for k in ("loss", "accuracy", "top5_accuracy", "mean_iou", "iou50",
                                      "mAP50", "mAP50_07", "mAP", "mAP75") if k in metrics]
  text = " ".join(f"{k} {v:.4f}" for k, v in shown)
  return f"{text} ({int(metrics.get('num_examples', 0))} examples)"


def restore_weights(s: Setup, state: TrainState, variables: dict[str, Any],
                    source: str = "restore_from") -> TrainState:
  """Start a run from another run's weights (config.restore_from): all of them for a
  classifier; the backbone only for a detector or localizer (a classifier's head does not fit).

  Every variable must be there with its shape, or the error says which (it used to surface
  as a `pjit in_shardings` error at the first step).
  """
  if s.config.get("task") in config_lib.BOX_TASKS:
    from cnn_jax.detection import task as detection_task  # noqa: PLC0415
    return detection_task.restore_backbone(state, variables)
  from cnn_jax.weights import compare_variables  # noqa: PLC0415
  mine = {"params": state.params, "batch_stats": state.batch_stats}
  missing, unknown, reshaped = compare_variables(
      mine, {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}})
  head = _head_of(reshaped)
  if head and not (missing or unknown):  # another class count: only the head differs
    variables = _keep_own(variables, mine, head)
    log.info("restore_from %s: head %r keeps its fresh init (%s); every other variable "
             "restored", source, head, ", ".join(f"{k} {got} -> {want}" for k, got, want in reshaped))
    reshaped = []
  reshaped = [f"{k} {got} -> {want}" for k, got, want in reshaped]
  if missing or unknown or reshaped:
    details = "; ".join(f"{what}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                        for what, items in (("missing there", missing), ("not in this model", unknown),
                                            ("other shapes", reshaped)) if items)
    raise ValueError(f"config.restore_from={source}: its weights do not fit model "
                     f"{s.config.model!r} ({details}). Restore from a run of the same model; "
                     "for a new head use cnn_jax.transfer.replace_head")
  return with_variables(state, variables)


def _head_of(reshaped: list[tuple[str, tuple, tuple]]) -> Optional[str]:
  """The one top-level module all shape changes are in, when they are a classifier head's:
  its kernel's last axis (the class count) and bias change, nothing else."""
  modules = {k.split("/")[1] for k, _, _ in reshaped if k.startswith("params/")}
  if len(modules) != 1 or any(not k.startswith("params/") for k, _, _ in reshaped):
    return None
  if any(len(got) != len(want) or got[:-1] != want[:-1] for _, got, want in reshaped):
    return None  # not only the output width: a backbone that does not fit
  return modules.pop()


def _keep_own(variables: dict[str, Any], mine: dict[str, Any], head: str) -> dict[str, Any]:
  """`variables` with `head`'s params replaced by this model's own (fresh) ones."""
  params = dict(flax.core.unfreeze(variables["params"]))
  params[head] = mine["params"][head]
  return {**variables, "params": params}


def restore_source(config: ConfigDict) -> tuple[dict[str, Any], str]:
  """(variables, what they are) of config.restore_from: a run's checkpoint, or a torchvision
  .pth / Keras .h5 / .keras file converted for config.model."""
  source = config.restore_from
  if weight_files.is_weights_file(source):
    return weight_files.load_weights_file(source, config.model), f"{source} (weights file)"
  tree, meta, _ = ckpt_lib.load_checkpoint(source)
  return (ckpt_lib.variables_from_tree(tree),
          f"{source} (model {meta.get('config', {}).get('model')!r})")


def with_variables(state: TrainState, variables: dict[str, Any]) -> TrainState:
  """`state` with the params (and batch_stats, if any) of `variables`; the rest unchanged."""
  return state.replace(params=variables["params"],
                       batch_stats=variables.get("batch_stats", state.batch_stats))


def best_state(s: Setup, state: TrainState, ckpts: ckpt_lib.Checkpoints
               ) -> tuple[Optional[TrainState], Optional[int]]:
  """The best-on-validation checkpoint restored into `state`'s shardings, and its step."""
  if ckpts.best is None or ckpts.best.best_step() is None:
    return None, None
  step = ckpts.best.best_step()
  try:
    return ckpt_lib.restore(ckpts.best, state, step)[0], step
  except Exception as e:  # noqa: BLE001 - a damaged best/ must not cost the final report
    log.error("could not read the best checkpoint (step %s) for the test report: %s", step, e)
    return None, None


def test_report(s: Setup, state: TrainState, ckpts: ckpt_lib.Checkpoints) -> dict[str, Any]:
  """Test metrics of the final state and of the best-on-validation checkpoint."""
  if s.test_data is None:
    return {}
  report: dict[str, Any] = {"test": evaluate(s, state, s.test_data)}
  best, step = best_state(s, state, ckpts)
  if best is not None:
    report["test_best"] = {**evaluate(s, best, s.test_data), "step": step}
  return report
