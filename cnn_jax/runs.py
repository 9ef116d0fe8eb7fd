"""`cnn-jax runs PATH ...`: every run under the paths, one row each, side by side.

A run is a work directory of `cnn-jax train` (a sweep's `W/trials/NNNN` are ordinary ones),
found by its config.json / metrics.jsonl anywhere under the paths given. Everything is read
from what the run wrote, nothing is loaded or compiled (no JAX: it takes a fraction of a
second):
  experiment   the `--config` file of the command that started it (status.json), else the
               model and data set;
  KEYS         the config keys whose values differ between the runs listed (flattened
               config.json: optimizer.learning_rate, ...);
  status       running (a live process holds its run.lock; a lock of another host is
               believed), finished, preempted (stopped by a signal after a checkpoint; the
               same command resumes it), failed (status.json says why), killed (its
               process died without a word: SIGKILL, out of memory, a lost node), unknown
               (a run older than status.json that did not finish);
  epochs       trained (the last logged step over the steps of an epoch) / configured;
  val_M, best_val_M   the validation metric M (config.best_metric) last and at its best;
  test_M, test_best_M the test split with the final weights and with best/ (picked on
               validation);
  wall_s       from each start (the work directory locked) to its last logged line, summed
               over the run's starts (Python's and JAX's start-up before it not counted);
  images_per_sec      results.json's training throughput, else the median logged one;
  started      the first start.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import operator
import os
import re
import socket
import statistics
import sys
import time
import types
from typing import Any, Optional, Sequence

from cnn_jax import config as config_lib
from cnn_jax.training import run_status
from cnn_jax.training import workdir as workdir_lib

MARKERS = ("config.json", "metrics.jsonl", run_status.STATUS_FILE)
SKIP_DIRS = ("checkpoints", "best", "tensorboard")  # a run's own folders hold no runs
FIXED = ("run", "experiment")
TAIL = ("status", "epochs", "wall_s", "images_per_sec", "started")


# ------------------------------------------------------------------------------ reading
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


def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
  """config.json flattened as resume.flat_config does (that module imports JAX)."""
  out: dict[str, Any] = {}
  for k, v in tree.items():
    if isinstance(v, dict) and k not in config_lib.FREE_FORM:
      out.update(flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


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
    self.config: dict[str, Any] = flat(config) if isinstance(config, dict) else {}
    results = _json(os.path.join(path, "results.json"))
    self.results: Optional[dict] = results if isinstance(results, dict) else None
    self.record = run_status.read(path)
    self.lock = _json(os.path.join(path, workdir_lib.LOCK_FILE))
    self.has_lock = os.path.exists(os.path.join(path, workdir_lib.LOCK_FILE))

  def status(self) -> str:
    if self.has_lock:
      held = self.lock if isinstance(self.lock, dict) else {}
      if held.get("host") == socket.gethostname() and held.get("pid"):
        return "running" if _alive(int(held["pid"])) else "killed"
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


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


def metric_name(config: dict) -> str:
  return config.get("best_metric") or ("mAP50" if config.get("task") == "detection"
                                       else "accuracy")


def summarize(run: Run) -> dict[str, Any]:
  """One row: the columns of the table (besides the differing config keys)."""
  m = metric_name(run.config)
  mode = config_lib.best_mode(types.SimpleNamespace(
      best_mode=run.config.get("best_mode", "auto"), best_metric=m))
  vals = [r[f"validation/{m}"] for r in run.lines if f"validation/{m}" in r]
  last = lambda key: next((r[key] for r in reversed(run.lines) if key in r), None)  # noqa: E731
  status = run.status()
  spe, total = run.steps_per_epoch(), run.config.get("num_epochs")
  step = max((r["step"] for r in run.lines), default=0)
  done = total if status == "finished" and total else (
      round(step / spe, 2) if spe else None)
  speeds = [r["train/images_per_sec"] for r in run.lines if r.get("train/images_per_sec")]
  ips = (run.results or {}).get("train_images_per_sec") or (
      statistics.median(speeds) if speeds else None)
  starts = run.starts()
  pick = min if mode == "min" else max
  return {
      "run": run.path, "experiment": run.experiment(), "status": status,
      "epochs": done, "num_epochs": total,
      f"val_{m}": vals[-1] if vals else None, f"best_val_{m}": pick(vals) if vals else None,
      f"test_{m}": last(f"test/{m}"), f"test_best_{m}": last(f"test_best/{m}"),
      "wall_s": run.wall_seconds(time.time() if status == "running" else None),
      "images_per_sec": ips,
      "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(starts[0])) if starts else None,
      "error": (run.record or {}).get("error") if status in ("failed", "preempted") else None}


def _comparable(v: Any) -> str:
  return json.dumps(v, sort_keys=True)


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
  """The flat config keys whose values are not all equal, in config order. A key some runs
  lack (saved by another cnn_jax version) counts only among those that have it."""
  keys: dict[str, None] = {}
  for c in configs:
    keys.update(dict.fromkeys(c))
  return [k for k in keys if len({_comparable(c[k]) for c in configs if k in c}) > 1]


# ------------------------------------------------------------------- choosing, sorting
_FILTER = re.compile(r"^\s*([\w./-]+)\s*(>=|<=|==|!=|>|<|=)\s*(.*?)\s*$")
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "=": operator.eq,
        "!=": operator.ne, ">": operator.gt, "<": operator.lt}


def _number(v: Any) -> Optional[float]:
  if isinstance(v, bool) or v is None:
    return None
  try:
    return float(v)
  except (TypeError, ValueError):
    return None


def keep(rows: list[dict], configs: list[dict], expression: str) -> list[int]:
  """The indices of the rows `expression` ("test_accuracy>0.9", "status=finished",
  "optimizer.learning_rate<=0.01": a column or any config key) holds for."""
  match = _FILTER.match(expression)
  if not match:
    raise ValueError(f"--filter {expression!r}: expected COLUMN OP VALUE with OP one of "
                     ">, >=, <, <=, =, !=, e.g. 'test_accuracy>0.9' or 'status=finished'")
  key, op, target = match.groups()
  if not any(key in r or key in c for r, c in zip(rows, configs)):
    names = sorted({k for r in rows for k in r})
    raise ValueError(f"--filter {expression!r}: no run has {key!r}; columns: "
                     f"{', '.join(names)} (or any config key, e.g. optimizer.learning_rate)")
  out = []
  for i, (r, c) in enumerate(zip(rows, configs)):
    value = r[key] if key in r else c.get(key)
    a, b = _number(value), _number(target)
    if a is not None and b is not None:
      ok = _OPS[op](a, b)
    elif value is None:
      ok = False
    else:
      ok = _OPS[op](value if isinstance(value, str) else _comparable(value), target)
    if ok:
      out.append(i)
  return out


def _descending(column: str) -> bool:
  """Best first: metrics (but losses and errors) and images/s high first, else ascending."""
  metric = column.startswith(("val_", "best_val_", "test_")) or column == "images_per_sec"
  return metric and not any(w in column for w in ("loss", "error"))


def order(rows: list[dict], configs: list[dict], column: str, reverse: bool = False
          ) -> list[int]:
  """Row indices sorted by `column` (a row missing it goes last)."""
  def value(i: int) -> Any:
    return rows[i][column] if column in rows[i] else configs[i].get(column)
  if not any(value(i) is not None for i in range(len(rows))):
    raise ValueError(f"--sort {column!r}: no run has it; columns: "
                     f"{', '.join(sorted({k for r in rows for k in r}))}")
  have = [i for i in range(len(rows)) if value(i) is not None]
  missing = [i for i in range(len(rows)) if value(i) is None]
  numeric = all(_number(value(i)) is not None for i in have)
  key = (lambda i: _number(value(i))) if numeric else (lambda i: str(value(i)))
  return sorted(have, key=key, reverse=_descending(column) != reverse) + missing


# --------------------------------------------------------------------------- the table
def table(paths: Sequence[str], filters: Sequence[str] = (), sort: Optional[str] = None,
          reverse: bool = False, keys: Sequence[str] = ()) -> tuple[list[str], list[dict]]:
  """(columns, rows) of the runs under `paths`: what `cnn-jax runs` prints."""
  found = find(paths)
  if not found:
    raise ValueError(f"no run directories (holding config.json or metrics.jsonl) under "
                     f"{', '.join(paths)}")
  runs = [Run(p) for p in found]
  rows, configs = [summarize(r) for r in runs], [r.config for r in runs]
  chosen = list(range(len(rows)))
  for f in filters:
    kept = set(keep(rows, configs, f))
    chosen = [i for i in chosen if i in kept]
  rows, configs = [rows[i] for i in chosen], [configs[i] for i in chosen]
  if sort is None:
    sort = next((k for r in rows for k in r if k.startswith("best_val_") and r[k] is not None),
                "started")
  if rows:
    idx = order(rows, configs, sort, reverse)
    rows, configs = [rows[i] for i in idx], [configs[i] for i in idx]
  shown = [k for k in [*keys, *differing_keys(configs)] if k not in FIXED]
  shown = list(dict.fromkeys(shown))
  for r, c in zip(rows, configs):
    for k in shown:
      r[k] = c.get(k)
  metrics = list(dict.fromkeys(k for r in rows for k in r if k.startswith(
      ("val_", "best_val_", "test_"))))
  columns = [*FIXED, *shown, "status", "epochs", *metrics, *TAIL[2:]]
  return columns, rows


def _duration(s: Optional[float]) -> str:
  if s is None:
    return "-"
  s = int(round(s))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (
      f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _cell(column: str, row: dict) -> str:
  v = row.get(column)
  if column == "epochs":
    total = row.get("num_epochs")
    return f"{'-' if v is None else format(v, 'g')}/{total if total is not None else '-'}"
  if column == "wall_s":
    return _duration(v)
  if v is None:
    return "-"
  if column == "images_per_sec":
    return f"{v:.0f}"
  if isinstance(v, float) and column.startswith(("val_", "best_val_", "test_")):
    return f"{v:.4f}"
  if isinstance(v, float):
    return f"{v:g}"
  return v if isinstance(v, str) else json.dumps(v)


def format_text(columns: list[str], rows: list[dict]) -> str:
  """An aligned table; failed / preempted runs' messages as notes below it."""
  cells = [columns] + [[_cell(c, r) for c in columns] for r in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
  out = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells]
  notes = [f"{r['run']}: {r['status']}: {r['error']}" for r in rows if r.get("error")]
  return "\n".join(out + ([""] + notes if notes else []))


