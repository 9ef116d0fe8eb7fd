"""The input pipeline: grain reads a random-access source into fixed-shape batches.

One `grain.MapDataset` maps a *global step* to its batch. The batch of a step is a pure
function of (seed, step): the epoch's order is `epoch_permutation(seed, epoch)`, each
example's host-side augmentation draws from `default_rng([seed, epoch, index])`. So a run
resumed at any step reads exactly the batches it would have read, whether the batches
are built in the main process, in threads, or in grain worker processes
(`dataset.workers`), and nothing of grain's iterator needs checkpointing.

Host-side ops (`dataset.pp_train` / `dataset.pp_eval`, see `ops`) run per example where
the batch is built, in the workers; per-pixel augmentation runs on the device in the
jitted step (`augment`). Train batches have a fixed shape (an epoch drops its last
partial batch; all processes take the same number of steps). Eval batches are padded to
a fixed shape and carry a `mask`, so every example counts once and nothing recompiles.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import time
from typing import Any, Iterator, Optional

import numpy as np

from cnn_jax.data import box_ops, ops
from cnn_jax.data.split import Split

# ImageNet's per-channel mean / std: what torchvision / Keras "torch"-mode weights expect.
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# Per-channel mean / std of the training split (pixel values scaled to [0, 1]).
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenette": IMAGENET_MEAN_STD,
    "imagenet2012": IMAGENET_MEAN_STD,
    "imagenet2012_subset": IMAGENET_MEAN_STD,
    "imagenet_resized": IMAGENET_MEAN_STD,
}


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per channel for data set `name` ('imagenette/160px-v2' → 'imagenette')."""
  return NORMALIZATION.get(name.split("/")[0], ((0.5,), (0.5,)))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full train batches per epoch (the last partial batch is dropped)."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(f"batch_size {batch_size} is larger than the {num_examples} training "
                     "examples this process holds; use a smaller batch.")
  return steps


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch: a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def parse_pp(pp: str, boxes: bool = False) -> Any:
  """A pp string as a host pipeline: image ops (`ops`), or box-aware ones (`box_ops`) for
  detection, whose examples carry boxes that every geometric op must move too."""
  if boxes:
    return box_ops.parse(pp)
  return ops.parse(pp)


def check_eval_pp(pp: str, boxes: bool = False) -> None:
  """Refuse `dataset.pp_eval` with a random op (a crop, a flip, a jitter), in one line:
  validation, test and predict must see an image the same way every time; a random op
  there would score augmented images. Parse errors name the key too."""
  try:
    pipeline = parse_pp(pp or "", boxes)
  except ValueError as e:
    raise ValueError(f"dataset.pp_eval: {e}") from None
  if pipeline.random_ops:
    raise ValueError(f"dataset.pp_eval={pp!r} has random op(s) {', '.join(pipeline.random_ops)}: "
                     "evaluation and predict must see each image the same way every time; move "
                     "them to dataset.pp_train and keep pp_eval to deterministic ops (resize, "
                     "resize_small, central_crop, ...)")


def _same_size(images: list[np.ndarray]) -> None:
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise ValueError(f"images of different sizes {sorted(shapes)[:3]} cannot be batched: add a "
                     "resize / crop op to dataset.pp_train and dataset.pp_eval, e.g. "
                     "'resize_small(146)|central_crop(128)' (detection: 'resize(256)')")


def gather(source: Any, index: np.ndarray, pipeline: Optional[Any],
           rng_key: Optional[list[int]] = None, max_objects: Optional[int] = None
           ) -> dict[str, np.ndarray]:
  """Examples `index` of `source` through `pipeline`, stacked into one batch.

  max_objects set: a detection source, whose examples are (image, {boxes, labels,
  difficult}); its objects are padded to max_objects with a `valid` mask.
  """
  if isinstance(source, Split) and not pipeline and max_objects is None:
    return {"image": np.asarray(source.images[index]), "label": source.labels[index]}
  images, labels = [], []
  for j in index:
    image, label = source[int(j)]
    if pipeline:
      rng = np.random.default_rng((rng_key or []) + [int(j)])
      image, label = (pipeline(image, label, rng) if max_objects is not None
                      else (pipeline(image, rng), label))
    images.append(image)
    labels.append(label)
  _same_size(images)
  if max_objects is None:
    return {"image": np.stack(images), "label": np.asarray(labels, np.int32)}
  padded = [box_ops.pad_objects(t, max_objects) for t in labels]
  return {"image": np.stack(images), **{k: np.stack([t[k] for t in padded]) for k in padded[0]}}


