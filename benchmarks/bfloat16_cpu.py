"""Training images/s on the CPU in float32 and in bfloat16 mixed precision (config.dtype).

  python benchmarks/bfloat16_cpu.py [--batch 128] [--steps 30] [--rounds 3]
                                    [--models mnist_cnn,lenet_like,resnet20]
                                    [--out benchmarks/results/bfloat16_cpu.json]

Answers one question of issue 13: is `config.dtype="bfloat16"` faster on the CPU? For each
model the bare jitted train step (`training.steps.train_step`: uint8 -> float
normalisation, forward, loss, backward, Adam) runs on the same synthetic uint8 batches in
both dtypes; parameters and optimizer state are float32 in both, only the computation
dtype differs. Rounds alternate float32 / bfloat16 so both see the same machine state;
the median round is reported. Compilation and warm-up steps are excluded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics

import numpy as np

from torch_vs_jax import bench_jax  # the one bare-step timer (same folder)

# The CIFAR / MNIST shapes the zoo registers these models for.
DEFAULT_MODELS = ("mnist_cnn", "lenet_like", "resnet20")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bfloat16_cpu.json")


def bench_model(name: str, batch: int, steps: int, rounds: int) -> dict:
  from cnn_jax import models
  rng = np.random.RandomState(0)
  shape = models.input_shape(name)
  images = [rng.randint(0, 256, (batch, *shape)).astype(np.uint8) for _ in range(4)]
  labels = [rng.randint(0, 10, batch).astype(np.int32) for _ in range(4)]
  runners = {dt: bench_jax(name, images, labels, steps, dt) for dt in ("float32", "bfloat16")}
  times: dict[str, list[float]] = {dt: [] for dt in runners}
  for _ in range(rounds):
    for dt, run in runners.items():
      times[dt].append(run())
  ips = {dt: batch * steps / statistics.median(t) for dt, t in times.items()}
  return {"input_shape": list(shape),
          "images_per_sec": {dt: round(v, 1) for dt, v in ips.items()},
          "bf16_over_fp32": round(ips["bfloat16"] / ips["float32"], 3),
          "round_seconds": {dt: [round(s, 3) for s in t] for dt, t in times.items()}}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=30, help="train steps per timed round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--models", default=",".join(DEFAULT_MODELS))
  p.add_argument("--out", default=RESULTS, help="JSON file to write ('' : print only)")
  args = p.parse_args()
  import jax
  result = {
      "what": "bare jitted train step (Adam), float32 vs config.dtype='bfloat16'",
      "batch": args.batch, "steps_per_round": args.steps, "rounds": args.rounds,
      "backend": jax.default_backend(), "cpu": platform.processor() or platform.machine(),
      "cores": os.cpu_count(), "jax": jax.__version__,
      "models": {name: bench_model(name, args.batch, args.steps, args.rounds)
                 for name in args.models.split(",") if name},
  }
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