def write_csv(columns: list[str], rows: list[dict], out: Any) -> None:
  """Plain values (seconds, numbers, config values as JSON), one header line, + error."""
  w = csv.writer(out)
  w.writerow([*columns[:columns.index("epochs") + 1], "num_epochs",
              *columns[columns.index("epochs") + 1:], "error"])
  for r in rows:
    values = [r.get(c) for c in columns]
    at = columns.index("epochs") + 1
    values = values[:at] + [r.get("num_epochs")] + values[at:] + [r.get("error")]
    w.writerow(["" if v is None else v if isinstance(v, (str, int, float)) else json.dumps(v)
                for v in values])


def main(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser("cnn-jax runs", description="Runs side by side: the config keys "
                              "that differ, status, epochs, validation / test, wall time.")
  p.add_argument("paths", nargs="+", help="work directories, or folders holding them "
                 "(searched recursively, e.g. a sweep's W)")
  p.add_argument("--csv", action="store_true", help="CSV to stdout instead of a table")
  p.add_argument("--sort", default=None, help="a column or config key (default: best "
                 "validation, best first; metrics sort best first, the rest ascending)")
  p.add_argument("--reverse", action="store_true", help="reverse the --sort order")
  p.add_argument("--filter", action="append", default=[], metavar="EXPR",
                 help="e.g. 'test_accuracy>0.9', 'status=finished' (repeatable: all must hold)")
  p.add_argument("--keys", default="", help="config keys to show even where equal, "
                 "comma-separated")
  a = p.parse_args(argv)
  columns, rows = table(a.paths, a.filter, a.sort, a.reverse,
                        [k for k in a.keys.split(",") if k])
  if a.csv:
    write_csv(columns, rows, sys.stdout)
  else:
    print(format_text(columns, rows) if rows else "no run matches the filters")
  return 0
