"""Start-up: seconds from `cnn-jax train` starting to its first training step done.

  python benchmarks/startup.py [--config experiments/mnist_cnn.py] [--repeats 3]

Runs the command in fresh processes (prepared MNIST: `cnn-jax prepare mnist` first) and
reads the trainer's "first step done Ns after the process started" line:
* cold: an empty persistent compilation cache (a first run of this config here),
* warm: the same cache again (every later start of the run, e.g. a resume),
* off: the cache turned off (--config.compilation_cache_dir='').
The decoded-data cache (data/cache.py) is warm in all three (a first-ever run also decodes
the split once). Also timed: `python -c "import jax"`, the floor no JAX program beats.
Results: benchmarks/results/startup.json (median of --repeats per kind).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

FIRST = re.compile(r"first step done ([\d.]+)s after the process started")


def first_step(config: str, cache: str, workdir: str) -> float:
  cmd = [sys.executable, "-m", "cnn_jax.cli", "train", "--config", config, "--workdir", workdir,
         "--config.num_epochs=1", "--config.dataset.max_train_examples=1280",
         "--config.dataset.max_eval_examples=200", "--config.progress_bar=False",
         f"--config.compilation_cache_dir={cache}"]
  out = subprocess.run(cmd, capture_output=True, text=True)
  found = FIRST.search(out.stderr)
  if out.returncode or not found:
    sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  return float(found.group(1))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="experiments/mnist_cnn.py")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "startup.json"))
  args = p.parse_args()
  times: dict[str, list[float]] = {"import_jax": [], "cold": [], "warm": [], "off": []}
  with tempfile.TemporaryDirectory() as tmp:
    first_step(args.config, "", os.path.join(tmp, "w-prime"))  # the decoded-data cache, once
    for r in range(args.repeats):
      t = time.perf_counter()
      subprocess.run([sys.executable, "-c", "import jax"], check=True)
      times["import_jax"].append(time.perf_counter() - t)
      cache = os.path.join(tmp, f"xla-{r}")
      times["cold"].append(first_step(args.config, cache, os.path.join(tmp, f"c{r}")))
      times["warm"].append(first_step(args.config, cache, os.path.join(tmp, f"w{r}")))
      times["off"].append(first_step(args.config, "", os.path.join(tmp, f"o{r}")))
      print({k: round(v[-1], 2) for k, v in times.items()}, flush=True)
  import jax
  result = {"config": args.config, "jax": jax.__version__, "cores": os.cpu_count(),
            "seconds_median": {k: round(statistics.median(v), 2) for k, v in times.items()},
            "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()}}
  print(json.dumps(result, indent=2))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
