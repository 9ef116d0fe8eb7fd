"""The training loop: `train_and_evaluate(config, workdir)`.

Everything it needs is built by `setup.setup(config)`; the loop only moves batches to
devices, calls the compiled step, and writes metrics / checkpoints. Validation picks
`best/`; test is reported at the end (`evaluation.test_report`).
"""
from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from typing import Any, Optional

import jax
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from cnn_jax import checkpoint as ckpt_lib
from cnn_jax import config as config_lib
from cnn_jax import parallel
from cnn_jax.data import input_pipeline, on_device
from cnn_jax.training import eval_pictures, evaluation, guards, metric_writers, optim, progress, resume
from cnn_jax.training import workdir as workdir_lib
from cnn_jax.training.metric_writers import MetricWriter
from cnn_jax.training.setup import Setup, setup

log = logging.getLogger("cnn_jax")


def _meta(s: Setup, epoch: int, step: int) -> dict[str, Any]:
  data = s.val_data or s.test_data or s.train_data
  return {"epoch": epoch, "step": step, "num_classes": s.num_classes,
          "class_names": getattr(data, "class_names", None),
          "input_shape": list(s.input_shape), "data_shape": list(s.data_shape),
          "config": json.loads(s.config.to_json_best_effort())}


def _train_reader(s: Setup, per_process: int, start_step: int) -> tuple[Any, Any]:
  """(host batches of steps start_step.., the compiled step that takes them): the grain
  reader and `train_step`, or, for a split kept on the device, each step's example
  indices and `train_from_index`."""
  config, spe = s.config, s.steps_per_epoch
  steps = dict(steps_per_epoch=spe, start_step=start_step, num_steps=spe * config.num_epochs)
  if on_device.use_on_device(config, s.train_data, jax.process_count()):
    data = on_device.put_split(s.train_data, s.compiled.replicated)
    log.info("train split on the device (%d examples); batches are gathered there",
             len(s.train_data))
    return (on_device.index_batches(s.train_data, per_process, config.seed, **steps),
            lambda state, batch: s.compiled.train_from_index(state, data, batch))
  return (input_pipeline.train_batches(s.train_data, per_process, config.seed,
                                       pp=config.dataset.pp_train, **steps,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count(),
                                       **s.batch_options()), s.compiled.train_step)


def train_and_evaluate(config: ConfigDict, workdir: str, train_data: Optional[Any] = None,
                       val_data: Optional[Any] = None, test_data: Optional[Any] = None
                       ) -> dict[str, Any]:
  """Train `config` in `workdir`, resuming from its latest checkpoint; return final metrics.

  Sources (whole `data.split.Split`s, of which each process takes its share), when given,
  replace the config's splits.
  Raises guards.Preempted (after checkpointing) on SIGTERM / SIGINT / SIGUSR1 and
  guards.NonFiniteLossError when the loss stops being finite (unless skip_nonfinite_steps).
  """
  workdir = workdir_lib.resolve(workdir)
  created = not workdir.exists()
  workdir_lib.probe(workdir)  # before loading data: a bad --workdir fails in a second
  try:
    with workdir_lib.lock(workdir, jax.process_index() == 0):  # one run per work directory
      res = resume.check(config, workdir)  # what a resume may change: before anything compiles
      return _run(config, workdir, res, train_data, val_data, test_data)
  except BaseException:
    if created and jax.process_index() == 0:  # a run refused at start leaves no directory
      workdir_lib.remove_if_nothing_saved(workdir)
    raise


