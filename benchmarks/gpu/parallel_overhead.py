"""On one GPU: what the parallel paths and the input pipeline cost over a plain jit step.

  python benchmarks/gpu/parallel_overhead.py [--model resnet50] [--batch 256]
      [--image_size 224] [--steps 30] [--rounds 5] [--out_dir benchmarks/results]
  python benchmarks/gpu/parallel_overhead.py --smoke        # CPU, tiny: code paths only

1. Parallel modes (target: < 3% over plain jit). The same `steps.train_step` (ResNet-50,
   bf16, batch 256, SGD momentum) timed three ways on one fixed device batch: plain
   `jax.jit` (donated state) on one device, `parallel.compile_steps("sharded")` (jit over
   a 1-device Mesh, what `cnn-jax train` runs) and `compile_steps("pmap")`.
2. Real data vs synthetic (target: within 5%). The sharded step fed by the project's
   input pipeline — an in-memory `split.Split` of uint8 images read by
   `input_pipeline.train_batches` (grain, reader threads) and copied ahead by
   `parallel.prefetch(..., compiled.put_batch)` — against the same step on one batch
   already on the device. The difference is what the host side (gather, host-to-device
   copy, Python) fails to hide behind the device's step. Where the checkout has
   `dataset.on_device` (`Compiled.train_from_index`), a fifth runner keeps the source on
   the device and sends each step's example indices only.

Rounds alternate between the runners; the median round is reported.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_common  # noqa: E402

import numpy as np  # noqa: E402

NAME = "parallel_overhead"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TARGETS = {"sharded_vs_plain_jit_pct": 3.0, "pmap_vs_plain_jit_pct": 3.0,
           "pipeline_vs_device_batch_pct": 5.0, "on_device_index_vs_device_batch_pct": 5.0}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  gpu_common.add_common_args(p, NAME)
  p.add_argument("--model", default=None, help="default resnet50 (--smoke: tiny_cnn)")
  p.add_argument("--batch", type=int, default=None, help="default 256 (--smoke: 8)")
  p.add_argument("--image_size", type=int, default=None, help="default 224 (--smoke: 32)")
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
  p.add_argument("--steps", type=int, default=None, help="steps per round (default 30; --smoke 2)")
  p.add_argument("--rounds", type=int, default=None, help="default 5 (--smoke 2)")
  p.add_argument("--source_images", type=int, default=None,
                 help="images in the in-memory source (default 2048; --smoke 32)")
  p.add_argument("--threads", type=int, default=4, help="grain reader threads")
  p.add_argument("--prefetch", type=int, default=4, help="grain batches read ahead")
  p.add_argument("--device_prefetch", type=int, default=2, help="parallel.prefetch size")
  args = p.parse_args()
  started = time.perf_counter()
  smoke = args.smoke
  args.model = args.model or ("tiny_cnn" if smoke else "resnet50")
  args.batch = args.batch or (8 if smoke else 256)
  args.image_size = args.image_size or (32 if smoke else 224)
  args.steps = args.steps or (2 if smoke else 30)
  args.rounds = args.rounds or (2 if smoke else 5)
  args.source_images = args.source_images or (32 if smoke else 2048)
  gpu_common.smoke_platform(smoke)

  import jax
  from ml_collections import ConfigDict
  from cnn_jax import models, parallel
  from cnn_jax.data import augment, input_pipeline
  from cnn_jax.data.split import Split
  from cnn_jax.training import optim, steps as steps_lib
  from cnn_jax.training.train_state import create_train_state

  if jax.device_count() != 1:
    raise SystemExit(f"this benchmark is for one device; {jax.device_count()} are visible "
                     "(CUDA_VISIBLE_DEVICES=0)")
  size, batch = args.image_size, args.batch
  shape = (size, size, 3)
  model, dtype, note = gpu_common.get_model(args.model, args.dtype, smoke, num_classes=args.classes)
  pmodel = (models.get_model(args.model, num_classes=args.classes, axis_name=parallel.PMAP_AXIS,
                             **({"dtype": models.compute_dtype(dtype)} if dtype != "float32" else {}))
            if "axis_name" in models.constructor_args(args.model) else model)
  tx, _ = optim.make_optimizer(ConfigDict(dict(name="momentum", learning_rate=0.1,
                                               schedule="constant", momentum=0.9)), 1, 1)
  pre = augment.make_preprocess_fn(None, MEAN, STD)
  train_fn = functools.partial(steps_lib.train_step, preprocess=pre)
  eval_fn = functools.partial(steps_lib.eval_step, preprocess=pre)
  init_fn = lambda r: create_train_state(model, tx, r, shape)
  pmap_init = lambda r: create_train_state(pmodel, tx, r, shape)

  rng = np.random.default_rng(0)
  n = max(args.source_images, 2 * batch)
  source = Split(rng.integers(0, 256, (n, *shape), np.uint8),
                 rng.integers(0, args.classes, n).astype(np.int32), args.classes)
  fixed = input_pipeline.TrainBatch(source, batch, n // batch, 0, "")(0)

  # runner: (step, state, next_batch)
  runners, first_step = {}, {}

  def add(name, step, state, next_batch):
    t = time.perf_counter()
    for _ in range(2):  # compile; the second call sees the step's own output shardings
      state, _ = step(state, next_batch())
    jax.block_until_ready(state)
    first_step[name] = round(time.perf_counter() - t, 2)
    runners[name] = [step, state, next_batch]

  plain_batch = jax.device_put(fixed, jax.devices()[0])
  add("plain_jit", jax.jit(train_fn, donate_argnums=0), jax.jit(init_fn)(jax.random.key(0)),
      lambda: plain_batch)
  compiled = {}
  for mode in parallel.MODES:
    c = compiled[mode] = parallel.compile_steps(mode, pmap_init if mode == "pmap" else init_fn,
                                                train_fn, eval_fn)
    b = c.put_batch(fixed)
    add(mode, c.train_step, c.init_state(jax.random.key(0)), lambda b=b: b)

  # The input pipeline: the sharded step fed from the in-memory source.
  c = compiled["sharded"]
  spe = n // batch
  warm = 2 + args.device_prefetch
  total = warm + args.rounds * args.steps
  stream = parallel.prefetch(
      input_pipeline.train_batches(source, batch, 0, steps_per_epoch=spe, num_steps=total,
                                   threads=args.threads, prefetch=args.prefetch),
      c.put_batch, size=args.device_prefetch)
  add("sharded_input_pipeline", c.train_step, c.init_state(jax.random.key(1)),
      lambda: next(stream))
  for _ in range(warm - 2):
    runners["sharded_input_pipeline"][1], _ = c.train_step(runners["sharded_input_pipeline"][1],
                                                          next(stream))
  # The split kept on the device (dataset.on_device), where this checkout has it: each
  # step sends its example indices and gathers its batch on the device.
  if getattr(c, "train_from_index", None) is not None:
    from cnn_jax.data import on_device
    on_dev = on_device.put_split(source, c.replicated)
    index_stream = parallel.prefetch(
        on_device.index_batches(source, batch, 0, steps_per_epoch=spe, num_steps=2 + args.rounds * args.steps),
        c.put_batch, size=args.device_prefetch)
    add("sharded_on_device_index", lambda st, b: c.train_from_index(st, on_dev, b),
        c.init_state(jax.random.key(2)), lambda: next(index_stream))

  times = {k: [] for k in runners}
  for _ in range(args.rounds):
    for k, r in runners.items():
      step, state, next_batch = r
      jax.block_until_ready(state)
      t = time.perf_counter()
      for _ in range(args.steps):
        state, m = step(state, next_batch())
      jax.block_until_ready(state)
      times[k].append((time.perf_counter() - t) / args.steps)
      r[1] = state
  med = {k: 1e3 * gpu_common.median(v) for k, v in times.items()}
  pct = lambda a, b: round(100 * (med[a] / med[b] - 1), 2)
  overhead = {"sharded_vs_plain_jit_pct": pct("sharded", "plain_jit"),
              "pmap_vs_plain_jit_pct": pct("pmap", "plain_jit"),
              "pipeline_vs_device_batch_pct": pct("sharded_input_pipeline", "sharded")}
  if "sharded_on_device_index" in med:
    overhead["on_device_index_vs_device_batch_pct"] = pct("sharded_on_device_index", "sharded")
  figures = {
      "model": args.model, "compute_dtype": dtype, "batch": batch, "image_size": size,
      "steps_per_round": args.steps, "rounds": args.rounds,
      "source": {"images": n, "bytes": int(source.images.nbytes), "threads": args.threads,
                 "grain_prefetch": args.prefetch, "device_prefetch": args.device_prefetch},
      "step_ms": {k: round(v, 3) for k, v in med.items()},
      "step_ms_rounds": {k: [round(1e3 * t, 3) for t in v] for k, v in times.items()},
      "images_per_sec": {k: round(batch * 1e3 / v, 1) for k, v in med.items()},
      "overhead_pct": overhead, "targets_pct": TARGETS,
      "within_target": {k: overhead[k] <= TARGETS[k] for k in TARGETS if k in overhead},
      "first_two_steps_seconds": first_step,
  }
  if note:
    figures["note"] = note
  gpu_common.write_results(NAME, figures, args, started)


if __name__ == "__main__":
  main()
