"""The training loop: `train_and_evaluate(config, workdir)`.

Everything it needs is built by plain functions from the config; the loop itself only
moves batches to devices, calls the compiled steps, and writes metrics / checkpoints.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from cnn_jax import checkpoint as ckpt_lib
from cnn_jax import config as config_lib
from cnn_jax import models, parallel
from cnn_jax.data import augment, input_pipeline
from cnn_jax.training import optim, steps
from cnn_jax.training.metric_writers import MetricWriter
from cnn_jax.training.train_state import TrainState, create_train_state

log = logging.getLogger("cnn_jax")


@dataclasses.dataclass
class Setup:
  """Everything built from a config before the first step."""
  config: ConfigDict
  model: Any
  input_shape: tuple[int, int, int]
  num_classes: int
  preprocess: Any
  train_data: Optional[input_pipeline.Split]
  eval_data: Optional[input_pipeline.Split]
  steps_per_epoch: int
  compiled: parallel.Compiled
  schedule: Any


def build_model(config: ConfigDict, num_classes: int):
  """The registered model with num_classes and, under pmap, cross-device batch norm."""
  kwargs = dict(config.model_kwargs.to_dict() if config.model_kwargs else {})
  kwargs.setdefault("num_classes", num_classes)
  cls = models.get_spec(config.model).factory
  field_names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
  if config.parallel == "pmap" and "bn_axis_name" in field_names:
    kwargs.setdefault("bn_axis_name", parallel.PMAP_AXIS)
  return models.get_model(config.model, **kwargs)


def data_input_shape(config: ConfigDict, raw_shape: tuple[int, ...]) -> tuple[int, int, int]:
  h, w, c = raw_shape
  if config.dataset.image_size:
    h, w = config.dataset.image_size
  return (h, w, c)


def check_input(config: ConfigDict, data_shape: tuple[int, int, int], data: input_pipeline.Split,
                num_classes: int, split: str) -> None:
  """Fail before compiling when the data cannot feed the model."""
  expected = tuple(config.model_input_shape or models.input_shape(config.model))
  if tuple(data_shape) != expected:
    hint = ""
    if data_shape[2] == expected[2]:
      hint = (f" Set --config.dataset.image_size='({expected[0]}, {expected[1]})' to pad/crop the "
              "images, or --config.model_input_shape to build the model for this size.")
    raise ValueError(f"model {config.model!r} expects {expected[0]}x{expected[1]}x{expected[2]} "
                     f"images but {config.dataset.name}/{split} gives "
                     f"{data_shape[0]}x{data_shape[1]}x{data_shape[2]}.{hint}")
  if len(data.labels) and (data.labels.min() < 0 or data.labels.max() >= num_classes):
    raise ValueError(f"{config.dataset.name}/{split} has labels in [{data.labels.min()}, "
                     f"{data.labels.max()}] but the model has {num_classes} classes; set "
                     "--config.model_kwargs.num_classes or fix the labels.")


def setup(config: ConfigDict, train_data: Optional[input_pipeline.Split] = None,
          eval_data: Optional[input_pipeline.Split] = None) -> Setup:
  """Validate the config, load data, build model / optimizer and compile the steps."""
  config_lib.validate(config)
  per_process_batch = parallel.check_batch_size(config.batch_size)
  per_process_eval = parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
  ds = config.dataset
  load = functools.partial(input_pipeline.load_split, ds.name, data_dir=ds.data_dir,
                           raw_dir=ds.raw_dir, process_index=jax.process_index(),
                           process_count=jax.process_count(), allow_download=ds.allow_download)
  if train_data is None:
    train_data = load(ds.train_split, max_examples=ds.max_train_examples)
  if eval_data is None:
    eval_data = load(ds.eval_split, max_examples=ds.max_eval_examples)
  num_classes = int(config.model_kwargs.get("num_classes", train_data.num_classes))
  input_shape = data_input_shape(config, train_data.images.shape[1:])
  check_input(config, input_shape, train_data, num_classes, ds.train_split)
  check_input(config, input_shape, eval_data, num_classes, ds.eval_split)

  mean, std = input_pipeline.NORMALIZATION.get(ds.name, ((0.5,), (0.5,)))
  preprocess = augment.make_preprocess_fn(config.dataset.image_size, mean, std,
                                          config.augment.crop_padding, config.augment.flip)
  spe = input_pipeline.steps_per_epoch(len(train_data), per_process_batch)
  # The optimizer counts updates: with accumulation, one update every k micro-batches.
  tx, schedule = optim.make_optimizer(config.optimizer, spe, config.num_epochs)
  model = build_model(config, num_classes)
  init_fn = lambda rng: create_train_state(model, tx, rng, input_shape)
  train_fn = functools.partial(steps.train_step, preprocess=preprocess,
                               label_smoothing=config.label_smoothing,
                               skip_nonfinite=config.skip_nonfinite_steps)
  eval_fn = functools.partial(steps.eval_step, preprocess=preprocess)
  compiled = parallel.compile_steps(config.parallel, init_fn, train_fn, eval_fn)
  del per_process_eval
  return Setup(config, model, input_shape, num_classes, preprocess, train_data, eval_data,
               spe, compiled, schedule)


def evaluate(s: Setup, state: TrainState) -> dict[str, float]:
  """Loss / top-1 / top-5 over every example of this process's eval split."""
  per_process = s.config.eval_batch_size // jax.process_count()
  totals: dict[str, float] = {}
  for batch in input_pipeline.eval_batches(s.eval_data, per_process):
    sums = jax.device_get(s.compiled.eval_step(state, s.compiled.put_batch(batch)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  n = max(totals.get("count", 0.0), 1.0)
  return {"loss": totals["loss"] / n, "accuracy": totals["correct"] / n,
          "top5_accuracy": totals["top5_correct"] / n, "num_examples": totals["count"]}


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""


def _mean_metrics(buffer: list[dict]) -> dict[str, float]:
  fetched = jax.device_get(buffer)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def train_and_evaluate(config: ConfigDict, workdir: str,
                       train_data: Optional[input_pipeline.Split] = None,
                       eval_data: Optional[input_pipeline.Split] = None) -> dict[str, Any]:
  """Train `config` in `workdir` (resuming from its latest checkpoint); return final metrics."""
  s = setup(config, train_data, eval_data)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  writer = MetricWriter(workdir)
  ckpts = ckpt_lib.Checkpoints(workdir, keep=config.keep_checkpoints,
                               best_metric=config.best_metric,
                               async_save=config.async_checkpointing)
  state = s.compiled.init_state(jax.random.key(config.seed))
  if ckpts.latest_step() is not None:
    state, meta = ckpt_lib.restore(ckpts.latest, state)
    log.info("resumed from step %d", int(state.step))
  elif config.restore_from:
    state = load_weights_into(state, config.restore_from)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  start_step = int(jax.device_get(state.step))
  total_steps = s.steps_per_epoch * config.num_epochs
  summary: dict[str, Any] = {"steps": total_steps}
  per_process = config.batch_size // jax.process_count()
  last_finite = (start_step, None)
  train_time, train_images = 0.0, 0
  for epoch in range(start_step // s.steps_per_epoch, config.num_epochs):
    first = start_step - epoch * s.steps_per_epoch if epoch == start_step // s.steps_per_epoch else 0
    batches = input_pipeline.train_batches(s.train_data, per_process, config.seed, epoch, first)
    bar = tqdm(batches, total=s.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{config.num_epochs}",
               disable=not (is_main and config.progress_bar), file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    buffer, t0, n0 = [], None, 0
    epoch_start = time.time()
    for i, batch in enumerate(bar, start=first):
      state, metrics = s.compiled.train_step(state, s.compiled.put_batch(batch))
      buffer.append(metrics)
      step = epoch * s.steps_per_epoch + i + 1
      if t0 is None:  # exclude the first step (compilation) from throughput
        jax.block_until_ready(metrics)
        t0, n0 = time.time(), 0
      else:
        n0 += config.batch_size
      if step % config.log_every_steps == 0 or i + 1 == s.steps_per_epoch:
        m = _mean_metrics(buffer)
        buffer = []
        if not math.isfinite(m["loss"]) and not config.skip_nonfinite_steps:
          ckpts.wait()
          good = ckpts.latest_step()
          writer.close()
          raise NonFiniteLossError(
              f"loss became {m['loss']} by step {step}; last finite loss {last_finite[1]} at step "
              f"{last_finite[0]}. Last good checkpoint: "
              f"{os.path.join(ckpts.workdir, 'checkpoints', str(good)) if good is not None else 'none'}."
              " Lower the learning rate, add --config.optimizer.grad_clip_norm, or set "
              "--config.skip_nonfinite_steps=True.")
        last_finite = (step, m["loss"])
        elapsed = time.time() - t0
        m["images_per_sec"] = n0 / elapsed if elapsed > 0 and n0 else 0.0
        m["learning_rate"] = float(s.schedule(step))
        writer.write(step, m, "train")
        bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['accuracy']:.4f}",
                        img_s=f"{m['images_per_sec']:.0f}")
      if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
        ckpts.save(state, _meta(s, epoch, step))
    jax.block_until_ready(state)
    bar.close()
    if t0 is not None:
      train_time += time.time() - t0
      train_images += n0
    step = (epoch + 1) * s.steps_per_epoch
    meta = _meta(s, epoch + 1, step)
    if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.num_epochs:
      ev = evaluate(s, state)
      writer.write(step, ev, "eval")
      meta["eval"] = ev
      ckpts.save_best(state, meta, ev)
      summary["eval"] = ev
      if is_main:
        tqdm.write(f"epoch {epoch + 1}: eval loss {ev['loss']:.4f} accuracy {ev['accuracy']:.4f} "
                   f"top5 {ev['top5_accuracy']:.4f} ({int(ev['num_examples'])} examples, "
                   f"{time.time() - epoch_start:.1f}s)", file=sys.stderr)
    ckpts.save(state, meta, force=True)
  ckpts.wait()
  ckpts.close()
  writer.flush()
  writer.close()
  summary["train_images_per_sec"] = train_images / train_time if train_time else None
  summary["final_step"] = int(jax.device_get(state.step))
  summary["state"] = state
  return summary


def _meta(s: Setup, epoch: int, step: int) -> dict[str, Any]:
  return {"epoch": epoch, "step": step, "num_classes": s.num_classes,
          "input_shape": list(s.input_shape), "config": json.loads(s.config.to_json_best_effort())}


def load_weights_into(state: TrainState, workdir: str) -> TrainState:
  """params / batch_stats of another run's latest checkpoint, fresh optimizer state."""
  from cnn_jax import inference
  variables = inference.load_variables(workdir)
  return state.replace(params=variables["params"],
                       batch_stats=variables.get("batch_stats", state.batch_stats))
