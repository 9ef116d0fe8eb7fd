"""Orbax checkpoints: save, restore, set corrupt steps aside, and load for inference.

Two `orbax.checkpoint.CheckpointManager`s per work directory:
  <workdir>/checkpoints  the latest `keep` steps, for resuming;
  <workdir>/best         the single best one by a validation metric, for inference.
Each step directory holds the state arrays ("state") and a JSON item ("meta") with the
config, epoch, data shape and metrics. Orbax commits a step atomically (it writes to a
temporary directory and renames it), so a crash never leaves a step that looks
complete, and old steps are deleted only after a newer one has been committed.

Paths are `etils.epath` paths, so a work directory may be local or remote (gs://...).
This is the only module that reads checkpoints: training resumes with
`restore_latest_good`, inference loads with `load_checkpoint`.
"""
from __future__ import annotations

import gc
import logging
import os
import time
from typing import Any, Optional, Union

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from ml_collections import ConfigDict

from cnn_jax import library_noise, parallel, unfinished_saves
from cnn_jax.training import resume
from cnn_jax.training.train_state import TrainState

log = logging.getLogger("cnn_jax")
PathLike = Union[str, epath.Path]
STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng")
SUBDIRS = {"latest": "checkpoints", "best": "best"}


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
  """Latest-K and best-1 checkpoint managers for one work directory.

  best_mode 'max' keeps the step with the largest `best_metric` (accuracy), 'min' the
  smallest (loss); see `config.best_mode`. No defaults for the rest: the config's
  keep_checkpoints, best_metric and async_checkpointing are the one place they are set.
  """

  def __init__(self, workdir: PathLike, *, keep: int, best_metric: Optional[str],
               async_save: bool, best_mode: str = "max"):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    self.workdir = epath.Path(workdir)
    library_noise.enter()  # orbax's second report of a fault we report (left in close())
    self._open = True
    item_names = ("state", "meta")
    # Each manager its own barrier names: orbax derives them from the step, and "latest"
    # and "best" save the same step at an epoch end, so two processes would otherwise
    # meet in one barrier twice ("Barrier ... is already ongoing") and hang.
    self.latest = ocp.CheckpointManager(
        self.workdir / SUBDIRS["latest"], item_names=item_names,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix="latest")))
    self.best = None
    if best_metric:
      self.best = ocp.CheckpointManager(
          self.workdir / SUBDIRS["best"], item_names=item_names,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, create=True, best_fn=lambda m: m[best_metric],
              best_mode=best_mode, enable_async_checkpointing=async_save,
              multiprocessing_options=ocp.options.MultiprocessingOptions(
                  barrier_sync_key_prefix="best")))

  @staticmethod
  def _args(state: TrainState, meta: dict) -> ocp.args.Composite:
    tree = parallel.global_view(state_to_tree(state))
    return ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))

  def save(self, state: TrainState, meta: dict, force: bool = False) -> bool:
    """Save to the latest-K manager (asynchronously unless disabled)."""
    step = int(jax.device_get(state.step))
    return self.latest.save(step, args=self._args(state, meta), force=force)

  def save_best(self, state: TrainState, meta: dict, metrics: dict) -> bool:
    if self.best is None:
      return False
    step = int(jax.device_get(state.step))
    if step in self.best.all_steps():  # a resumed run redoing a step whose best save is in
      return False                     # (the same state: the run is deterministic)
    return self.best.save(step, args=self._args(state, meta), metrics=metrics, force=True)

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def step_path(self, step: Optional[int]) -> str:
    return str(self.workdir / SUBDIRS["latest"] / str(step)) if step is not None else "none"

  def wait(self) -> Optional[Exception]:
    """Wait for the saves in flight, then remove what failed ones left half-written. An
    asynchronous save that failed (a full disk) raises here, long after its step: that
    error is returned, not raised; the previous checkpoint stays the last good one."""
    error = None
    for manager in (self.latest, self.best):
      if manager is None:
        continue
      try:
        manager.wait_until_finished()
      except Exception as e:  # noqa: BLE001 - reported by the caller
        error = error or e
    self._remove_unfinished()  # nothing is in flight now: any tmp folder is a failed save's
    return error

  def _remove_unfinished(self) -> list[str]:
    """Delete the temporary folders failed saves leave (`<step>.orbax-checkpoint-tmp*`):
    on a full disk each would hold the space the next save needs. Their writes still in
    flight end first (see `unfinished_saves`); never raises."""
    removed = unfinished_saves.remove([self.workdir / sub for sub in SUBDIRS.values()])
    if removed:  # part of the failed save the caller reports: not a second line
      log.debug("removed %d unfinished save(s): %s", len(removed), ", ".join(removed[:3]))
    return removed

  def close(self) -> None:
    """Close both managers. A failed save they re-raise here was reported by `wait` (the
    loop waits first): it must not end a run that survived it (it ended a full-disk run).
    They are dropped before the quiet scope ends, so what they hold is collected in it."""
    if not self._open:
      return
    self._open = False
    try:
      for manager in (self.latest, self.best):
        try:
          if manager is not None:
            manager.close()
        except Exception as e:  # noqa: BLE001 - reported by wait()
          log.debug("closing %s: %s", manager.directory, e)
      self.latest = self.best = None  # type: ignore[assignment]
    finally:
      library_noise.leave()


