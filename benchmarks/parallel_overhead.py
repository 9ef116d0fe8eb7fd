"""Step time of each parallel path vs a plain single-device `jax.jit` step.

  python benchmarks/parallel_overhead.py [--devices 1 8] [--steps 30]

For each simulated device count (a subprocess each, since XLA fixes the count at
start-up; on a GPU machine pass --devices 1 to use the real device) and each model
(mnist_cnn at batch 128, and a 10.0M-parameter MLP 784-2048-2048-2048-10 at batch 128),
it times: plain jit on one device, the sharded (jit over a Mesh) path and the pmap path,
all through the same `steps.train_step`. The median over rounds is reported.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = {"mnist_cnn": {}, "mlp_10m": {"hidden": (2048, 2048, 2048)}}


def child(ndev: int, steps: int, rounds: int) -> dict:
  import jax
  import numpy as np
  from ml_collections import ConfigDict
  from cnn_jax import models, parallel
  from cnn_jax.data import augment
  from cnn_jax.training import optim, steps as steps_lib
  from cnn_jax.training.train_state import create_train_state

  batch = 128
  rng = np.random.RandomState(0)
  data = {"image": rng.randint(0, 256, (batch, 28, 28, 1)).astype(np.uint8),
          "label": rng.randint(0, 10, batch).astype(np.int32)}
  pre = augment.make_preprocess_fn(None, (0.1307,), (0.3081,))
  tx, _ = optim.make_optimizer(ConfigDict(dict(name="momentum", learning_rate=0.01,
                                               schedule="constant", momentum=0.9)), 1, 1)
  train_fn = functools.partial(steps_lib.train_step, preprocess=pre)
  eval_fn = functools.partial(steps_lib.eval_step, preprocess=pre)
  results = {}
  for name, kwargs in MODELS.items():
    base = "mlp" if name.startswith("mlp") else name
    init_fn = lambda r, base=base, kwargs=kwargs: create_train_state(
        models.get_model(base, **kwargs), tx, r, (28, 28, 1))
    pmap_init = lambda r, base=base, kwargs=kwargs: create_train_state(
        models.get_model(base, axis_name=parallel.PMAP_AXIS, **kwargs), tx, r, (28, 28, 1))
    runners = {}
    # plain jit on one device: the baseline every path is compared with
    state = jax.jit(init_fn)(jax.random.key(0))
    plain = jax.jit(train_fn, donate_argnums=0)
    on_dev = jax.device_put(data, jax.devices()[0])
    runners["plain_jit"] = (plain, state, lambda: on_dev)
    for mode in parallel.MODES:
      c = parallel.compile_steps(mode, pmap_init if mode == "pmap" else init_fn, train_fn, eval_fn)
      st = c.init_state(jax.random.key(0))
      put = c.put_batch(data) if mode == "sharded" else jax.device_put(c.put_batch(data))
      runners[mode] = (c.train_step, st, lambda put=put: put)
    times = {k: [] for k in runners}
    for _ in range(rounds):
      for k, (fn, st, get) in runners.items():
        b = get()
        for _ in range(2):  # compile; the second call sees the step's own output shardings
          st, m = fn(st, b)
        jax.block_until_ready(st)
        t = time.perf_counter()
        for _ in range(steps):
          st, m = fn(st, b)
        jax.block_until_ready(st)
        times[k].append((time.perf_counter() - t) / steps)
        runners[k] = (fn, st, get)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    results[name] = {"step_ms": {k: round(v, 3) for k, v in med.items()},
                     "overhead_vs_plain_jit_pct": {k: round(100 * (med[k] / med["plain_jit"] - 1), 1)
                                                  for k in parallel.MODES}}
  return {"devices": jax.device_count(), "platform": jax.devices()[0].platform, **results}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--devices", type=int, nargs="+", default=[1, 8])
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child is not None:
    print(json.dumps(child(args.child, args.steps, args.rounds)))
    return
  out = []
  for n in args.devices:
    env = dict(os.environ)
    if env.get("JAX_PLATFORMS", "cpu") == "cpu" and n > 1:
      env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    r = subprocess.run([sys.executable, __file__, "--child", str(n), "--steps", str(args.steps),
                        "--rounds", str(args.rounds)], env=env, capture_output=True, text=True)
    if r.returncode:
      sys.exit(r.stderr)
    out.append(json.loads(r.stdout.strip().splitlines()[-1]))
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
