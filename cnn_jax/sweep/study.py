"""The study in its database, and the worker loop that runs each parameter set exactly once.

Every worker (a local process, a SLURM array task, a restart of the sweep) opens the same
study and runs `work` until the sweep is done. The bookkeeping lives in the database, so
workers need nothing else in common:

* a trial's worker records a heartbeat (Optuna's RDBStorage heartbeat) while it runs;
* a worker killed mid-trial (SIGKILL, OOM, a node lost) leaves the trial RUNNING. Any worker
  fails it -- at once when the trial's recorded process is on this host and gone, else once
  its heartbeat is older than the grace period -- and Optuna's
  RetryHeartbeatStaleTrialCallback queues a copy with the same parameters (WAITING), which
  the next `ask` takes first. The copy trains in the original's directory, so it resumes
  from its last checkpoint;
* a worker stopped by a signal (SLURM preemption, Ctrl-C) re-queues its trial itself;
* the sweep is N "slots": each trial that is not a retry takes one, a retry keeps its
  original's. A worker asks for a new trial only while slots are free, and a trial asked
  for in the same instant as another worker's last one is dropped (FAIL, user attr
  surplus) before it trains. A worker leaves when every slot has ended (COMPLETE, PRUNED or
  FAIL) and nothing is running or queued -- it waits on running trials, in case their
  worker dies and they come back as retries.

So the finished study holds each parameter set COMPLETE (or PRUNED / FAIL) exactly once;
the failed copies of re-queued trials stay in the database for the record.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import time
import warnings
from typing import Any, Callable, Optional

import optuna
from optuna.trial import TrialState

from cnn_jax.training import workdir as workdir_lib

log = logging.getLogger("cnn_jax")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback
MAX_RETRY = 3  # a trial that kills its worker every time (OOM) ends FAIL, not in a loop
DONE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def storage_url(url: Optional[str], workdir: str) -> str:
  """--storage as given (sqlite:///..., postgresql://...), default sqlite:///W/study.db."""
  if url:
    if "://" not in url:
      raise ValueError(f"--storage {url!r}: expected an SQLAlchemy URL such as "
                       "sqlite:////abs/path/study.db or postgresql://user:pw@host/db")
    return url
  os.makedirs(workdir, exist_ok=True)
  return "sqlite:///" + os.path.join(os.path.abspath(workdir), "study.db")


def open_storage(url: str, heartbeat_s: int = 10, grace_s: Optional[int] = None
                 ) -> optuna.storages.RDBStorage:
  """The study's database with heartbeats (a trial whose worker stopped beating for
  grace_s, default 3 beats, is re-queued with the same parameters)."""
  kwargs: dict[str, Any] = {}
  if url.startswith("sqlite"):  # workers write at once: wait for the file lock, don't fail
    kwargs = {"connect_args": {"timeout": 60}}
  import sqlalchemy.exc  # noqa: PLC0415 - optuna's own dependency
  for attempt in range(5):
    try:
      with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RETRY(max_retry=MAX_RETRY)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s,
            grace_period=grace_s or 3 * heartbeat_s,
            heartbeat_stale_trial_callback=retry)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as e:
      # Workers starting together (SLURM array tasks) each create the empty database's
      # tables and version row: all but one find them made under them ("table ... already
      # exists", "UNIQUE constraint failed: alembic_version").
      if attempt == 4 or not ("already exists" in str(e) or "UNIQUE" in str(e)):
        raise
      time.sleep(0.1 + 0.4 * random.random())
  raise AssertionError("unreachable")


def make_sampler(name: str, seed: Optional[int], grid: Optional[dict[str, list]] = None
                 ) -> optuna.samplers.BaseSampler:
  if name == "tpe":
    return optuna.samplers.TPESampler(seed=seed)
  if name == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  if name == "grid":
    return optuna.samplers.GridSampler(grid or {}, seed=seed)
  raise ValueError(f"--sampler {name!r}: expected one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
  """median: stop a trial whose epoch-e validation is worse than the median of the other
  trials at epoch e (after 2 finished trials); hyperband: successive halving over epochs."""
  if name == "median":
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
  if name == "hyperband":
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs))
  if name == "none":
    return optuna.pruners.NopPruner()
  raise ValueError(f"--pruner {name!r}: expected one of {', '.join(PRUNERS)}")


def is_retry(t: optuna.trial.FrozenTrial) -> bool:
  return original_number(t) != t.number


def original_number(t: optuna.trial.FrozenTrial) -> int:
  """The trial whose parameters (and work directory) this one carries on."""
  n = t.system_attrs.get("failed_trial")  # RETRY.retried_trial_number, without its warning
  return t.number if n is None else int(n)


