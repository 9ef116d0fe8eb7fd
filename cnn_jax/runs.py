"""`cnn-jax runs PATH ...`: every run under the paths, one row each, side by side.

A run is a work directory of `cnn-jax train` (a sweep's `W/trials/NNNN` are ordinary ones),
found by its config.json / metrics.jsonl anywhere under the paths given (`run_dir.py`
reads them). Nothing is loaded or compiled (no JAX: it takes a fraction of a second):
  experiment   the `--config` file of the command that started it (status.json), else the
               model and data set;
  KEYS         the config keys whose values differ between the runs listed (flattened
               config.json: optimizer.learning_rate, ...);
  status       running (a live process holds its run.lock; a lock of another host is
               believed), finished, preempted (stopped by a signal after a checkpoint; the
               same command resumes it), pruned (a sweep's trial its pruner stopped),
               failed (status.json says why), killed (its
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
import json
import operator
import re
import statistics
import sys
import time
import types
from typing import Any, Optional, Sequence

from cnn_jax import config as config_lib
from cnn_jax.run_dir import Run, differing_keys, find

FIXED = ("run", "experiment")
TAIL = ("status", "epochs", "wall_s", "images_per_sec", "started")


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
      "error": ((run.record or {}).get("error")
                if status in ("failed", "preempted", "pruned") else None)}


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
      ok = _OPS[op](value if isinstance(value, str) else json.dumps(value, sort_keys=True), target)
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
  if sort is None:  # best validation first; else oldest first; else as found
    sort = next((k for prefix in ("best_val_", "started") for r in rows for k in r
                 if k.startswith(prefix) and r[k] is not None), None)
  if rows and sort is not None:
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
