"""resnet20's train step with its small-map convolutions split over the batch, side by side.

  python benchmarks/conv_batch_split.py [--rounds 5]

benchmarks/conv_scaling.py shows XLA:CPU's convolution kernel using one core for
resnet20's 16x16 and 8x8 maps, while two independent convolutions of the batch's halves
run side by side. This times torch_vs_jax.py's resnet20 step (Adam, batch 128, synthetic
data) as it is and with every convolution on maps of at most 16x16 computed that way
(the same outputs; the kernel gradient summed from two halves), in alternating rounds.
Not a switch of the project: a measurement of what such a formulation would give.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_vs_jax  # noqa: E402  (its bench_jax: the project's compiled train step)
from cnn_jax.layers import conv as conv_module  # noqa: E402


class _SplitSmallMaps:
  """`lax` with conv_general_dilated splitting the batch in two for maps <= 16x16."""

  def __getattr__(self, name):
    return getattr(lax, name)

  @staticmethod
  def conv_general_dilated(x, k, *args, **kwargs):
    if x.shape[1] * x.shape[2] <= 256 and x.shape[0] % 2 == 0:
      return jnp.concatenate([lax.conv_general_dilated(h, k, *args, **kwargs)
                              for h in jnp.split(x, 2, axis=0)], 0)
    return lax.conv_general_dilated(x, k, *args, **kwargs)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=10)
  args = p.parse_args()
  rng = np.random.RandomState(0)
  images = [rng.randint(0, 256, (128, 32, 32, 3)).astype(np.uint8) for _ in range(4)]
  labels = [rng.randint(0, 10, 128).astype(np.int32) for _ in range(4)]
  runs = {"kernel": torch_vs_jax.bench_jax("resnet20", images, labels, args.steps)}
  conv_module.lax = _SplitSmallMaps()  # traced (and compiled) inside bench_jax
  try:
    runs["split_batch"] = torch_vs_jax.bench_jax("resnet20", images, labels, args.steps)
  finally:
    conv_module.lax = lax
  times = {k: [] for k in runs}
  for _ in range(args.rounds):
    for k, run in runs.items():
      times[k].append(run())
  ips = {k: round(128 * args.steps / statistics.median(v)) for k, v in times.items()}
  out = {"model": "resnet20", "batch": 128, "cores": len(os.sched_getaffinity(0)),
         "images_per_sec": ips, "split_over_kernel": round(ips["split_batch"] / ips["kernel"], 3)}
  print(json.dumps(out))
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "conv_batch_split.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=2)


if __name__ == "__main__":
  main()
