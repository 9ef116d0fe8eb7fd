"""Training images/s of `cnn-jax train --processes N` against one process, side by side.

  python benchmarks/processes_scaling.py [--runs mnist_cnn resnet20 airbench_full] [--setups 1 2 2:pmap]
      [--rounds 3] [--epochs 1]

A setup is N processes (`--processes N`), with ":pmap" for `--config.parallel=pmap`. Each
round runs every (experiment, setup) once, the order reversed every other round, so all
see the same machine state; each run is an ordinary `cnn-jax train` (its defaults: one
process keeps a small split on the device, several read with the host reader) on a slice
of the real data, with no validation and no test, and reports results.json's `train_images_per_sec` (every
step's images over the wall time of the epochs, compilation excluded). The median round
is reported with its ratio to one process. Results: benchmarks/results/processes_scaling.json.
Needs MNIST prepared by tfds (`cnn-jax prepare mnist ...`) and the CIFAR-10 JPEG copy
(`$CNN_JAX_CIFAR10_DIR` or ../shared/datasets).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = {  # name: (experiment, flags)
    "mnist_cnn": ("experiments/mnist_cnn.py", ["--config.dataset.train_split=train[:50%]"]),
    "resnet20": ("experiments/cifar10_resnet20.py:cpu",
                 ["--config.dataset.train_split=train[:10%]"]),
    "airbench_full": ("experiments/cifar10_fast.py:full",
                      ["--config.dataset.train_split=train[:5%]"]),
}
COMMON = ["--config.dataset.val_split=", "--config.dataset.test_split=",
          "--config.progress_bar=False", "--config.seed=0"]


def one_run(name: str, setup: str, epochs: int, root: str) -> dict:
  experiment, flags = RUNS[name]
  processes, _, mode = setup.partition(":")
  workdir = tempfile.mkdtemp(prefix=f"{name}_p{processes}{mode}_", dir=root)
  cmd = [sys.executable, "-m", "cnn_jax.cli", "train", "--config", experiment,
         "--workdir", workdir, f"--config.num_epochs={epochs}", *COMMON, *flags,
         "--processes", processes] + ([f"--config.parallel={mode}"] if mode else [])
  t = time.time()
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  return {"images_per_sec": results["train_images_per_sec"], "steps": results["steps"],
          "wall_s": round(time.time() - t, 1)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--runs", nargs="+", default=["mnist_cnn", "resnet20"], choices=list(RUNS))
  p.add_argument("--setups", nargs="+", default=["1", "2", "2:pmap"])
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--epochs", type=int, default=1)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                               "processes_scaling.json"))
  args = p.parse_args()
  rounds: dict = {name: {n: [] for n in args.setups} for name in args.runs}
  with tempfile.TemporaryDirectory() as root:
    for r in range(args.rounds):
      for name in args.runs:
        for n in (args.setups if r % 2 == 0 else args.setups[::-1]):
          rounds[name][n].append(one_run(name, n, args.epochs, root))
          print(f"round {r + 1} {name} {n}: "
                f"{rounds[name][n][-1]['images_per_sec']:.0f} img/s", flush=True)
  summary = {}
  for name, by_n in rounds.items():
    median = {n: statistics.median(x["images_per_sec"] for x in runs) for n, runs in by_n.items()}
    base = median[args.setups[0]]
    summary[name] = {f"processes_{n}": {"images_per_sec": round(v, 1),
                                        "ratio": round(v / base, 3), "rounds": by_n[n]}
                     for n, v in median.items()}
    print(name, " ".join(f"{n}: {v:.0f} img/s ({v / base:.2f}x)" for n, v in median.items()))
  out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "command": " ".join(["python", "benchmarks/processes_scaling.py", *sys.argv[1:]]),
         "epochs": args.epochs, "results": summary}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
