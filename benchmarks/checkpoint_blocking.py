"""How long a checkpoint save blocks the training loop, with and without async saving.

  python benchmarks/checkpoint_blocking.py [--saves 5] [--dir /tmp/ckpt_bench]

For mnist_cnn (35 k parameters) and a 10.0 M-parameter MLP, with Adam state (so the
saved state is ~3x the parameters): the median wall time of `Checkpoints.save` (the
time a train step waits), and of the save plus `wait_until_finished` (the time until
the checkpoint is committed on disk).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time

import jax
from ml_collections import ConfigDict

from cnn_jax import checkpoint as ckpt_lib
from cnn_jax import models
from cnn_jax.training import optim
from cnn_jax.training.train_state import create_train_state

MODELS = {"mnist_cnn": ("mnist_cnn", {}), "mlp_10m": ("mlp", {"hidden": (2048, 2048, 2048)})}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--saves", type=int, default=5)
  p.add_argument("--dir", default="/tmp/cnn_jax_ckpt_bench")
  args = p.parse_args()
  tx, _ = optim.make_optimizer(ConfigDict(dict(name="adam", learning_rate=1e-3,
                                               schedule="constant")), 1, 1)
  out = {}
  for name, (base, kwargs) in MODELS.items():
    state = jax.jit(lambda r: create_train_state(models.get_model(base, **kwargs), tx, r,
                                                 (28, 28, 1)))(jax.random.key(0))
    mb = sum(x.nbytes for x in jax.tree_util.tree_leaves(ckpt_lib.state_to_tree(state))) / 2**20
    out[name] = {"state_MiB": round(mb, 1)}
    for async_save in (False, True):
      d = os.path.join(args.dir, f"{name}_{async_save}")
      shutil.rmtree(d, ignore_errors=True)
      ck = ckpt_lib.Checkpoints(d, keep=2, best_metric=None, async_save=async_save)
      blocked, committed = [], []
      for i in range(args.saves + 1):
        st = state.replace(step=state.step + i)
        t = time.perf_counter()
        ck.save(st, {"step": i}, force=True)
        t1 = time.perf_counter()
        ck.wait()
        t2 = time.perf_counter()
        if i:  # the first save sets up directories / thread pools
          blocked.append(t1 - t)
          committed.append(t2 - t)
      ck.close()
      key = "async" if async_save else "sync"
      out[name][f"{key}_blocking_ms"] = round(1e3 * statistics.median(blocked), 1)
      out[name][f"{key}_committed_ms"] = round(1e3 * statistics.median(committed), 1)
  print(json.dumps({"cores": os.cpu_count(), **out}, indent=2))


if __name__ == "__main__":
  main()
