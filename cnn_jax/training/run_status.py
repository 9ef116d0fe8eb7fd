"""How a run ended, kept in `<workdir>/status.json` (what `cnn-jax runs` reads).

Nothing else a run writes tells a run stopped by a signal (checkpointed, resumable) from
one that failed: both leave checkpoints and no results.json, and both remove their
run.lock. So the trainer's metric writer (process 0) records each start and each end:

  {"status": "running", "started": 1765000000.0, "starts": [...], "host": "h", "pid": 1,
   "argv": [...]}
  {... "status": "finished" | "preempted" | "failed", "ended": ..., "step": 800,
       "error": "NonFiniteLossError: loss is nan at step 5 ..."}

A sweep relabels a run its pruner stopped "pruned" (`relabel`): it stopped like a
preempted run, but resuming it is not wanted.

A record that still says "running" while no live process holds the work directory's lock
is a run killed without a word (SIGKILL, out of memory, a lost node): `cnn-jax runs` calls
it "killed". A start replaces the previous record. This module imports no JAX: the
reader (`cnn_jax/runs.py`) lists runs in a fraction of a second.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from typing import Any, Optional, Sequence

from cnn_jax.training import workdir as workdir_lib

log = logging.getLogger("cnn_jax")
STATUS_FILE = "status.json"
STATUSES = ("running", "finished", "preempted", "pruned", "failed", "killed", "unknown")


def experiment_name(argv: Optional[Sequence[str]] = None) -> Optional[str]:
  """The experiment a command ran: "mnist_cnn:smoke" for `... --config
  experiments/mnist_cnn.py:smoke ...` (train and sweep alike); None without --config."""
  argv = list(sys.argv if argv is None else argv)
  for i, a in enumerate(argv):
    value = (a.split("=", 1)[1] if a.startswith("--config=") else
             argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
    if value:
      file, _, arg = value.partition(":")
      stem = os.path.splitext(os.path.basename(file))[0]
      return f"{stem}:{arg}" if arg else stem
  return None


def _write(workdir: str, record: dict[str, Any]) -> None:
  """Whole or not at all; a disk that cannot take it costs the record, never the run."""
  path = os.path.join(os.fspath(workdir), STATUS_FILE)
  try:
    with open(path + ".tmp", "w") as f:
      json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)
  except OSError as e:
    log.warning("cannot write %s (%s): `cnn-jax runs` will not know how this run ended",
                path, e.strerror or e)


def started(workdir: str) -> dict[str, Any]:
  """Record that a run (re)starts in `workdir`; returns the record. The start is when this
  process took the work directory's lock (before the data loaded and the steps compiled);
  "starts" keeps every start of the run, for its wall time."""
  start = time.time()
  try:
    with open(os.path.join(os.fspath(workdir), workdir_lib.LOCK_FILE)) as f:
      lock = json.load(f)
    if lock.get("pid") == os.getpid() and isinstance(lock.get("started"), (int, float)):
      start = min(start, lock["started"])
  except (OSError, ValueError, AttributeError):
    pass
  previous = read(workdir) or {}
  record = {"status": "running", "started": start,
            "starts": [*previous.get("starts", []), start], "host": socket.gethostname(),
            "pid": os.getpid(), "argv": list(sys.argv)}
  _write(workdir, record)
  return record


def ended(workdir: str, record: dict[str, Any], status: str, step: Optional[int] = None,
          error: Optional[str] = None) -> None:
  """Record how the run that `started` returned `record` ended."""
  _write(workdir, {**record, "status": status, "ended": time.time(), "step": step,
                   "error": error})


def relabel(workdir: str, status: str, note: str) -> None:
  """Change how the recorded end is called (a sweep's "pruned" for the trainer's
  "preempted"), keeping the rest of the record; `note` says why."""
  record = read(workdir)
  if record is not None:
    _write(workdir, {**record, "status": status, "error": note})


def read(workdir: str) -> Optional[dict[str, Any]]:
  """The record, or None (a run from before records, or one not started yet)."""
  try:
    with open(os.path.join(os.fspath(workdir), STATUS_FILE)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) and record.get("status") in STATUSES else None
