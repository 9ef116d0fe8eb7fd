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
import shutil
import signal
import sys
import threading
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
  if config.parallel == "pmap":  # cross-device batch norm and device-count-free dropout
    if "axis_name" in field_names:
      kwargs.setdefault("axis_name", parallel.PMAP_AXIS)
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


def agree(value: int, reduce: Any) -> int:
  """The same integer on every process: reduce (min / max) over all processes' values."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return int(reduce(np.asarray(multihost_utils.process_allgather(np.int32(value))).tolist()))


def setup(config: ConfigDict, train_data: Optional[input_pipeline.Split] = None,
          eval_data: Optional[input_pipeline.Split] = None) -> Setup:
  """Validate the config, load data, build model / optimizer and compile the steps."""
  config_lib.validate(config)
  per_process_batch = parallel.check_batch_size(config.batch_size)
  parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
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

  mean, std = input_pipeline.normalization(ds.name)
  preprocess = augment.make_preprocess_fn(config.dataset.image_size, mean, std,
                                          config.augment.crop_padding, config.augment.flip)
  # Processes may hold a few examples more or less (even_splits): all take the smallest
  # number of steps, or a collective would wait forever for the one that stopped.
  spe = agree(input_pipeline.steps_per_epoch(len(train_data), per_process_batch), min)
  # The optimizer counts updates: with accumulation, one update every k micro-batches.
  tx, schedule = optim.make_optimizer(config.optimizer, spe, config.num_epochs)
  model = build_model(config, num_classes)
  init_fn = lambda rng: create_train_state(model, tx, rng, input_shape)
  train_fn = functools.partial(steps.train_step, preprocess=preprocess,
                               label_smoothing=config.label_smoothing,
                               skip_nonfinite=config.skip_nonfinite_steps)
  eval_fn = functools.partial(steps.eval_step, preprocess=preprocess)
  compiled = parallel.compile_steps(config.parallel, init_fn, train_fn, eval_fn)
  return Setup(config, model, input_shape, num_classes, preprocess, train_data, eval_data,
               spe, compiled, schedule)


def evaluate(s: Setup, state: TrainState) -> dict[str, float]:
  """Loss / top-1 / top-5 over every example of this process's eval split."""
  per_process = s.config.eval_batch_size // jax.process_count()
  totals: dict[str, float] = {}
  num_batches = agree(-(-len(s.eval_data) // per_process), max)
  for batch in input_pipeline.eval_batches(s.eval_data, per_process, num_batches):
    sums = jax.device_get(s.compiled.eval_step(state, s.compiled.put_batch(batch)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  n = max(totals.get("count", 0.0), 1.0)
  return {"loss": totals["loss"] / n, "accuracy": totals["correct"] / n,
          "top5_accuracy": totals["top5_correct"] / n, "num_examples": totals["count"]}


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""


class Preempted(Exception):
  """A SIGTERM / SIGINT / SIGUSR1 arrived; the state was checkpointed. Carries the signal."""

  def __init__(self, signum: int, step: int, path: Optional[str]):
    super().__init__(f"received {signal.Signals(signum).name}: saved a checkpoint at step {step} "
                     f"({path}); run the same command again to resume")
    self.signum, self.step, self.path = signum, step, path

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class _SignalFlag:
  """Records SIGTERM / SIGINT / SIGUSR1 instead of dying, so the loop can checkpoint first."""
  SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

  def __init__(self):
    self.signum: Optional[int] = None
    self._old: dict = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    self.signum = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)

  def raised(self) -> Optional[int]:
    """The signal, agreed on by every process (any one of them seeing it counts)."""
    return agree(self.signum or 0, max) or None


def _mean_metrics(buffer: list[dict]) -> dict[str, float]:
  fetched = jax.device_get(buffer)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def probe_workdir(workdir: str) -> None:
  """Fail at start-up, not at the first save, when the work directory is not writable."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
    with open(probe, "wb") as f:
      f.write(b"\0" * 4096)
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    raise RuntimeError(f"work directory {workdir} is not writable ({e.strerror}); choose another "
                       "--workdir or free space / fix permissions") from e


def check_free_space(workdir: str, needed_bytes: int) -> None:
  """A checkpoint needs room for a new step while the previous one still exists."""
  free = shutil.disk_usage(workdir).free
  if free < needed_bytes:
    raise RuntimeError(f"work directory {workdir} has {free / 2**20:.0f} MiB free but one checkpoint "
                       f"needs about {needed_bytes / 2**20:.0f} MiB; free space or choose another --workdir")


# Config keys that change the shapes or meaning of a saved state: resuming with a different
# value would silently mix two runs.
SHAPE_KEYS = ("model", "model_kwargs", "model_input_shape", "dataset.name", "dataset.image_size",
              "optimizer.name", "optimizer.accumulate_steps", "optimizer.nesterov")


def config_conflicts(saved: dict, config: ConfigDict) -> list[str]:
  """Shape-affecting keys whose values differ between a saved run and `config`."""
  new = json.loads(config.to_json_best_effort())
  out = []
  for key in SHAPE_KEYS:
    a, b = saved, new
    for part in key.split("."):
      a = a.get(part) if isinstance(a, dict) else None
      b = b.get(part) if isinstance(b, dict) else None
    if a != b:
      out.append(f"{key}: saved {a!r}, now {b!r}")
  return out


def restore_latest_good(ckpts: ckpt_lib.Checkpoints, template: TrainState, config: ConfigDict
                        ) -> Optional[TrainState]:
  """Restore the newest checkpoint that loads; a corrupt one is reported and moved aside.

  The saved config is compared with `config` first, so a run with another model is
  refused (its checkpoints untouched) instead of being mistaken for a corrupt one.
  """
  for step in sorted(ckpts.latest.all_steps(), reverse=True):
    bad = os.path.join(ckpts.workdir, "checkpoints", str(step))
    try:
      meta = ckpt_lib.read_meta(ckpts.latest, step)
    except Exception as e:  # noqa: BLE001 - missing / truncated meta: a broken step
      _set_aside(ckpts, step, bad, e)
      continue
    conflicts = config_conflicts(meta["config"], config)
    if conflicts:
      ckpts.close()
      raise ValueError(
          f"{ckpts.workdir} holds a run with a different configuration ({'; '.join(conflicts)}). "
          f"Use a new --workdir, or start a new run from its weights with "
          f"--config.restore_from={ckpts.workdir}")
    try:
      return ckpt_lib.restore(ckpts.latest, template, step)[0]
    except Exception as e:  # noqa: BLE001 - truncated / missing array files
      _set_aside(ckpts, step, bad, e)
  return None


def _set_aside(ckpts: ckpt_lib.Checkpoints, step: int, path: str, error: Exception) -> None:
  aside = os.path.join(ckpts.workdir, "checkpoints", f"corrupt-{step}-{int(time.time())}")
  log.error("checkpoint %s is corrupt or incomplete (%s: %s); moved to %s, trying an older one",
            path, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "", aside)
  if jax.process_index() == 0 and os.path.isdir(path):
    os.rename(path, aside)
  ckpts.latest.reload()


def _oom_hint(e: Exception, config: ConfigDict) -> Exception:
  if "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e):
    return MemoryError(
        f"batch_size={config.batch_size} of model {config.model!r} does not fit in device memory "
        f"({str(e).splitlines()[0][:200]}). Use a smaller --config.batch_size, or keep the effective "
        f"batch with gradient accumulation, e.g. --config.batch_size={max(1, config.batch_size // 4)} "
        "--config.optimizer.accumulate_steps=4")
  return e


def train_and_evaluate(config: ConfigDict, workdir: str,
                       train_data: Optional[input_pipeline.Split] = None,
                       eval_data: Optional[input_pipeline.Split] = None) -> dict[str, Any]:
  """Train `config` in `workdir`, resuming from its latest checkpoint; return final metrics.

  Raises Preempted (after checkpointing) on SIGTERM / SIGINT / SIGUSR1 and
  NonFiniteLossError when the loss stops being finite (unless skip_nonfinite_steps).
  """
  workdir = os.path.abspath(workdir)
  probe_workdir(workdir)  # before loading data: a bad --workdir fails in a second
  s = setup(config, train_data, eval_data)
  is_main = jax.process_index() == 0
  state = s.compiled.init_state(jax.random.key(config.seed))
  state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(ckpt_lib.state_to_tree(state)))
  check_free_space(workdir, 2 * state_bytes)
  ckpts = ckpt_lib.Checkpoints(workdir, keep=config.keep_checkpoints,
                               best_metric=config.best_metric,
                               async_save=config.async_checkpointing)
  if ckpts.latest.all_steps():
    restored = restore_latest_good(ckpts, state, config)
    if restored is not None:
      state = restored
      log.info("resumed from step %d of %s", int(state.step), workdir)
  elif config.restore_from:
    state = load_weights_into(state, config.restore_from)
  writer = MetricWriter(workdir)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  def save(kind: str, meta: dict, metrics: Optional[dict] = None) -> None:
    """Save, but never let a failed save (disk full, ...) lose the state in memory."""
    try:
      if kind == "best":
        ckpts.save_best(state, meta, metrics)
      else:
        ckpts.save(state, meta, force=True)
    except Exception as e:  # noqa: BLE001 - reported, training goes on
      log.error("saving the %s checkpoint at step %d failed (%s: %s); training continues with the "
                "state intact in memory; the last good checkpoint is step %s", kind, meta["step"],
                type(e).__name__, e, ckpts.latest_step())

  start_step = int(jax.device_get(state.step))
  summary: dict[str, Any] = {"steps": s.steps_per_epoch * config.num_epochs}
  per_process = config.batch_size // jax.process_count()
  last_finite: tuple[int, Optional[float]] = (start_step, None)
  train_time, train_images = 0.0, 0
  try:
    with _SignalFlag() as signals:
      for epoch in range(start_step // s.steps_per_epoch, config.num_epochs):
        first = max(0, start_step - epoch * s.steps_per_epoch)
        batches = input_pipeline.train_batches(s.train_data, per_process, config.seed, epoch, first,
                                               num_steps=s.steps_per_epoch)
        bar = tqdm(batches, total=s.steps_per_epoch, initial=first,
                   desc=f"epoch {epoch + 1}/{config.num_epochs}",
                   disable=not (is_main and config.progress_bar), file=sys.stderr,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        buffer, t0, n0 = [], None, 0
        epoch_start = time.time()
        for i, batch in enumerate(parallel.prefetch(bar, s.compiled.put_batch), start=first):
          try:
            state, metrics = s.compiled.train_step(state, batch)
          except Exception as e:  # XlaRuntimeError on OOM
            raise _oom_hint(e, config) from e
          buffer.append(metrics)
          step = epoch * s.steps_per_epoch + i + 1
          if t0 is None:  # exclude the first step (compilation) from throughput
            jax.block_until_ready(metrics)
            t0, n0 = time.time(), 0
          else:
            n0 += config.batch_size
          end_of_epoch = i + 1 == s.steps_per_epoch
          due_log = step % config.log_every_steps == 0 or end_of_epoch
          due_ckpt = bool(config.checkpoint_every_steps) and step % config.checkpoint_every_steps == 0
          signum = signals.raised() if (jax.process_count() == 1 or due_log) else None
          if not (due_log or due_ckpt or signum):
            continue
          m = _mean_metrics(buffer)
          buffer = []
          if not config.skip_nonfinite_steps and not (
              math.isfinite(m["loss"]) and bool(_all_finite(state.params))):
            ckpts.wait()
            good = ckpts.latest_step()
            raise NonFiniteLossError(
                f"loss became {m['loss']} by step {step} (last finite loss {last_finite[1]} at step "
                f"{last_finite[0]}). Last good checkpoint: "
                f"{os.path.join(workdir, 'checkpoints', str(good)) if good is not None else 'none'}."
                " Lower the learning rate, set --config.optimizer.grad_clip_norm, or skip such steps "
                "with --config.skip_nonfinite_steps=True.")
          last_finite = (step, m["loss"])
          if due_log:
            elapsed = time.time() - t0
            m["images_per_sec"] = n0 / elapsed if elapsed > 0 and n0 else 0.0
            m["learning_rate"] = float(s.schedule(step))
            writer.write(step, m, "train")
            bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['accuracy']:.4f}",
                            img_s=f"{m['images_per_sec']:.0f}")
          if (due_ckpt or signum) and not end_of_epoch:
            save("latest", _meta(s, epoch, step))
          if signum and not end_of_epoch:
            bar.close()
            raise Preempted(signum, step, os.path.join(workdir, "checkpoints", str(step)))
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
          save("best", meta, ev)
          summary["eval"] = ev
          if is_main:
            tqdm.write(f"epoch {epoch + 1}: eval loss {ev['loss']:.4f} accuracy {ev['accuracy']:.4f} "
                       f"top5 {ev['top5_accuracy']:.4f} ({int(ev['num_examples'])} examples, "
                       f"epoch took {time.time() - epoch_start:.1f}s)", file=sys.stderr)
        save("latest", meta)
        signum = signals.raised()
        if signum and epoch + 1 < config.num_epochs:
          raise Preempted(signum, step, os.path.join(workdir, "checkpoints", str(step)))
    if "eval" not in summary:  # the run had already finished: report, do not retrain
      summary["eval"] = evaluate(s, state)
  finally:  # whatever ended the run, pending async saves commit and the logs are flushed
    ckpts.wait()
    ckpts.close()
    writer.close()
  summary["train_images_per_sec"] = train_images / train_time if train_time else None
  summary["final_step"] = int(jax.device_get(state.step))
  summary["state"] = state
  return summary


def _meta(s: Setup, epoch: int, step: int) -> dict[str, Any]:
  return {"epoch": epoch, "step": step, "num_classes": s.num_classes,
          "input_shape": list(s.input_shape), "config": json.loads(s.config.to_json_best_effort())}


def with_variables(state: TrainState, variables: dict[str, Any]) -> TrainState:
  """`state` with the params (and batch_stats, if any) of `variables`; the rest unchanged."""
  return state.replace(params=variables["params"],
                       batch_stats=variables.get("batch_stats", state.batch_stats))


def load_weights_into(state: TrainState, workdir: str) -> TrainState:
  """params / batch_stats of another run's best checkpoint, fresh optimizer state."""
  from cnn_jax import inference
  return with_variables(state, inference.load_variables(workdir))
