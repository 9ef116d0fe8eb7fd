"""Is the input pipeline the bottleneck? Pipeline images/s alone, and the train step fed by it.

  python benchmarks/input_pipeline.py [--experiments mnist_cnn cifar10_fast imagenette_resnet18]
      [--workers 0 1 2] [--batches 30] [--steps 8] [--out benchmarks/results/input_pipeline.json]

For each experiment config (its data set, batch size and host-side pp_train):
1. the pipeline alone: train batches per second from `input_pipeline.train_batches` with
   0, 1 and 2 grain worker processes (after the first batch, which includes start-up);
2. the compiled train step on one fixed in-memory batch (device-resident), against the
   same step fed batch by batch from the pipeline (host -> device transfer included, the
   loop's prefetch as in training). The ratio fed / fixed should be >= 0.95.
Data sets come from the experiment configs (the cached decoded splits: run each
experiment's :smoke once, or let the first call here build the cache).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str):
  from ml_collections import config_flags  # noqa: F401 - same loader as the CLI
  import runpy
  return runpy.run_path(os.path.join(ROOT, "experiments", f"{name}.py"))["get_config"]()


def pipeline_rate(source, cfg, workers: int, batches: int) -> float:
  from cnn_jax.data import input_pipeline
  bs = cfg.batch_size
  spe = len(source) // bs
  it = input_pipeline.train_batches(source, bs, 0, steps_per_epoch=spe, num_steps=batches + 1,
                                    pp=cfg.dataset.pp_train,
                                    **{**input_pipeline.reader_options(cfg.dataset),
                                       "workers": workers})
  next(it)  # start-up (workers spawning) excluded
  t = time.perf_counter()
  n = sum(1 for _ in it)
  return n * bs / (time.perf_counter() - t)


def step_rates(s, cfg, steps: int) -> tuple[float, float]:
  import jax
  from cnn_jax import parallel
  from cnn_jax.data import input_pipeline
  state = s.compiled.init_state(jax.random.key(0))
  spe = len(s.train_data) // cfg.batch_size
  batches = lambda: input_pipeline.train_batches(
      s.train_data, cfg.batch_size, 0, steps_per_epoch=spe, num_steps=steps + 2,
      pp=cfg.dataset.pp_train, **input_pipeline.reader_options(cfg.dataset))
  fixed = s.compiled.put_batch(next(batches()))
  state, m = s.compiled.train_step(state, fixed)  # compile
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = s.compiled.train_step(state, fixed)
  jax.block_until_ready(m)
  fixed_rate = steps * cfg.batch_size / (time.perf_counter() - t)
  it = parallel.prefetch(batches(), s.compiled.put_batch)
  state, m = s.compiled.train_step(state, next(it))
  jax.block_until_ready(m)
  t, n = time.perf_counter(), 0
  for batch in it:
    state, m = s.compiled.train_step(state, batch)
    n += 1
    if n == steps:
      break
  jax.block_until_ready(m)
  return fixed_rate, steps * cfg.batch_size / (time.perf_counter() - t)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--experiments", nargs="+", default=["mnist_cnn", "cifar10_fast", "imagenette_resnet18"])
  p.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
  p.add_argument("--batches", type=int, default=30)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "input_pipeline.json"))
  args = p.parse_args()
  import jax
  from cnn_jax.training import setup
  os.chdir(ROOT)  # experiment configs name data folders relative to the project root
  results = {"device": str(jax.devices()[0].device_kind), "cpus": os.cpu_count(), "runs": {}}
  for name in args.experiments:
    cfg = load_config(name)
    cfg.dataset.val_split = ""
    t = time.perf_counter()
    s = setup.setup(cfg)
    row = {"batch_size": cfg.batch_size, "pp_train": cfg.dataset.pp_train,
           "setup_seconds": time.perf_counter() - t, "train_examples": len(s.train_data)}
    row["pipeline_images_per_sec"] = {str(w): pipeline_rate(s.train_data, cfg, w, args.batches)
                                      for w in args.workers}
    fixed, fed = step_rates(s, cfg, args.steps)
    row.update(step_fixed_batch_images_per_sec=fixed, step_fed_by_pipeline_images_per_sec=fed,
               fed_over_fixed=fed / fixed)
    results["runs"][name] = row
    print(name, json.dumps(row, indent=1), file=sys.stderr, flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
