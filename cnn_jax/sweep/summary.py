"""A sweep's result: the best trial and its config, a table of every trial, a picture.

The table has one row per parameter set (a re-queued copy replaces its killed original,
whose number it names in `resumed_from`), printed and written as W/summary.csv and
W/summary.md; W/sweep.png plots the objective per trial (with the best so far) and each
parameter against the objective.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
from typing import Any, Iterator, Optional

import optuna
from optuna.trial import TrialState

from cnn_jax.sweep import study as study_lib


@contextlib.contextmanager
def _replacing(path: str, **kwargs: Any) -> Iterator[Any]:
  """Write to a temporary file, then rename: workers finishing together (SLURM array tasks)
  each write the summary, and a reader never sees half of one."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w", **kwargs) as f:
    yield f
  os.replace(tmp, path)


def rows(study: optuna.Study) -> list[dict[str, Any]]:
  """One row per slot of the sweep: its latest trial (a retry stands for its original)."""
  latest: dict[int, optuna.trial.FrozenTrial] = {}
  for t in study.get_trials(deepcopy=False):
    if t.user_attrs.get("surplus"):
      continue
    n = study_lib.original_number(t)
    if n not in latest or t.number > latest[n].number:
      latest[n] = t
  out = []
  for n, t in sorted(latest.items()):
    results = t.user_attrs.get("results", {})
    value = t.value if t.state == TrialState.COMPLETE else (
        t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
    out.append({
        "trial": t.number, "resumed_from": n if n != t.number else "", "state": t.state.name,
        "value": value, "epochs_reported": len(t.intermediate_values),
        **{k: v for k, v in t.params.items()},
        "test_accuracy": results.get("test", {}).get("accuracy"),
        "seconds": t.user_attrs.get("seconds"), "workdir": t.user_attrs.get("workdir", ""),
    })
  return out


def _fmt(v: Any) -> str:
  if v is None:
    return ""
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def table(rs: list[dict[str, Any]], keys: Optional[list[str]] = None) -> str:
  keys = keys or [k for k in (rs[0] if rs else {}) if k != "workdir"]
  cells = [[_fmt(r.get(k)) for k in keys] for r in rs]
  widths = [max([len(k)] + [len(c[i]) for c in cells]) for i, k in enumerate(keys)]
  line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
  return "\n".join([line(keys), line(["-" * w for w in widths])] + [line(c) for c in cells])


def best(study: optuna.Study) -> Optional[optuna.trial.FrozenTrial]:
  try:
    return study.best_trial
  except ValueError:  # no COMPLETE trial
    return None


def write(study: optuna.Study, workdir: str, metric: str,
          ranges: Optional[dict[str, tuple[float, float, bool]]] = None) -> str:
  """Writes summary.csv, summary.md and sweep.png into workdir; returns the printed text.

  ranges: {numeric key: (low, high, log scale)}, the swept ranges the picture's axes span.
  """
  rs = rows(study)
  keys = list(dict.fromkeys(k for r in rs for k in r))
  with _replacing(os.path.join(workdir, "summary.csv"), newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rs)
  shown = [k for k in keys if k != "workdir"]
  b = best(study)
  head = [f"study {study.study_name}: {len(rs)} trials, "
          + ", ".join(f"{sum(r['state'] == s for r in rs)} {s.lower()}"
                      for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
                      if any(r["state"] == s for r in rs)),
          f"objective: {metric} ({study.direction.name.lower()})"]
  if b is not None:
    head.append(f"best: trial {b.number}, {metric} = {b.value:.6g}, params "
                + ", ".join(f"{k}={_fmt(v)}" for k, v in b.params.items()))
    head.append(f"best config: {os.path.join(b.user_attrs.get('workdir', '?'), 'config.json')}")
  text = "\n".join(head) + "\n\n" + table(rs, shown)
  with _replacing(os.path.join(workdir, "summary.md")) as f:
    f.write("\n\n".join(head) + "\n\n")
    f.write("| " + " | ".join(shown) + " |\n|" + "---|" * len(shown) + "\n")
    for r in rs:
      f.write("| " + " | ".join(_fmt(r.get(k)) for k in shown) + " |\n")
  picture(rs, os.path.join(workdir, "sweep.png"), metric,
          param_keys(rs), ranges or {},
          maximize=study.direction == optuna.study.StudyDirection.MAXIMIZE)
  return text


def param_keys(rs: list[dict[str, Any]]) -> list[str]:
  fixed = {"trial", "resumed_from", "state", "value", "epochs_reported", "test_accuracy",
           "seconds", "workdir"}
  return list(dict.fromkeys(k for r in rs for k in r if k not in fixed))


def picture(rs: list[dict[str, Any]], path: str, metric: str, params: list[str],
            ranges: dict[str, tuple[float, float, bool]], maximize: bool) -> None:
  """Objective per trial (the best so far as a line) and each parameter vs the objective;
  a pruned trial is drawn hollow at its last reported value."""
  import matplotlib  # noqa: PLC0415 - only when a picture is drawn
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  panels = 1 + len(params)
  fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
  ok = [r for r in rs if r["value"] is not None and math.isfinite(r["value"])]
  done = [r for r in ok if r["state"] == "COMPLETE"]
  pruned = [r for r in ok if r["state"] != "COMPLETE"]
  ax = axes[0][0]
  ax.scatter([r["trial"] for r in done], [r["value"] for r in done], label="complete")
  ax.scatter([r["trial"] for r in pruned], [r["value"] for r in pruned], facecolors="none",
             edgecolors="C1", label="pruned (last value)")
  running, so_far = [], None
  for r in sorted(done, key=lambda r: r["trial"]):
    v = r["value"]
    so_far = v if so_far is None else (max(so_far, v) if maximize else min(so_far, v))
    running.append((r["trial"], so_far))
  if running:
    ax.step(*zip(*running), where="post", color="C2", label="best so far")
  ax.set_xlabel("trial")
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.set_ylabel(metric)
  ax.legend(fontsize=7)
  for ax, key in zip(axes[0][1:], params):
    numeric = [r for r in ok if isinstance(r.get(key), (int, float))]
    xs = [r[key] if r in numeric else str(r.get(key)) for r in ok]
    ax.scatter(xs, [r["value"] for r in ok],
               c=["C0" if r["state"] == "COMPLETE" else "C1" for r in ok])
    if key in ranges:
      lo, hi, log = ranges[key]
      if log:
        ax.set_xscale("log")
      ax.set_xlim(lo / 1.2 if log else lo - 0.03 * (hi - lo), hi * 1.2 if log else hi + 0.03 * (hi - lo))
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
  fig.tight_layout()
  tmp = f"{path}.{os.getpid()}.png"
  fig.savefig(tmp, dpi=100)
  os.replace(tmp, path)
  plt.close(fig)
