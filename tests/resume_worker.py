"""A training run in its own process, for the kill / signal tests.

  python resume_worker.py WORKDIR OUT.npz [--slow SECONDS] [--workers N] [--compilation-cache DIR]

Trains a small convnet with batch norm on a fixed synthetic data set, checkpointing every
3 steps, and writes the whole final TrainState (params, batch_stats, opt_state, step and
the raw rng key data, one array per leaf under "state/<path>"), its tree structure
("treedef") and the eval metrics to OUT.npz. --slow sleeps before each batch so that the
test can interrupt it mid-epoch.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax.data import input_pipeline  # noqa: E402
from cnn_jax.training import guards, trainer  # noqa: E402
from helpers import random_split, tiny_config  # noqa: E402
from state_compare import state_arrays  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("workdir")
  p.add_argument("out")
  p.add_argument("--slow", type=float, default=0.0)
  p.add_argument("--workers", type=int, default=0)
  p.add_argument("--compilation-cache", default="")
  args = p.parse_args()
  if args.compilation_cache:  # the test's runs share compiled steps, as restarts of `cnn-jax train` do
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if args.slow:
    real = input_pipeline.train_batches

    def slow_batches(*a, **kw):
      for b in real(*a, **kw):
        time.sleep(args.slow)
        yield b

    input_pipeline.train_batches = slow_batches
  cfg = tiny_config("small_convnet", num_epochs=2, checkpoint_every_steps=3, log_every_steps=4)
  # Batch norm: running statistics that a resume must restore besides params and Adam's moments.
  cfg.model_kwargs = {"batch_norm": True, "widths": (8, 16, 32)}
  # augmentation (image ops and a batch mix): must replay exactly
  cfg.augment = "pad_crop(2)|cutout(6)|mixup(0.2)"
  # Host-side random ops in grain workers too: the batches must not depend on the worker count.
  cfg.dataset.pp_train = "random_crop(28, padding=1)|flip_lr"
  cfg.dataset.workers = args.workers
  train, test = random_split(512, seed=0), random_split(100, seed=1)
  try:
    r = trainer.train_and_evaluate(cfg, args.workdir, train, test)
  except guards.Preempted as e:
    print(e, flush=True)
    sys.exit(e.exit_code)
  np.savez(args.out, **state_arrays(r["state"]),
           **{f"eval_{k}": v for k, v in r["validation"].items()})


if __name__ == "__main__":
  main()
