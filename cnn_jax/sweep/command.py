"""`cnn-jax sweep`: run (or join) a sweep, then print its summary.

  cnn-jax sweep --config experiments/mnist_cnn.py:smoke --workdir W \\
      --space 'optimizer.learning_rate=loguniform(1e-4,1e-2)' --trials 2 [--workers K]

With --workers K (K > 1) this process starts K worker processes (the same command with
--workers 1), each pinned to its own share of the CPU cores, and waits for them. A SLURM
array task is one such worker (launch/sweep.sbatch): every task opens the same study
(--storage, or W/study.db on a shared disk) and takes trials until the sweep is done.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

import optuna

from cnn_jax.sweep import space as space_lib
from cnn_jax.sweep import study as study_lib
from cnn_jax.sweep import summary as summary_lib

log = logging.getLogger("cnn_jax")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser("cnn-jax sweep", description="Hyper-parameter sweep: an Optuna "
                              "study whose trials are ordinary runs in W/trials/NNNN "
                              "(docs/sweeps.md). Also takes --config.KEY=VALUE overrides.")
  p.add_argument("--config", help="experiment file FILE.py[:VARIANT] (its get_sweep, if any, "
                 "gives the defaults of --space, --trials, --metric, ...)")
  p.add_argument("--workdir", required=True, help="the sweep's folder: study.db, trials/, "
                 "summary.csv / .md, sweep.png")
  p.add_argument("--space", action="append", default=[], metavar="KEY=KIND(ARGS)",
                 help="a swept key, e.g. optimizer.learning_rate=loguniform(1e-4,1e-1); "
                 "KIND: loguniform, uniform, int, logint, choice (repeatable)")
  p.add_argument("--trials", type=int, default=None,
                 help="parameter sets to run (default: get_sweep's, the grid's size, or 10)")
  p.add_argument("--workers", type=int, default=1, help="local worker processes")
  p.add_argument("--storage", default=None, help="SQLAlchemy URL of the study's database "
                 "(default sqlite:///W/study.db), e.g. postgresql://user:pw@host/db")
  p.add_argument("--study", default="sweep", help="the study's name in the database")
  p.add_argument("--sampler", default=None, choices=study_lib.SAMPLERS)
  p.add_argument("--pruner", default=None, choices=study_lib.PRUNERS)
  p.add_argument("--metric", default=None, help="objective: validation/NAME (default "
                 "validation/<config.best_metric>)")
  p.add_argument("--direction", default=None, choices=("maximize", "minimize"))
  p.add_argument("--seed", type=int, default=None, help="sampler seed (worker i uses seed+i)")
  p.add_argument("--heartbeat", type=int, default=10, help="seconds between a running "
                 "trial's heartbeats; a trial silent for 3 beats is re-queued")
  p.add_argument("--summary", action="store_true", help="only print the summary of W's study")
  p.add_argument("--no_summary", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--worker_index", type=int, default=None, help=argparse.SUPPRESS)
  return p


def _default_direction(metric: str) -> str:
  name = metric.split("/")[-1].lower()
  return "minimize" if ("loss" in name or "error" in name) else "maximize"


def build_spec(args: argparse.Namespace, overrides: list[str]) -> tuple[space_lib.Spec, dict]:
  """The sweep's Spec from the flags and the experiment's get_sweep (flags win)."""
  declared = space_lib.experiment_sweep(args.config)
  space = space_lib.parse_space(args.space or declared.get("space", {}))
  if not space:
    raise ValueError(f"nothing to sweep: give --space KEY=KIND(ARGS) (e.g. "
                     f"optimizer.learning_rate=loguniform(1e-4,1e-1)) or define get_sweep in "
                     f"{args.config.split(':')[0]}")
  spec = space_lib.Spec(args.config, overrides, dict(declared.get("config", {})), space)
  base = spec.base_config()
  spec.metric = args.metric or declared.get("metric") or f"validation/{base.best_metric or 'accuracy'}"
  if "/" not in spec.metric:
    spec.metric = f"validation/{spec.metric}"
  spec.direction = args.direction or declared.get("direction") or _default_direction(spec.metric)
  spec.check(base)
  # Every trial's config must build: try the lower end of each range before any trial.
  spec.config_for({k: (p.args[0] if p.kind not in ("choice", "categorical") else p.args[0])
                   for k, p in space.items()})
  return spec, declared


def open_study(args: argparse.Namespace, spec: space_lib.Spec, declared: dict
               ) -> tuple[optuna.Study, optuna.storages.RDBStorage, int]:
  """Creates or joins the study; refuses one that sweeps something else."""
  url = study_lib.storage_url(args.storage, args.workdir)
  storage = study_lib.open_storage(url, args.heartbeat)
  sampler_name = args.sampler or declared.get("sampler", "tpe")
  grid = {k: p.grid() for k, p in spec.space.items()} if sampler_name == "grid" else None
  n_trials = args.trials or declared.get("trials") or (
      math.prod(len(v) for v in grid.values()) if grid else 10)
  if grid:
    n_trials = min(n_trials, math.prod(len(v) for v in grid.values()))
  if n_trials < 1:
    raise ValueError(f"--trials must be at least 1, got {n_trials}")
  index = args.worker_index if args.worker_index is not None else int(
      os.environ.get("SLURM_ARRAY_TASK_ID", 0))
  epochs = spec.base_config().num_epochs
  study = optuna.create_study(
      storage=storage, study_name=args.study, direction=spec.direction, load_if_exists=True,
      sampler=optuna.samplers.RandomSampler(),  # replaced below, once the history is known
      pruner=study_lib.make_pruner(args.pruner or declared.get("pruner", "median"), epochs))
  # Worker i of a fresh sweep samples with seed + i. A restarted worker must not draw the
  # stream it drew before (it would propose the killed trial's parameters again as new):
  # its seed also counts the trials already in the study.
  seed = None if args.seed is None else (
      args.seed + index + 1009 * len(study.get_trials(deepcopy=False)))
  study.sampler = study_lib.make_sampler(sampler_name, seed, grid)
  held = study.user_attrs.get("spec")
  if held is None:
    study.set_user_attr("spec", spec.to_json())
  elif held != spec.to_json():
    diff = {k: (held.get(k), v) for k, v in spec.to_json().items() if held.get(k) != v}
    raise ValueError(f"study {args.study!r} in {url} sweeps something else: "
                     + "; ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in diff.items())
                     + ". Use another --workdir or --study")
  if study.direction.name.lower() != spec.direction:
    raise ValueError(f"study {args.study!r} {study.direction.name.lower()}s; this command "
                     f"{spec.direction}s {spec.metric}")
  study.set_user_attr("trials", n_trials)
  return study, storage, n_trials


def _cpu_shares(k: int) -> list[Optional[set[int]]]:
  """K disjoint sets of the cores this process may use (None each when there are fewer)."""
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  if len(cores) < k:
    return [None] * k
  return [set(cores[i * len(cores) // k:(i + 1) * len(cores) // k]) for i in range(k)]


def _spawn_workers(argv: Sequence[str], k: int, n_trials: int) -> int:
  """K copies of this command as single workers, each on its own cores; their worst exit."""
  procs = []
  for i, cpus in enumerate(_cpu_shares(k)):
    cmd = [sys.executable, "-m", "cnn_jax.cli", "sweep", *argv, "--workers", "1",
           "--trials", str(n_trials), "--no_summary", "--worker_index", str(i)]
    pin = (lambda c=cpus: os.sched_setaffinity(0, c)) if cpus else None
    log.info("worker %d%s", i, f" on cores {sorted(cpus)}" if cpus else " (unpinned: fewer "
             "cores than workers)")
    procs.append(subprocess.Popen(cmd, preexec_fn=pin))
  while True:  # poll, not wait on one: a dead worker is reaped at once, not left a zombie
    try:  # (whose PID the other workers would still count as a live trial's)
      codes = [p.poll() for p in procs]
      if None not in codes:
        return max(codes, key=abs)
      time.sleep(0.5)
    except KeyboardInterrupt:  # the workers got the Ctrl-C too: they re-queue and stop
      continue


def _run_worker(args: argparse.Namespace, spec: space_lib.Spec, study: optuna.Study,
                storage: optuna.storages.RDBStorage, n_trials: int) -> dict[str, int]:
  from cnn_jax.sweep import trial as trial_lib  # noqa: PLC0415 - jax: only where trials run
  from cnn_jax.training import setup  # noqa: PLC0415
  base = spec.base_config()
  setup.use_compilation_cache(base.get("compilation_cache_dir"))
  setup.request_determinism(base)  # XLA reads its flags when the backend starts
  return study_lib.work(study, storage, n_trials, lambda trial, frozen: trial_lib.run(
      trial, frozen, spec, storage, args.workdir))


def print_summary(study: optuna.Study, workdir: str, spec_json: dict) -> None:
  params = [space_lib.parse(text) for text in spec_json.get("space", [])]
  ranges = {p.key: (p.args[0], p.args[1], p.log_scale) for p in params
            if p.kind not in ("choice", "categorical")}
  text = summary_lib.write(study, workdir, spec_json.get("metric", "objective"), ranges)
  print(text)
  print(f"\ntable: {os.path.join(workdir, 'summary.csv')} (.md); picture: "
        f"{os.path.join(workdir, 'sweep.png')}")


def main(argv: Sequence[str]) -> int:
  args, rest = _parser().parse_known_args(argv)
  overrides = [a for a in rest if a.startswith("--config.") and "=" in a]
  if len(overrides) != len(rest):
    bad = next(a for a in rest if a not in overrides)
    raise ValueError(f"unknown argument {bad!r} (config overrides are --config.KEY=VALUE)")
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  args.workdir = os.path.abspath(args.workdir)
  os.makedirs(args.workdir, exist_ok=True)
  if args.summary:
    url = study_lib.storage_url(args.storage, args.workdir)
    if not args.storage and not os.path.exists(os.path.join(args.workdir, "study.db")):
      raise FileNotFoundError(f"no sweep in {args.workdir} (no study.db): start one with "
                              "--config FILE.py --space ..., or give --storage URL")
    storage = study_lib.open_storage(url)
    if args.study not in optuna.get_all_study_names(storage):
      raise ValueError(f"no study {args.study!r} in {url}; it has: "
                       f"{', '.join(optuna.get_all_study_names(storage)) or 'none'}")
    study = optuna.load_study(study_name=args.study, storage=storage)
    print_summary(study, args.workdir, study.user_attrs.get("spec", {}))
    return 0
  if not args.config:
    raise ValueError("--config FILE.py[:VARIANT] is required (or --summary)")
  if args.workers < 1:
    raise ValueError(f"--workers must be at least 1, got {args.workers}")
  spec, declared = build_spec(args, overrides)
  study, storage, n_trials = open_study(args, spec, declared)
  with open(os.path.join(args.workdir, "sweep.json"), "w") as f:
    json.dump({"study": args.study, "storage": storage.url if not args.storage else "(given)",
               "trials": n_trials, **spec.to_json()}, f, indent=1)
  code = 0
  if args.workers > 1:
    code = _spawn_workers(argv, args.workers, n_trials)
  else:
    try:
      did = _run_worker(args, spec, study, storage, n_trials)
      log.info("worker done: %s", did)
    except study_lib.Requeue as e:
      print(f"cnn-jax sweep: stopped by a signal; its trial is queued again ({e})",
            file=sys.stderr)
      return e.exit_code
  if not args.no_summary:
    print_summary(study, args.workdir, spec.to_json())
  return code
