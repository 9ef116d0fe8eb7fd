"""A zoo model's train step with Conv2D's batch split off and on (its default on CPUs), side by side.

  python benchmarks/conv_batch_split.py [--model resnet20] [--batch 128] [--rounds 5]

benchmarks/conv_scaling.py shows XLA:CPU's convolution kernel using one core for
resnet20's 16x16 and 8x8 maps, while two independent convolutions of the batch's halves
run side by side. Conv2D computes maps of at most 16x16 with at least 32 input channels
that way on one CPU device (layers/conv.py, split_batch_wanted); CNN_JAX_CONV_SPLIT=0
turns it off. This times
torch_vs_jax.py's step of the model (Adam, synthetic data) compiled each way, in
alternating rounds. Results: benchmarks/results/conv_batch_split.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_vs_jax  # noqa: E402  (its bench_jax: the project's compiled train step)
from cnn_jax import models  # noqa: E402


def compiled(model: str, split: bool, images, labels, steps: int):
  """bench_jax's timer, traced (and so compiled) with the split on or off."""
  before = os.environ.get("CNN_JAX_CONV_SPLIT")
  os.environ["CNN_JAX_CONV_SPLIT"] = "1" if split else "0"
  try:
    return torch_vs_jax.bench_jax(model, images, labels, steps)
  finally:
    os.environ.pop("CNN_JAX_CONV_SPLIT")
    if before is not None:
      os.environ["CNN_JAX_CONV_SPLIT"] = before


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="resnet20", help="a zoo model (cnn-jax models)")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=10)
  args = p.parse_args()
  rng = np.random.RandomState(0)
  shape = models.input_shape(args.model)
  images = [rng.randint(0, 256, (args.batch, *shape)).astype(np.uint8) for _ in range(4)]
  labels = [rng.randint(0, 10, args.batch).astype(np.int32) for _ in range(4)]
  runs = {"kernel": compiled(args.model, False, images, labels, args.steps),
          "split_batch": compiled(args.model, True, images, labels, args.steps)}
  times = {k: [] for k in runs}
  for _ in range(args.rounds):
    for k, run in runs.items():
      times[k].append(run())
  ips = {k: round(args.batch * args.steps / statistics.median(v)) for k, v in times.items()}
  out = {"model": args.model, "batch": args.batch, "cores": len(os.sched_getaffinity(0)),
         "images_per_sec": ips, "split_over_kernel": round(ips["split_batch"] / ips["kernel"], 3)}
  print(json.dumps(out))
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                      "conv_batch_split.json")
  everything = {}
  if os.path.exists(path):  # one entry per model, earlier models kept
    with open(path) as f:
      everything = json.load(f)
    everything = everything if "model" not in everything else {everything["model"]: everything}
  everything[args.model] = out
  with open(path, "w") as f:
    json.dump(everything, f, indent=2)


if __name__ == "__main__":
  main()
