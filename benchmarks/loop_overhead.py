"""Training images/s of `cnn-jax train`'s loop against its bare compiled step, side by side.

  python benchmarks/loop_overhead.py [--models lenet_like mnist_cnn resnet20] [--rounds 3]

Each model is trained from its experiment config (mnist_lenet_like.py, mnist_cnn.py,
cifar10_resnet20.py) on one in-memory split, with validation, test and checkpoints as in
a real run except that no evaluation runs (val_split = test_split = ""), so the figure is
the loop's training throughput:

* bare: the run's own compiled `train_step` (`setup(config).compiled`) on batches that
  are already on the device, one `block_until_ready` at the end;
* loop: `trainer.train_and_evaluate` on the same split, as `cnn-jax train` runs it: the
  split kept on the device (dataset.on_device="auto"), prefetch, metric fetches every
  log_every_steps, tqdm, the end-of-epoch checkpoint. Its images/s is every step's images
  over the wall time from each epoch's first step's end to its last step's end
  (compilation excluded), as `cnn-jax train` logs it;
* loop_host: the same with dataset.on_device="never": the grain reader and a host ->
  device copy per step (what a split that is not held in memory gets).

Rounds alternate bare / loop; the median round is reported. MNIST data is the real MNIST
(tfds, prepared) when it is there, else random uint8 images of its shape (the JSON says
which); resnet20 runs on random CIFAR-shaped images (throughput does not depend on them).
Results: benchmarks/results/loop_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np

EXPERIMENTS = {"lenet_like": "mnist_lenet_like.py", "mnist_cnn": "mnist_cnn.py",
               "resnet20": "cifar10_resnet20.py"}


def load_config(model: str, epochs: int, examples: int):
  import runpy
  here = os.path.dirname(os.path.abspath(__file__))
  c = runpy.run_path(os.path.join(here, "..", "experiments", EXPERIMENTS[model]))["get_config"]()
  c.num_epochs = epochs
  c.dataset.val_split = c.dataset.test_split = ""
  c.dataset.max_train_examples = examples
  c.progress_bar = True
  return c


def data_for(model: str, config, examples: int):
  """(split, what it is): real MNIST when prepared, else random images of the right shape."""
  from cnn_jax.data import sources
  from cnn_jax.data.split import Split
  if model != "resnet20":
    try:
      split = sources.load_source(config.dataset, "train", max_examples=examples)
      return Split(np.asarray(split.images), split.labels, 10), "MNIST train (tfds)"
    except Exception as e:  # noqa: BLE001 - not prepared here
      print(f"  MNIST not available ({type(e).__name__}); random images instead")
  shape = (28, 28, 1) if model != "resnet20" else (32, 32, 3)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (examples,) + shape, dtype=np.uint8)
  return Split(images, rng.integers(0, 10, examples).astype(np.int32), 10), "random uint8"


def bare(config, split, steps: int) -> float:
  """images/s of the compiled step alone, on device-resident batches."""
  import jax
  from cnn_jax.data import input_pipeline
  from cnn_jax.training.setup import setup
  s = setup(config, train_data=split)
  state = s.compiled.init_state(jax.random.key(config.seed))
  make = input_pipeline.TrainBatch(split, config.batch_size, s.steps_per_epoch, config.seed,
                                   config.dataset.pp_train)
  batches = [s.compiled.put_batch(make(i)) for i in range(min(8, s.steps_per_epoch))]
  state, m = s.compiled.train_step(state, batches[0])  # compile
  jax.block_until_ready((state, m))
  t = time.perf_counter()
  for i in range(steps):
    state, m = s.compiled.train_step(state, batches[i % len(batches)])
  jax.block_until_ready((state, m))
  return steps * config.batch_size / (time.perf_counter() - t)


def loop(config, split, on_device: str = "auto") -> float:
  from cnn_jax.training import trainer
  config = config.copy_and_resolve_references()
  config.dataset.on_device = on_device
  with tempfile.TemporaryDirectory() as workdir:
    summary = trainer.train_and_evaluate(config, workdir, train_data=split)
  return float(summary["train_images_per_sec"])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", nargs="+", default=list(EXPERIMENTS))
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                "loop_overhead.json"))
  args = p.parse_args()
  import jax
  results = {"cpu": platform.machine(), "cores": os.cpu_count(), "jax": jax.__version__,
             "devices": [d.device_kind for d in jax.devices()], "models": {}}
  for model in args.models:
    examples = 2560 if model == "resnet20" else 25600
    config = load_config(model, args.epochs, examples)
    split, what = data_for(model, config, examples)
    steps = args.epochs * (examples // config.batch_size) - args.epochs
    rates = {"bare": [], "loop": [], "loop_host": []}
    for r in range(args.rounds):
      rates["bare"].append(bare(config, split, steps))
      rates["loop"].append(loop(config, split))
      rates["loop_host"].append(loop(config, split, "never"))
      print(f"{model} round {r}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
            + " img/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    results["models"][model] = {
        "batch": config.batch_size, "data": what, "examples": examples, "epochs": args.epochs,
        "images_per_sec": {k: round(v) for k, v in med.items()},
        "rounds": {k: [round(x) for x in v] for k, v in rates.items()},
        "loop_over_bare": round(med["loop"] / med["bare"], 3),
        "loop_host_over_bare": round(med["loop_host"] / med["bare"], 3)}
    print(json.dumps(results["models"][model]), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
