"""One trial: an ordinary run of the trainer in W/trials/NNNN, watched for pruning.

The run is `trainer.train_and_evaluate(config, W/trials/NNNN)` itself -- locked, resumable,
with its own metrics.jsonl, checkpoints and results.json -- so everything that reads a run
directory (eval, viz, runs) reads a trial. NNNN is the number of the trial whose parameters
it trains: a re-queued copy of a killed trial trains in the same directory and so resumes
from its last checkpoint (or, if the run had finished, returns its stored results).

While the run trains (in the main thread, where its signal handlers live), a watcher thread
beats the trial's heartbeat and reports each new `validation/NAME` line of metrics.jsonl to
Optuna (step = the validation's index: epoch e with eval_every_epochs=1). When the pruner
says stop, it sends this process SIGUSR1: the trainer checkpoints and raises Preempted,
which becomes optuna.TrialPruned.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import threading
import time
from typing import Optional

import optuna

from cnn_jax.sweep import space as space_lib
from cnn_jax.sweep import study as study_lib
from cnn_jax.training import guards, run_status, trainer
from cnn_jax.training import workdir as workdir_lib

log = logging.getLogger("cnn_jax")


def trial_dir(workdir: str, number: int) -> str:
  return os.path.join(os.path.abspath(workdir), "trials", f"{number:04d}")


def validation_values(metrics_path: str, key: str) -> list[float]:
  """The run's `key` ("validation/accuracy") values in order, from its metrics.jsonl."""
  try:
    with open(metrics_path) as f:
      lines = f.readlines()
  except FileNotFoundError:
    return []
  values = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:  # a line being written
      continue
    if key in row:
      values.append(float(row[key]))
  return values


class Watcher(threading.Thread):
  """Heartbeat, per-epoch reports and the pruning decision while the trainer runs."""

  def __init__(self, trial: optuna.Trial, storage: optuna.storages.RDBStorage,
               metrics_path: str, key: Optional[str], last_step: int, poll_s: float = 0.5):
    super().__init__(daemon=True, name=f"sweep-trial-{trial.number}")
    self.trial, self.storage, self.path, self.key = trial, storage, metrics_path, key
    self.last_step, self.poll_s = last_step, poll_s
    self.reported, self.pruned = 0, False
    self._stop_event = threading.Event()

  def run(self) -> None:
    beat = 0.0
    while not self._stop_event.wait(self.poll_s):
      try:
        if time.monotonic() - beat >= self.storage.heartbeat_interval:
          self.storage.record_heartbeat(self.trial._trial_id)
          beat = time.monotonic()
        self.report(prune=True)
      except Exception as e:  # noqa: BLE001 - a busy database must not end the run
        log.warning("trial %d: could not reach the study database (%s); retrying",
                    self.trial.number, e)

  def report(self, prune: bool) -> None:
    """Report the validations not reported yet; on the pruner's word, stop the run (never
    after its last validation: the run is then ending by itself)."""
    if not self.key:
      return
    values = validation_values(self.path, self.key)
    for step, value in enumerate(values[self.reported:], start=self.reported + 1):
      if math.isfinite(value):
        self.trial.report(value, step)
    new, self.reported = len(values) > self.reported, len(values)
    if (prune and new and not self.pruned and self.reported < self.last_step
        and self.trial.should_prune()):
      self.pruned = True
      log.info("trial %d pruned after validation %d (%s = %.4g)", self.trial.number,
               self.reported, self.key, values[-1])
      os.kill(os.getpid(), signal.SIGUSR1)  # the trainer checkpoints and stops

  def stop(self) -> None:
    self._stop_event.set()
    self.join()


def _clear_dead_lock(path: str, number: int) -> None:
  """The run.lock of a trial's dead worker. The run's own lock takes over a lock whose
  process is gone from this host, but cannot check a process on another host (a SLURM
  node) and counts a killed, unreaped process (a zombie) as alive; the study has seen
  this worker die, so its lock goes here."""
  lock = os.path.join(path, workdir_lib.LOCK_FILE)
  try:
    with open(lock) as f:
      held = json.load(f)
  except (OSError, ValueError):
    return
  here = held.get("host") == socket.gethostname()
  if not here or not workdir_lib.process_alive(int(held.get("pid") or 0)):
    log.warning("trial %d: removing the lock of its dead worker (pid %s on host %s): %s",
                number, held.get("pid"), held.get("host"), lock)
    os.remove(lock)


class _Signals:
  """While a trial runs, SIGUSR1 / SIGTERM / SIGINT outside the trainer's own handling (in
  its start-up or its final test) are recorded instead of killing the worker; the trial
  then ends normally and the worker stops after it."""

  def __enter__(self) -> "_Signals":
    self.signum: Optional[int] = None
    self._old = {}
    if threading.current_thread() is threading.main_thread():
      for sig in guards.SignalFlag.SIGNALS:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    self.signum = signum

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)


def run(trial: optuna.Trial, frozen: optuna.trial.FrozenTrial, spec: space_lib.Spec,
        storage: optuna.storages.RDBStorage, workdir: str, data: Optional[tuple] = None,
        poll_s: float = 0.5) -> float:
  """Train the trial's config in its directory and return the objective (see module doc).

  data: (train, validation, test) `Split`s that replace the config's (tests).
  """
  number = study_lib.original_number(frozen)
  params = {key: p.suggest(trial) for key, p in spec.space.items()}
  config = spec.config_for(params)
  path = trial_dir(workdir, number)
  trial.set_user_attr("workdir", path)
  os.makedirs(path, exist_ok=True)
  _clear_dead_lock(path, number)
  split, _, name = spec.metric.partition("/")
  evals = max(1, config.num_epochs // max(1, config.eval_every_epochs))
  watcher = Watcher(trial, storage, os.path.join(path, "metrics.jsonl"),
                    spec.metric if split == "validation" else None, evals, poll_s)
  t0 = time.time()
  with _Signals() as outside:
    watcher.start()
    try:
      result = trainer.train_and_evaluate(config, path, *(data or ()))
    except guards.Preempted as e:
      if watcher.pruned:
        run_status.relabel(path, "pruned", f"pruned by the sweep's pruner after validation "
                           f"{watcher.reported} ({spec.metric})")
        raise optuna.TrialPruned(str(e)) from None
      raise study_lib.Requeue(e, e.exit_code) from e
    finally:
      watcher.stop()
  watcher.report(prune=False)  # the last epochs, before the trial is told
  trial.set_user_attr("seconds", round(time.time() - t0, 2))
  trial.set_user_attr("results", {k: {m: float(v) for m, v in result[k].items()
                                      if isinstance(v, (int, float))}
                                  for k in ("validation", "test", "test_best") if k in result})
  if outside.signum is not None and not watcher.pruned:  # told to stop as the run finished
    study_lib.STOP_AFTER_TRIAL.append(outside.signum)
  if name not in result.get(split, {}):
    raise KeyError(f"the run has no {spec.metric} (its {split} metrics: "
                   f"{', '.join(sorted(result.get(split, {}))) or 'none'}); choose --metric")
  return float(result[split][name])