def _run(config: ConfigDict, workdir: Any, res: resume.Resume, train_data: Optional[Any],
         val_data: Optional[Any], test_data: Optional[Any]) -> dict[str, Any]:
  """The loop itself; train_and_evaluate holds the work directory's lock around it."""
  s = setup(config, train_data, val_data, test_data)
  is_main = jax.process_index() == 0
  state = s.compiled.init_state(jax.random.key(config.seed))
  state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(ckpt_lib.state_to_tree(state)))
  workdir_lib.check_free_space(workdir, 2 * state_bytes)
  ckpts = ckpt_lib.Checkpoints(workdir, keep=config.keep_checkpoints,
                               best_metric=config.best_metric if s.val_data else None,
                               best_mode=config_lib.best_mode(config),
                               async_save=config.async_checkpointing)
  if ckpts.latest.all_steps():
    restored = ckpt_lib.restore_latest_good(ckpts, state, config)
    if restored is not None:
      state = restored
      log.info("resumed from step %d of %s", int(state.step), workdir)
  if not ckpts.latest.all_steps() and ckpt_lib.set_aside_steps(workdir):
    ckpts.close()
    latest = workdir / ckpt_lib.SUBDIRS["latest"]
    raise RuntimeError(
        f"every checkpoint in {latest} is corrupt (set aside as corrupt-*, kept for "
        "inspection): this run will not silently start over from step 0 on top of a history "
        f"it could not read. To start afresh here, move {latest} away; or use a new --workdir")
  if not ckpts.latest.all_steps() and config.restore_from:
    state = evaluation.restore_weights(s, state, *evaluation.restore_source(config))
    log.info("started from the weights of %s", config.restore_from)
  start_step, spe = int(jax.device_get(state.step)), s.steps_per_epoch
  stored = resume.finished(workdir, start_step, spe * config.num_epochs)
  if stored is not None:  # the same command again: its results, nothing written twice
    ckpts.close()
    return {**stored, "state": state}
  note = resume.schedule_note(res, config, s.learning_rate, lambda c, n: optim.make_optimizer(
      c, spe, n)[1], start_step, spe)
  if note and is_main:
    log.info(note)
  if is_main:
    log.info(progress.start_line(config, spe, start_step))
  writer = MetricWriter(workdir, resume_step=start_step, config=config)  # status, tracking
  if is_main:
    resume.record(workdir, config, res, start_step)
  faults = guards.FaultLog()

  def save(kind: str, meta: dict, metrics: Optional[dict] = None) -> None:
    """Save, but never let a failed save (disk full, ...) lose the state in memory."""
    try:
      if kind == "best":
        ckpts.save_best(state, meta, metrics)
      else:
        ckpts.save(state, meta, force=True)
    except Exception as e:  # noqa: BLE001 - reported, training goes on
      report_failed_save(kind, meta["step"], e)
      wait_for_saves()  # nothing in flight, then the half-written folder goes

  def report_failed_save(kind: str, step: int, e: Exception) -> None:
    faults.report(e, "saving the %s checkpoint at step %d failed (%s: %s); training continues "
                  "with the state intact in memory; the last good checkpoint is step %s", kind,
                  step, type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "",
                  ckpts.latest_step())

  def wait_for_saves() -> None:
    error = ckpts.wait()
    if error is not None:
      report_failed_save("pending", int(jax.device_get(state.step)), error)

  summary: dict[str, Any] = {"steps": spe * config.num_epochs}
  per_process = config.batch_size // jax.process_count()
  last_finite: tuple[int, Optional[float]] = (start_step, None)
  skipped_run = 0  # consecutive steps skip_nonfinite_steps dropped
  pictures: dict[str, Any] = {}  # what eval_pictures found once (e.g. the first conv)
  train_time, train_images = 0.0, 0
  # A bar on a terminal; plain lines (step, epoch, images/s, ETA) in a log file.
  show = is_main and bool(config.progress_bar)
  lines = progress.ProgressLines(spe * config.num_epochs, config.num_epochs, config.batch_size,
                                 enabled=show and not sys.stderr.isatty())
  try:
    # One reader for the whole run (grain workers start once), from the resumed step on;
    # inside `try`, so that a reader that cannot start still closes the checkpointers.
    loader, train_step = _train_reader(s, per_process, start_step)
    with guards.SignalFlag() as signals:
      for epoch in range(start_step // spe, config.num_epochs):
        first = max(0, start_step - epoch * spe)
        batches = itertools.islice(loader, spe - first)
        bar = tqdm(batches, total=spe, initial=first, desc=f"epoch {epoch + 1}/{config.num_epochs}",
                   disable=not (show and sys.stderr.isatty()), file=sys.stderr,
                   mininterval=0.5, dynamic_ncols=True)
        buffer, t0, n0 = [], None, 0
        epoch_start = time.time()
        for i, batch in enumerate(parallel.prefetch(bar, s.compiled.put_batch), start=first):
          try:
            state, metrics = train_step(state, batch)
          except Exception as e:  # XlaRuntimeError on OOM
            raise guards.oom_hint(e, config) from e
          buffer.append(metrics)
          step = epoch * spe + i + 1
          if t0 is None:  # exclude the first step (compilation) from throughput
            jax.block_until_ready(metrics)
            t0, n0 = time.time(), 0
            if "startup_seconds" not in summary:
              summary["startup_seconds"] = metric_writers.since_process_start()
              if summary["startup_seconds"] is not None:  # None off Linux
                log.info("first step done %.1fs after the process started",
                         summary["startup_seconds"])
          else:
            n0 += config.batch_size
          end_of_epoch = i + 1 == spe
          due_log = step % config.log_every_steps == 0 or end_of_epoch
          due_ckpt = bool(config.checkpoint_every_steps) and step % config.checkpoint_every_steps == 0
          signum = signals.raised() if (jax.process_count() == 1 or due_log) else None
          if not (due_log or due_ckpt or signum):
            continue
          # The buffer is emptied only when written: a checkpoint or a signal between two
          # log steps must not drop the steps it has seen from the next logged mean.
          m = metric_writers.window_mean(buffer)
          # A gradient norm that overflows (Adam at lr 1e6: loss 5e30, finite) is no step either.
          if not config.skip_nonfinite_steps and not (
              np.isfinite(m["loss"]) and np.isfinite(m.get("grad_norm", 0.0))
              and bool(guards.all_finite(state.params))):
            wait_for_saves()
            raise guards.non_finite_error(m["loss"], step, last_finite,
                                          ckpts.step_path(ckpts.latest_step()), m.get("grad_norm"))
          last_finite = (step, m["loss"])
          skipped_run = guards.check_skipped(m, skipped_run, step, config,
                                             ckpts.step_path(ckpts.latest_step()))
          if due_log or signum:
            elapsed = time.time() - t0
            m["images_per_sec"] = n0 / elapsed if elapsed > 0 and n0 else 0.0
            m["learning_rate"] = s.learning_rate(step - 1)
            writer.write(step, m, "train")
            buffer = []
            eta = progress.eta_seconds(step, spe * config.num_epochs, m["images_per_sec"],
                                       config.batch_size)
            bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m.get('accuracy', 0.0):.4f}",
                            img_s=f"{m['images_per_sec']:.0f}",
                            eta=progress.format_duration(eta) if eta is not None else "-")
            lines.update(step, epoch, m, force=end_of_epoch)
          if (due_ckpt or signum) and not end_of_epoch:
            save("latest", _meta(s, epoch, step))
          if signum and not end_of_epoch:
            bar.close()
            raise guards.Preempted(signum, step, ckpts.step_path(step))
        jax.block_until_ready(state)
        bar.close()
        if t0 is not None:
          train_time += time.time() - t0
          train_images += n0
        step = (epoch + 1) * spe
        meta = _meta(s, epoch + 1, step)
        due_eval = (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.num_epochs
        if s.val_data is not None and due_eval:
          ev = evaluation.evaluate(s, state, s.val_data)
          writer.write(step, ev, "validation")
          if is_main:
            eval_pictures.write_eval_pictures(writer, s, state, step, pictures)
          meta["validation"] = summary["validation"] = ev
          save("best", meta, ev)
          if is_main:
            tqdm.write(f"epoch {epoch + 1}: validation {evaluation.describe(ev)} (epoch took "
                       f"{time.time() - epoch_start:.1f}s)", file=sys.stderr)
        save("latest", meta)
        writer.flush()
        signum = signals.raised()
        if signum and epoch + 1 < config.num_epochs:
          raise guards.Preempted(signum, step, ckpts.step_path(step))
    if s.val_data is not None and "validation" not in summary:  # already finished: report
      summary["validation"] = evaluation.evaluate(s, state, s.val_data)
    wait_for_saves()  # the best checkpoint must be committed before the test report reads it
    final_step = int(jax.device_get(state.step))
    for name, metrics in evaluation.test_report(s, state, ckpts).items():
      summary[name] = metrics
      writer.write(final_step, {k: v for k, v in metrics.items() if k != "step"}, name)
      if is_main:
        which = f"best-on-validation, step {metrics['step']}" if name == "test_best" else "final"
        tqdm.write(f"test ({which}): {evaluation.describe(metrics)}", file=sys.stderr)
  finally:  # whatever ended the run, pending async saves commit and the logs are flushed
    wait_for_saves()
    faults.summary("checkpoint saves", ckpts.latest_step())
    ckpts.close()
    writer.close()
  summary["train_images_per_sec"] = train_images / train_time if train_time else None
  summary["final_step"] = final_step
  if is_main:
    resume.save_results(workdir, summary)
  summary["state"] = state
  return summary