def slots(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
  """The trials that each take a slot of the sweep: not retries, not dropped surplus."""
  return [t for t in trials if not is_retry(t) and not t.user_attrs.get("surplus")]


def requeue(study: optuna.Study, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
  """A FAILed trial's parameters back in the queue (the storage's RETRY callback)."""
  storage.heartbeat_stale_trial_callback(study, storage.get_trial(trial_id))


def fail_dead(study: optuna.Study, storage: optuna.storages.RDBStorage) -> list[int]:
  """Fail and re-queue the RUNNING trials whose worker is gone: on this host by its PID (at
  once), anywhere by its heartbeat (after the grace period). The trial numbers failed."""
  host, failed = socket.gethostname(), []
  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    worker = t.user_attrs.get("worker") or {}
    pid = int(worker.get("pid") or 0)
    if worker.get("host") == host and pid and not workdir_lib.process_alive(pid):
      try:  # FAIL first: of two workers that both see it, only one re-queues it
        if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
          requeue(study, storage, t._trial_id)
          failed.append(t.number)
      except optuna.exceptions.UpdateFinishedTrialError:
        pass
  running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.storages.fail_stale_trials(study)  # re-queues through the storage's callback
  if running:
    failed += [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
               if t.number in running]
  for n in failed:
    log.warning("trial %d: its worker is gone; re-queued with the same parameters", n)
  return failed


# Signals that arrived while a trial was finishing (outside the trainer's own handling):
# the trial is told its result, then the worker stops with 128 + the signal.
STOP_AFTER_TRIAL: list[int] = []


class Requeue(Exception):
  """The worker was told to stop (a signal) mid-trial: the trial goes back to the queue."""

  def __init__(self, cause: BaseException, exit_code: int):
    super().__init__(str(cause))
    self.exit_code = exit_code


RunTrial = Callable[[optuna.Trial, optuna.trial.FrozenTrial], float]


def work(study: optuna.Study, storage: optuna.storages.RDBStorage, n_trials: int,
         run_trial: RunTrial, poll_s: Optional[float] = None) -> dict[str, int]:
  """Run trials until the sweep's n_trials slots have ended; what this worker did.

  run_trial(trial, frozen) trains one trial and returns its objective; it raises
  optuna.TrialPruned when pruned and Requeue when the worker must stop. Any other
  exception fails that trial (a diverging learning rate is a result, not a crash) and the
  worker goes on.
  """
  poll_s = poll_s or max(1.0, storage.heartbeat_interval / 2)
  STOP_AFTER_TRIAL.clear()
  me = {"host": socket.gethostname(), "pid": os.getpid(),
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
  done = {"complete": 0, "pruned": 0, "failed": 0, "resumed": 0}
  waited = False
  while True:
    fail_dead(study, storage)
    trials = study.get_trials(deepcopy=False)
    queued = any(t.state == TrialState.WAITING for t in trials)
    if len(slots(trials)) >= n_trials and not queued:
      running = [t.number for t in trials if t.state == TrialState.RUNNING]
      if not running:
        return done
      if not waited:
        log.info("all %d trials started; waiting for running trials %s (to take them over if "
                 "their worker dies)", n_trials, running)
        waited = True
      time.sleep(poll_s)
      continue
    with warnings.catch_warnings():  # "heartbeat ... supposed to be used with optimize":
      warnings.simplefilter("ignore", UserWarning)  # this loop beats it (trial.Watcher)
      trial = study.ask()
    storage.record_heartbeat(trial._trial_id)  # from now on, a dead worker is seen
    trial.set_user_attr("worker", me)
    frozen = storage.get_trial(trial._trial_id)
    if not is_retry(frozen):
      ahead = [t for t in slots(study.get_trials(deepcopy=False)) if t.number < trial.number]
      if len(ahead) >= n_trials:  # another worker took the last slot in the same instant
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        continue
    else:
      done["resumed"] += 1
      log.info("trial %d carries on trial %d (params %s)", trial.number,
               original_number(frozen), frozen.params)
    try:
      value = run_trial(trial, frozen)
    except optuna.TrialPruned:
      study.tell(trial, state=TrialState.PRUNED)
      done["pruned"] += 1
    except Requeue:
      study.tell(trial, state=TrialState.FAIL)
      requeue(study, storage, trial._trial_id)
      log.warning("trial %d stopped by a signal: re-queued with the same parameters",
                  trial.number)
      raise
    except Exception as e:  # noqa: BLE001 - the trial's result; the sweep goes on
      log.error("trial %d failed: %s: %s", trial.number, type(e).__name__,
                str(e).splitlines()[0][:500] if str(e) else "")
      trial.set_user_attr("error", f"{type(e).__name__}: {str(e)[:500]}")
      study.tell(trial, state=TrialState.FAIL)
      done["failed"] += 1
    else:
      study.tell(trial, value)
      done["complete"] += 1
    if STOP_AFTER_TRIAL:
      raise Requeue(RuntimeError(f"signal {STOP_AFTER_TRIAL[0]}"), 128 + STOP_AFTER_TRIAL[0])