class TrainBatch:
  """step -> that step's batch; picklable, so grain workers can build batches."""

  def __init__(self, source: Any, batch_size: int, steps_per_epoch: int, seed: int, pp: str,
               max_objects: Optional[int] = None, process_index: int = 0,
               process_count: int = 1):
    self.source, self.batch_size, self.spe, self.seed, self.pp = (
        source, batch_size, steps_per_epoch, seed, pp)
    self.max_objects = max_objects
    self.process_index, self.process_count = process_index, process_count

  @functools.cached_property
  def pipeline(self) -> Optional[Any]:
    return parse_pp(self.pp, self.max_objects is not None) if self.pp else None

  def order(self, epoch: int) -> np.ndarray:
    """The epoch's permutation, computed once per epoch (a tuple swap: reader threads safe)."""
    last = getattr(self, "_order", None)
    if last is None or last[0] != epoch:
      last = self._order = (epoch, epoch_permutation(len(self.source), self.seed, epoch))
    return last[1]

  def indices(self, step: int) -> tuple[int, np.ndarray]:
    """(epoch, this process's example indices of step `step`).

    The global batch of a step is the step's slice of the epoch's permutation of the whole
    split, sorted; process p of P takes its p-th part (`batch_size` is per process). So the
    global batch, and the run, do not depend on how many processes read it.
    """
    epoch, i = divmod(int(step), self.spe)
    size = self.batch_size * self.process_count
    whole = np.sort(self.order(epoch)[i * size:(i + 1) * size])
    return epoch, whole[self.process_index * self.batch_size:(self.process_index + 1) * self.batch_size]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    epoch, index = self.indices(step)
    return gather(self.source, index, self.pipeline, [self.seed, epoch], self.max_objects)

  def __getstate__(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k not in ("pipeline", "_order")}


class EvalBatch:
  """b -> batch b of the split in order, padded to batch_size with `mask` marking real ones."""

  def __init__(self, source: Any, batch_size: int, pp: str, max_objects: Optional[int] = None):
    self.source, self.batch_size, self.pp, self.max_objects = source, batch_size, pp, max_objects

  @functools.cached_property
  def pipeline(self) -> Optional[Any]:
    return parse_pp(self.pp, self.max_objects is not None) if self.pp else None

  def __getstate__(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k != "pipeline"}

  def __call__(self, b: int) -> dict[str, np.ndarray]:
    n, size = len(self.source), self.batch_size
    index = np.arange(min(b * size, n), min((b + 1) * size, n))
    # An empty index still reads example 0 (for its shapes): a fully masked batch, so that
    # every process runs the same number of steps.
    batch = gather(self.source, index if len(index) else np.zeros(1, np.int64), self.pipeline,
                   max_objects=self.max_objects)
    if not len(index):
      batch = {k: v[:0] for k, v in batch.items()}
    real = len(index)
    mask = np.zeros(size, np.float32)
    mask[:real] = 1
    if real < size:
      batch = {k: np.concatenate([v, np.zeros((size - real,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    return {**batch, "mask": mask}


def _absl_flags_parsed() -> None:
  """Let grain read its absl flags in a program that never parses absl's global flags.

  grain (0.2.18) reads `--grain_enable_multiprocess_worker_profiling` when it starts worker
  processes, and absl refuses to read an unparsed flag (UnparsedFlagAccessError,
  google/grain#1355): every program that does not run `absl.app` — our CLI (it parses its
  own FlagValues), pytest, a notebook — would fail with dataset.workers > 0. Unparsed,
  every flag keeps its default; a later `FLAGS(argv)` still parses normally.
  """
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _die_with_parent(parent_pid: int, worker_index: int, worker_count: int) -> None:
  """grain worker init: end this worker when the training process that started it is gone.

  A SIGKILLed (or OOM-killed) training process cannot clean up; its grain workers lived on
  as orphans (2 of 260 MB each, with multiprocessing's resource tracker, in 1 of 2 kills).
  prctl(PR_SET_PDEATHSIG), set here before, missed a parent killed while the worker was
  still starting (spawn re-imports the main module and jax: seconds), before this init
  ran, so the signal was never armed; and it is tied to the *thread* that started the
  worker (grain starts them from a pool thread), not to the process. A daemon thread here
  instead compares os.getppid() with the parent's pid, at once and every 0.2 s, and ends
  the worker when it differs (an orphan is re-parented to init or a subreaper).
  """
  del worker_index, worker_count

  def watch() -> None:
    while os.getppid() == parent_pid:
      time.sleep(0.2)
    os._exit(0)  # noqa: SLF001 - nothing of this worker's is worth saving; exit now
  threading.Thread(target=watch, name="cnn_jax-parent-watch", daemon=True).start()


def _iterate(dataset: Any, workers: int, prefetch: int, threads: int) -> Iterator[dict]:
  import grain
  it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads),
                                                 prefetch_buffer_size=max(1, prefetch)))
  if workers > 0:
    _absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=max(1, prefetch)),
                         worker_init_fn=functools.partial(_die_with_parent, os.getpid()))
    return _explain_worker_death(iter(it), workers)
  return iter(it)