def restore(manager: ocp.CheckpointManager, template: TrainState, step: Optional[int] = None
            ) -> tuple[TrainState, dict]:
  """Restore step (default: latest) into the structure, dtypes and shardings of `template`."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  tree = state_to_tree(template)
  shardings = parallel.restore_shardings(tree)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_tree(template, shardings)),
      meta=ocp.args.JsonRestore()))
  return (tree_to_state(template, parallel.host_local_view(restored["state"], tree)),
          restored["meta"])


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """Only the JSON item of a step (config, epoch, metrics): cheap, and no template needed."""
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def config_conflicts(saved: dict, config: ConfigDict) -> list[str]:
  """Keys no resume may change (resume.SHAPE_KEYS) that differ between a saved run and `config`."""
  changes = resume.config_changes(saved, config)
  return [resume.describe_changes({k: changes[k]}) for k in resume.SHAPE_KEYS if k in changes]


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{"opt_state/0/mu/dense/kernel": shape}: one spelling for a saved tree's metadata (dicts
  and lists) and a live state (namedtuples), so that the two can be compared."""
  def name(k: Any) -> str:
    return str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
  return {"/".join(name(k) for k in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def saved_structure(ckpts: "Checkpoints", step: int) -> Any:
  """The array metadata (paths, shapes) of a step's state, read without its arrays. (The
  training managers' item_metadata gives None for an item not restored yet.)"""
  tree = ocp.StandardCheckpointHandler().metadata(
      ckpts.workdir / SUBDIRS["latest"] / str(step) / "state")
  if not jax.tree_util.tree_leaves(tree):
    raise ValueError(f"the state metadata of step {step} lists no arrays")
  return tree


def structure_mismatch(saved_tree: Any, template: TrainState) -> list[str]:
  """The arrays a saved state and `template` do not share (by path and shape), e.g. a
  changed weight_decay / grad_clip_norm / rmsprop momentum adds a link to the optimizer
  chain: a different structure, not a damaged checkpoint."""
  a, b = _leaf_shapes(saved_tree), _leaf_shapes(jax.eval_shape(state_to_tree, template))
  return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def restore_latest_good(ckpts: Checkpoints, template: TrainState, config: ConfigDict
                        ) -> Optional[TrainState]:
  """Restore the newest checkpoint that every process can load; set broken ones aside.

  The saved config is compared with `config` first, so a run with another model is
  refused (its checkpoints untouched) instead of being mistaken for a corrupt one.
  All processes of a multi-host job vote on each step (`parallel.agree`): a step one
  of them cannot read is set aside by all, and all restore the same older step.
  """
  for step in sorted(ckpts.latest.all_steps(), reverse=True):
    error: Optional[Exception] = None
    try:
      meta = read_meta(ckpts.latest, step)
    except Exception as e:  # noqa: BLE001 - missing / truncated meta: a broken step
      error = e
    if parallel.agree(error is None, min):
      conflicts = config_conflicts(meta["config"], config)
      if conflicts:
        ckpts.close()
        raise ValueError(
            f"{ckpts.workdir} holds a run with a different configuration ({'; '.join(conflicts)}). "
            f"Use a new --workdir, or start a new run from its weights with "
            f"--config.restore_from={ckpts.workdir}")
      # The saved structure first: a changed optimizer is no corruption (it used to be set
      # aside as corrupt-*, every step of a healthy run).
      mismatch: list[str] = []
      try:
        mismatch = structure_mismatch(saved_structure(ckpts, step), template)
        state = None if mismatch else restore(ckpts.latest, template, step)[0]
      except Exception as e:  # noqa: BLE001 - truncated / missing array files
        error = e
        gc.collect()  # what the failed read left reports now, inside the quiet scope
      if parallel.agree(error is None, min):
        if mismatch:
          ckpts.close()
          raise resume.structure_error(ckpts.step_path(step), ckpts.workdir, mismatch,
                                       meta["config"], config)
        return state
    _set_aside(ckpts, step, error)
  return None


def set_aside_steps(workdir: PathLike) -> list[str]:
  """The corrupt-<step>-<time> folders a restore moved aside in a run's checkpoints/."""
  path = epath.Path(workdir) / SUBDIRS["latest"]
  return sorted(p.name for p in path.glob("corrupt-*")) if path.exists() else []


def _set_aside(ckpts: Checkpoints, step: int, error: Optional[Exception]) -> None:
  """Rename a broken step to corrupt-<step>-<time> (kept for inspection), on every process."""
  path = ckpts.workdir / SUBDIRS["latest"] / str(step)
  aside = path.parent / f"corrupt-{step}-{int(time.time())}"
  why = (f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
         if error is not None else "another process could not read it")
  log.error("checkpoint %s is corrupt or incomplete (%s); moved to %s, trying an older one",
            path, why, aside)
  _barrier(f"cnn_jax set aside {step} (1)")  # every process is done reading before it moves
  if jax.process_index() == 0 and path.exists():
    path.rename(aside)
  _barrier(f"cnn_jax set aside {step} (2)")  # ... and nobody lists the directory before that
  ckpts.latest.reload()


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------- inference
def _read_only_manager(workdir: PathLike, which: str) -> ocp.CheckpointManager:
  text = os.fspath(workdir)  # orbax reads only absolute paths: `--workdir runs/a` is common
  path = epath.Path(text if "://" in text else os.path.abspath(text)) / SUBDIRS[which]
  if not path.is_dir():
    raise FileNotFoundError(f"no {which} checkpoints in {workdir} (looked for {path}); "
                            "train first with `cnn-jax train --workdir ...`")
  return ocp.CheckpointManager(
      path, item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(create=False, read_only=True))


def _read_step(workdir: PathLike, which: str, step: Optional[int]
               ) -> tuple[dict[str, Any], dict[str, Any], int]:
  mngr = _read_only_manager(workdir, which)
  try:  # best/ keeps one step (max_to_keep=1): its latest is its best
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"the {which} checkpoint directory of {workdir} holds no step")
    # Restore onto this process's first device whatever mesh the run was saved from, so a
    # checkpoint of 8 GPUs (or 2 hosts) loads on a laptop.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        mngr.item_metadata(step)["state"])
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  finally:
    mngr.close()
  return restored["state"], restored["meta"], step


def workdir_exists(workdir: PathLike) -> bool:
  """False for a local folder that is not there (a bucket path is not asked here)."""
  return "://" in os.fspath(workdir) or os.path.isdir(os.fspath(workdir))


def load_checkpoint(workdir: PathLike, which: str = "best", step: Optional[int] = None
                    ) -> tuple[dict[str, Any], dict[str, Any], int]:
  """(state tree, meta, step) of the best (or latest) checkpoint of a run.

  A run without a best checkpoint (no validation split) falls back to its latest one. An
  unreadable checkpoint is handled as training handles one: reported in one line, and the
  newest readable one is used instead (best/ -> the latest steps, newest first); only a
  run with nothing readable is an error. A `step` asked for explicitly is never replaced.
  """
  if which not in SUBDIRS:  # checked first: the fallbacks would take it for an unreadable step
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  if not workdir_exists(workdir):
    raise FileNotFoundError(f"{workdir} does not exist: give the --workdir of a trained run")
  with library_noise.quiet():  # the libraries' tracebacks for an unreadable step: ours is one line
    return _load_checkpoint(workdir, which, step)


def _load_checkpoint(workdir: PathLike, which: str, step: Optional[int]
                     ) -> tuple[dict[str, Any], dict[str, Any], int]:
  if which == "best" and not (epath.Path(workdir) / SUBDIRS["best"]).is_dir():
    log.info("%s has no best/ checkpoint (no validation split?): using the latest", workdir)
    which = "latest"
  try:
    return _read_step(workdir, which, step)
  except FileNotFoundError:
    if which == "latest" or step is not None:
      raise
    error: Exception = FileNotFoundError(f"{workdir}/best holds no step")
  except Exception as e:  # noqa: BLE001 - truncated / missing array files
    if step is not None:
      raise
    error = e
  where = epath.Path(workdir) / SUBDIRS[which]
  log.error("%s cannot be read (%s: %s); using the newest readable checkpoint of %s instead",
            where, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "",
            workdir)
  steps = sorted((int(p.name) for p in (epath.Path(workdir) / SUBDIRS["latest"]).glob("*")
                  if p.name.isdigit()), reverse=True)
  for candidate in steps:
    try:
      tree, meta, got = _read_step(workdir, "latest", candidate)
    except Exception as e:  # noqa: BLE001 - try the next older one
      log.error("%s/%d cannot be read either (%s)", epath.Path(workdir) / SUBDIRS["latest"],
                candidate, type(e).__name__)
      continue
    log.warning("using %s step %d (pass --which latest to choose it without this message)",
                SUBDIRS["latest"], got)
    return tree, meta, got
  raise FileNotFoundError(f"no readable checkpoint in {workdir} ({where}: {type(error).__name__}"
                          f"; checkpoints/: {len(steps)} step(s), none readable)")


def variables_from_tree(tree: dict[str, Any]) -> dict[str, Any]:
  """The model variables of a restored state tree: params and batch_stats, as numpy."""
  variables = {"params": tree["params"]}
  if tree.get("batch_stats"):
    variables["batch_stats"] = tree["batch_stats"]
  return jax.tree_util.tree_map(np.asarray, variables)


def load_variables(workdir: PathLike, which: str = "best") -> dict[str, Any]:
  """params and batch_stats only (the optimizer state is dropped)."""
  return variables_from_tree(load_checkpoint(workdir, which)[0])
