"""Training images/s, cnn_jax against the same network in PyTorch on the CPU, side by side.

  python benchmarks/torch_vs_jax.py [--models lenet_like mnist_cnn resnet20] [--batch 128]
      [--steps 60] [--rounds 3] [--threads 2]

For each model both sides train the same architecture with Adam (lr 1e-3) on the same
synthetic uint8 batches, uint8 -> float normalisation included, with the same number of
threads (torch.set_num_threads; XLA:CPU uses its own pool, one per core):
* lenet_like: conv6 3x3, avg pool, conv16 3x3, avg pool, fc120-84-10 on 32x32x1;
* mnist_cnn: conv16 5x5, max pool, conv24 5x5, max pool, fc64, dropout 0.5, fc10 on 28x28x1;
* resnet20: He et al.'s CIFAR ResNet-20 (batch norm, option A shortcuts) on 32x32x3.
The JAX side is the project's own compiled `steps.train_step` on device-resident batches
(the loop's speed is benchmarks/loop_overhead.py's business); PyTorch runs eager. Rounds
alternate JAX / PyTorch so both see the same machine state; the median round is
reported, compilation / warm-up steps excluded. Results: benchmarks/results/torch_vs_jax.json.

Per core and scaling: `--cores 1 2` runs the comparison once per core count, each in a
fresh process pinned to that many cores (sched_setaffinity before jax and torch start, so
XLA's pool and torch's threads both see only those cores), and reports each side's
images/s per core count and its scaling (images/s on the most cores over one core), in
benchmarks/results/torch_vs_jax_cores.json.
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

SHAPES = {"lenet_like": (32, 32, 1), "mnist_cnn": (28, 28, 1), "resnet20": (32, 32, 3)}
MEAN_STD = {1: ((0.1307,), (0.3081,)), 3: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}


def bench_jax(model: str, images, labels, steps: int, dtype: str = "float32"):
  """A function timing `steps` compiled train steps of zoo model `model` (Adam, computing
  in `dtype`, float32 parameters) on device-resident batches; it returns seconds."""
  import jax
  import jax.numpy as jnp
  from ml_collections import ConfigDict
  from cnn_jax import models
  from cnn_jax.data import augment
  from cnn_jax.training import optim, steps as steps_lib
  from cnn_jax.training.train_state import create_train_state

  kwargs = {"dtype": models.compute_dtype(dtype)} if dtype != "float32" else {}
  net = models.get_model(model, **kwargs)
  tx, _ = optim.make_optimizer(ConfigDict(dict(name="adam", learning_rate=1e-3,
                                               schedule="constant")), 1, 1)
  shape = models.input_shape(model)
  state = create_train_state(net, tx, jax.random.key(0), shape)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(state.params))
  pre = augment.make_preprocess_fn(None, *MEAN_STD.get(shape[2], MEAN_STD[3]))
  step = jax.jit(functools.partial(steps_lib.train_step, preprocess=pre), donate_argnums=0)
  batches = [{"image": jax.device_put(i), "label": jax.device_put(l)} for i, l in zip(images, labels)]
  for b in batches[:2]:  # compile and warm up
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


def torch_net(model: str):
  import torch.nn as nn
  import torch.nn.functional as F

  if model == "lenet_like":
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(6, 16, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(576, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))
  if model == "mnist_cnn":
    return nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 24, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(384, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.b1 = nn.BatchNorm2d(cout)
      self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.b2 = nn.BatchNorm2d(cout)
      self.extra, self.stride = cout - cin, stride

    def forward(self, x):
      y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
      if self.stride > 1 or self.extra:  # option A: subsample, zero-pad the channels
        x = F.pad(x[:, :, ::self.stride, ::self.stride],
                  (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
      return F.relu(y + x)

  blocks, cin = [], 16
  for cout, stride in ((16, 1), (32, 2), (64, 2)):
    for i in range(3):
      blocks.append(Block(cin, cout, stride if i == 0 else 1))
      cin = cout
  return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                       *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def bench_torch(model: str, images, labels, steps: int, threads: int):
  import torch
  import torch.nn as nn
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  net = torch_net(model).train()
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  loss_fn = nn.CrossEntropyLoss()
  mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in MEAN_STD[SHAPES[model][2]])
  batches = [(torch.from_numpy(i).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(l).long())
             for i, l in zip(images, labels)]

  def one(x, y):
    x = (x.float() / 255.0 - mean) / std
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    return loss

  for x, y in batches[:2]:
    one(x, y)

  def run():
    t = time.perf_counter()
    for k in range(steps):
      one(*batches[k % len(batches)])
    return time.perf_counter() - t

  return run


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=list(SHAPES))
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=60, help="steps per round (resnet20: a sixth)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--cores", type=int, nargs="+",
                 help="one pinned run per core count, then per-core speed and scaling")
  p.add_argument("--pin", type=int, help=argparse.SUPPRESS)  # set by --cores' runs
  p.add_argument("--out", default=None)
  args = p.parse_args()
  results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
  if args.cores:
    by_cores(args, args.out or os.path.join(results, "torch_vs_jax_cores.json"))
    return
  args.out = args.out or os.path.join(results, "torch_vs_jax.json")
  if args.pin:  # before jax / torch start their thread pools
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.pin]))
  import jax
  import torch
  out = {"batch": args.batch, "rounds": args.rounds, "cores": os.cpu_count(),
         "cpu": platform.processor() or platform.machine(), "torch_threads": args.threads,
         "jax": jax.__version__, "torch": torch.__version__, "models": {}}
  for model in args.models:
    steps = max(5, args.steps // 6) if model == "resnet20" else args.steps
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (args.batch, *SHAPES[model])).astype(np.uint8) for _ in range(4)]
    labels = [rng.randint(0, 10, args.batch).astype(np.int32) for _ in range(4)]
    runners = {"jax": bench_jax(model, images, labels, steps),
               "torch": bench_torch(model, images, labels, steps, args.threads)}
    times = {k: [] for k in runners}
    for _ in range(args.rounds):
      for name, run in runners.items():
        times[name].append(run())
    ips = {k: args.batch * steps / statistics.median(v) for k, v in times.items()}
    out["models"][model] = {"steps_per_round": steps,
                            "images_per_sec": {k: round(v) for k, v in ips.items()},
                            "jax_over_torch": round(ips["jax"] / ips["torch"], 3)}
    print(model, json.dumps(out["models"][model]), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=2)
  print(f"wrote {args.out}")


def by_cores(args, out_path: str) -> None:
  """This comparison once per core count, each in its own pinned process."""
  import subprocess
  import sys
  import tempfile
  runs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for n in args.cores:
      out = os.path.join(tmp, f"{n}.json")
      subprocess.run([sys.executable, os.path.abspath(__file__), "--models", *args.models,
                      "--batch", str(args.batch), "--steps", str(args.steps), "--rounds",
                      str(args.rounds), "--threads", str(n), "--pin", str(n), "--out", out],
                     check=True)
      with open(out) as f:
        runs[n] = json.load(f)
  lo, hi = min(args.cores), max(args.cores)
  summary = {}
  for model in args.models:
    ips = {n: runs[n]["models"][model]["images_per_sec"] for n in args.cores}
    summary[model] = {
        "images_per_sec": {f"{n}_cores": ips[n] for n in args.cores},
        "jax_over_torch": {f"{n}_cores": runs[n]["models"][model]["jax_over_torch"]
                           for n in args.cores},
        f"scaling_{lo}_to_{hi}_cores": {k: round(ips[hi][k] / ips[lo][k], 3) for k in ("jax", "torch")}}
    print(model, json.dumps(summary[model]), flush=True)
  with open(out_path, "w") as f:
    json.dump({"cores": args.cores, "batch": args.batch, "rounds": args.rounds,
               "jax": runs[lo]["jax"], "torch": runs[lo]["torch"], "cpu": runs[lo]["cpu"],
               "models": summary}, f, indent=2)
  print(f"wrote {out_path}")


if __name__ == "__main__":
  main()