def _explain_worker_death(batches: Iterator[dict], workers: int) -> Iterator[dict]:
  """grain's "Worker process was terminated unexpectedly" says what, not why or what to do."""
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except RuntimeError as e:
      if "terminated unexpectedly" not in str(e):
        raise
      raise RuntimeError(
          f"a grain worker process died while building batches (dataset.workers={workers}): {e} "
          "Exit code -9 / signal 9 is usually the out-of-memory killer: lower dataset.workers, "
          "dataset.prefetch or the batch size. To see a Python error from the data itself, run "
          "with --config.dataset.workers=0 (batches are then built in the main process).") from e
    yield batch


def reader_options(ds: Any) -> dict[str, int]:
  """How a run's batches are read (config.dataset): grain workers, reader threads, prefetch."""
  return {"workers": ds.workers, "threads": ds.threads, "prefetch": ds.prefetch}


def train_batches(source: Any, batch_size: int, seed: int, *, steps_per_epoch: int,
                  start_step: int = 0, num_steps: int, pp: str = "", workers: int = 0,
                  prefetch: int = 2, threads: int = 1, max_objects: Optional[int] = None,
                  process_index: int = 0, process_count: int = 1
                  ) -> Iterator[dict[str, np.ndarray]]:
  """This process's part (`batch_size` examples) of the global batches of steps
  start_step .. num_steps - 1, in order; `source` is the whole split on every process."""
  import grain
  available = len(source) // (batch_size * process_count)
  if steps_per_epoch > available:
    raise ValueError(f"steps_per_epoch={steps_per_epoch} but {len(source)} examples give only "
                     f"{available} batches of {batch_size * process_count}")
  dataset = grain.MapDataset.range(start_step, num_steps).map(
      TrainBatch(source, batch_size, steps_per_epoch, seed, pp, max_objects, process_index,
                 process_count))
  return _iterate(dataset, workers, prefetch, threads)


def eval_batches(source: Any, batch_size: int, num_batches: Optional[int] = None, *,
                 pp: str = "", workers: int = 0, prefetch: int = 2, threads: int = 1,
                 max_objects: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order, in padded batches (at least `num_batches` of them)."""
  import grain
  needed = -(-len(source) // batch_size)
  dataset = grain.MapDataset.range(max(needed, num_batches or 0)).map(
      EvalBatch(source, batch_size, pp, max_objects))
  return _iterate(dataset, workers, prefetch, threads)
