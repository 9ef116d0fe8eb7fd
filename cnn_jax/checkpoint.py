"""Orbax checkpoints of the train state, its input position and its config.

Two `orbax.checkpoint.CheckpointManager`s per work directory:
  <workdir>/checkpoints  the latest `keep` steps, for resuming;
  <workdir>/best         the single best one by an eval metric, for inference.
Each step directory holds the state arrays ("state") and a JSON item ("meta") with the
config, epoch and metrics. Orbax commits a step atomically (it writes to a temporary
directory and renames it), so a crash never leaves a step that looks complete, and old
steps are deleted only after a newer one has been committed.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from cnn_jax.training.train_state import TrainState

STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")


def state_to_tree(state: TrainState) -> dict[str, Any]:
  """The arrays of a TrainState as a plain dict (typed RNG keys as raw key data)."""
  tree = {k: getattr(state, k) for k in STATE_FIELDS}
  tree["rng"] = jax.random.key_data(state.rng)
  return tree


def tree_to_state(template: TrainState, tree: dict[str, Any]) -> TrainState:
  tree = dict(tree)
  tree["rng"] = jax.random.wrap_key_data(tree["rng"])
  return template.replace(**tree)


def abstract_tree(state: TrainState, shardings: Any = None) -> Any:
  """ShapeDtypeStructs (with target shardings) that tell orbax what to restore into."""
  tree = jax.eval_shape(lambda s: state_to_tree(s), state)
  if shardings is None:
    shardings = jax.tree_util.tree_map(lambda x: getattr(x, "sharding", None),
                                       state_to_tree(state))
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


class Checkpoints:
  """Latest-K and best-1 checkpoint managers for one work directory."""

  def __init__(self, workdir: str, keep: int = 3, best_metric: Optional[str] = "accuracy",
               best_mode: str = "max", async_save: bool = True):
    workdir = os.path.abspath(workdir)
    self.workdir = workdir
    item_names = ("state", "meta")
    self.latest = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"), item_names=item_names,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))
    self.best = None
    if best_metric:
      self.best = ocp.CheckpointManager(
          os.path.join(workdir, "best"), item_names=item_names,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, create=True, best_fn=lambda m: m[best_metric],
              best_mode=best_mode, enable_async_checkpointing=async_save))

  @staticmethod
  def _args(state: TrainState, meta: dict) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state_to_tree(state)),
                              meta=ocp.args.JsonSave(meta))

  def save(self, state: TrainState, meta: dict, force: bool = False) -> bool:
    """Save to the latest-K manager (asynchronously unless disabled)."""
    step = int(jax.device_get(state.step))
    return self.latest.save(step, args=self._args(state, meta), force=force)

  def save_best(self, state: TrainState, meta: dict, metrics: dict) -> bool:
    if self.best is None:
      return False
    step = int(jax.device_get(state.step))
    return self.best.save(step, args=self._args(state, meta), metrics=metrics, force=True)

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    if self.best is not None:
      self.best.close()


def restore(manager: ocp.CheckpointManager, template: TrainState, step: Optional[int] = None,
            shardings: Any = None) -> tuple[TrainState, dict]:
  """Restore step (default: latest) into the structure, dtypes and shardings of `template`."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_tree(template, shardings)),
      meta=ocp.args.JsonRestore()))
  return tree_to_state(template, restored["state"]), restored["meta"]


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """Only the JSON item of a step (config, epoch, metrics): cheap, and no template needed."""
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
