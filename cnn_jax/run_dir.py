"""What a work directory holds, read without JAX: `Run(path)` and `find(paths)`.

A work directory of `cnn-jax train` (a sweep's `W/trials/NNNN` are ordinary ones) holds
config.json, config_history.jsonl (each start), metrics.jsonl (+ metrics.superseded.jsonl,
lines a resume set aside), results.json (once finished), status.json (how it ended:
`training/run_status.py`), run.lock (while a process trains it) and checkpoints/, best/,
tensorboard/. `cnn-jax runs` (cnn_jax/runs.py) tabulates them and `viz curves` draws them.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import socket
from typing import Any, Optional, Sequence

from cnn_jax import config as config_lib
from cnn_jax.training import run_status
from cnn_jax.training import workdir as workdir_lib

MARKERS = ("config.json", "metrics.jsonl", run_status.STATUS_FILE)
SKIP_DIRS = ("checkpoints", "best", "tensorboard")  # a run's own folders hold no runs


def find(paths: Sequence[str]) -> list[str]:
  """The run directories at or under `paths`, sorted, each once."""
  found: set[str] = set()
  for path in paths:
    if not os.path.isdir(path):
      raise FileNotFoundError(f"{path} is not a directory: give work directories or folders "
                              "holding them (e.g. a sweep's W)")
    for folder, dirs, files in os.walk(path):
      if any(m in files for m in MARKERS):
        found.add(os.path.normpath(folder))
      dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
  return sorted(found)


def _json_lines(path: str) -> list[dict]:
  """The whole JSON objects of a .jsonl file ([] when absent; a torn last line skipped)."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return []
  out = []
  for line in text.splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if isinstance(row, dict):
      out.append(row)
  return out


def _json(path: str) -> Optional[Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _timestamp(text: Any) -> Optional[float]:
  try:
    return datetime.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S%z").timestamp()
  except ValueError:
    return None


class Run:
  """What one work directory holds, read once."""

  def __init__(self, path: str):
    self.path = path
    self.lines = _json_lines(os.path.join(path, "metrics.jsonl"))
    self.lines = [r for r in self.lines if isinstance(r.get("step"), (int, float))]
    self.superseded = _json_lines(os.path.join(path, "metrics.superseded.jsonl"))
    self.history = _json_lines(os.path.join(path, "config_history.jsonl"))
    config = _json(os.path.join(path, "config.json"))
    if not isinstance(config, dict) and self.history:
      config = self.history[-1].get("config")
    self.config: dict[str, Any] = config_lib.flatten(config) if isinstance(config, dict) else {}
    results = _json(os.path.join(path, "results.json"))
    self.results: Optional[dict] = results if isinstance(results, dict) else None
    self.record = run_status.read(path)
    self.lock = _json(os.path.join(path, workdir_lib.LOCK_FILE))
    self.has_lock = os.path.exists(os.path.join(path, workdir_lib.LOCK_FILE))

  def status(self) -> str:
    if self.has_lock:
      held = self.lock if isinstance(self.lock, dict) else {}
      if held.get("host") == socket.gethostname() and held.get("pid"):
        return "running" if workdir_lib.process_alive(int(held["pid"])) else "killed"
      return "running"  # half-written, or another host's: its process cannot be asked
    if self.record is not None:
      return "killed" if self.record["status"] == "running" else self.record["status"]
    return "finished" if self.results is not None else "unknown"

  def experiment(self) -> str:
    argv = (self.record or {}).get("argv")
    name = run_status.experiment_name(argv) if isinstance(argv, list) else None
    return name or "/".join(str(self.config.get(k)) for k in ("model", "dataset.name")
                            if self.config.get(k))

  def steps_per_epoch(self) -> Optional[float]:
    """From results.json's steps, else the first validation (at epoch eval_every_epochs),
    else a best/ checkpoint (always saved at an epoch's end)."""
    epochs = self.config.get("num_epochs")
    if self.results and self.results.get("steps") and epochs:
      return self.results["steps"] / epochs
    val = next((r["step"] for r in self.lines if any(k.startswith("validation/") for k in r)),
               None)
    every = self.config.get("eval_every_epochs") or 1
    if val and epochs:
      return val / min(every, epochs)
    best = os.path.join(self.path, "best")
    steps = sorted((int(d) for d in os.listdir(best) if d.isdigit()), reverse=True) \
        if os.path.isdir(best) else []
    for step in steps:
      meta = _json(os.path.join(best, str(step), "meta", "metadata"))
      if isinstance(meta, dict) and meta.get("epoch"):
        return step / meta["epoch"]
    return None

  def starts(self) -> list[float]:
    """When each start of the run began: status.json's, else config_history.jsonl's (a run
    from before status.json: after its data loaded, in whole seconds)."""
    out = [t for t in (self.record or {}).get("starts", []) if isinstance(t, (int, float))]
    if not out:
      out = [t for t in (_timestamp(h.get("time")) for h in self.history) if t is not None]
    if not out and self.lines:
      out = [self.lines[0]["time"]]
    return sorted(out)

  def sessions(self, now: Optional[float] = None) -> list[tuple[float, float]]:
    """(start, last line) of each start of the run; `now` ends a running one."""
    starts = self.starts()
    times = sorted(r["time"] for r in self.lines + self.superseded
                   if isinstance(r.get("time"), (int, float)))
    if self.record and self.record.get("ended"):
      times.append(self.record["ended"])
    if now is not None:
      times.append(now)
    out = []
    for i, start in enumerate(starts):
      until = starts[i + 1] if i + 1 < len(starts) else math.inf
      inside = [t for t in times if start <= t < until]
      out.append((start, max(inside) if inside else start))
    return out

  def wall_seconds(self, now: Optional[float] = None) -> Optional[float]:
    sessions = self.sessions(now)
    return sum(end - start for start, end in sessions) if sessions else None

  def elapsed(self, t: float) -> float:
    """The run's wall time at time t: earlier starts whole, plus t - this start."""
    done = 0.0
    for start, end in self.sessions():
      if t < start:
        break
      done += min(t, end) - start
      if t < end:
        break
    return done


def _comparable(v: Any) -> str:
  return json.dumps(v, sort_keys=True)


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
  """The flat config keys whose values are not all equal, in config order. A key some runs
  lack (saved by another cnn_jax version) counts only among those that have it."""
  keys: dict[str, None] = {}
  for c in configs:
    keys.update(dict.fromkeys(c))
  return [k for k in keys if len({_comparable(c[k]) for c in configs if k in c}) > 1]
