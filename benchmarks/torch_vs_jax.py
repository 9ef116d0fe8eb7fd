"""Training images/s of mnist_cnn at batch 128: cnn_jax vs the same network in PyTorch.

  python benchmarks/torch_vs_jax.py [--batch 128] [--steps 200] [--rounds 3] [--threads 2]

Both sides train the same architecture (conv16 5x5, max pool, conv24 5x5, max pool,
fc64, dropout 0.5, fc10) with Adam on the same synthetic uint8 batches, including the
uint8 -> float normalisation. Rounds alternate JAX / PyTorch so both see the same machine
state; the median round is reported. Compilation / warm-up steps are excluded.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time

import numpy as np


def bench_jax(images, labels, steps):
  import jax
  from ml_collections import ConfigDict
  from cnn_jax import models
  from cnn_jax.data import augment
  from cnn_jax.training import optim, steps as steps_lib
  from cnn_jax.training.train_state import create_train_state

  model = models.get_model("mnist_cnn")
  tx, _ = optim.make_optimizer(ConfigDict(dict(name="adam", learning_rate=1e-3,
                                               schedule="constant")), 1, 1)
  state = create_train_state(model, tx, jax.random.key(0), (28, 28, 1))
  pre = augment.make_preprocess_fn(None, (0.1307,), (0.3081,))
  step = jax.jit(functools.partial(steps_lib.train_step, preprocess=pre), donate_argnums=0)
  batches = [{"image": jax.device_put(i), "label": jax.device_put(l)} for i, l in zip(images, labels)]
  for b in batches[:3]:  # compile and warm up
    state, m = step(state, b)
  jax.block_until_ready(state)

  def run():
    nonlocal state
    t = time.perf_counter()
    for k in range(steps):
      state, m = step(state, batches[k % len(batches)])
    jax.block_until_ready(state)
    return time.perf_counter() - t

  return run


def bench_torch(images, labels, steps, threads):
  import torch
  import torch.nn as nn
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  net = nn.Sequential(
      nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(16, 24, 5), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(), nn.Linear(384, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  loss_fn = nn.CrossEntropyLoss()
  batches = [(torch.from_numpy(i).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(l).long())
             for i, l in zip(images, labels)]

  def one(x, y):
    x = (x.float() / 255.0 - 0.1307) / 0.3081
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    return loss

  for x, y in batches[:3]:
    one(x, y)

  def run():
    t = time.perf_counter()
    for k in range(steps):
      one(*batches[k % len(batches)])
    return time.perf_counter() - t

  return run


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  args = p.parse_args()
  rng = np.random.RandomState(0)
  images = [rng.randint(0, 256, (args.batch, 28, 28, 1)).astype(np.uint8) for _ in range(8)]
  labels = [rng.randint(0, 10, args.batch).astype(np.int32) for _ in range(8)]
  runners = {"jax": bench_jax(images, labels, args.steps),
             "torch": bench_torch(images, labels, args.steps, args.threads)}
  times = {k: [] for k in runners}
  for _ in range(args.rounds):
    for name, run in runners.items():
      times[name].append(run())
  ips = {k: args.batch * args.steps / statistics.median(v) for k, v in times.items()}
  import jax
  import torch
  print(json.dumps({
      "model": "mnist_cnn", "batch": args.batch, "steps_per_round": args.steps,
      "rounds": args.rounds, "cpu": platform.processor() or platform.machine(),
      "cores": os.cpu_count(), "torch_threads": args.threads,
      "jax": jax.__version__, "torch": torch.__version__,
      "images_per_sec": {k: round(v) for k, v in ips.items()},
      "jax_over_torch": round(ips["jax"] / ips["torch"], 3)}, indent=2))


if __name__ == "__main__":
  main()
