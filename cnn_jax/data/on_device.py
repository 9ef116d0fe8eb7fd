"""The train split kept on the device: each step gathers its batch there.

For a small in-memory split (MNIST, CIFAR-10 as a decoded `Split`) with no host-side ops,
reading batches on the host (grain threads, a host -> device copy per step) does nothing
but take CPU time from the step: on a 2-core machine the reader's threads and copies
cost the loop about a fifth of the bare step's speed (benchmarks/loop_overhead.py). Here
the images and labels go to the device once; each step only sends its example indices
(`input_pipeline.TrainBatch.indices`, so the batches are exactly the host reader's and a
resumed run reads the same ones) and the jitted step gathers them
(`parallel.Compiled.train_from_index`).
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from cnn_jax.data.input_pipeline import TrainBatch
from cnn_jax.data.split import Split

SETTINGS = ("auto", "always", "never")


def why_not(config: Any, source: Any, process_count: int) -> Optional[str]:
  """Why this run's train split cannot live on the device (None: it can)."""
  ds = config.dataset
  if not isinstance(source, Split):
    return "the train split is read from files, not held in memory as a decoded Split"
  if ds.pp_train:
    return f"dataset.pp_train={ds.pp_train!r} runs host-side ops per example"
  if config.get("task", "classification") != "classification":
    return f"task={config.task!r} batches carry boxes, read on the host"
  if config.parallel != "sharded":
    return f"parallel={config.parallel!r} (only 'sharded' gathers on the device)"
  if process_count > 1:
    return "each of several processes holds its own share of the split"
  size_mb = (source.images.nbytes + source.labels.nbytes) / 2**20
  if size_mb > ds.get("on_device_max_mb", 1024):
    return f"the split is {size_mb:.0f} MB > dataset.on_device_max_mb={ds.on_device_max_mb}"
  return None


def use_on_device(config: Any, source: Any, process_count: int) -> bool:
  """Whether to keep the train split on the device (config.dataset.on_device)."""
  setting = config.dataset.get("on_device", "auto")
  if setting not in SETTINGS:
    raise ValueError(f"dataset.on_device must be 'auto', 'always' or 'never', got {setting!r}")
  if setting == "never" or source is None:
    return False
  reason = why_not(config, source, process_count)
  if reason and setting == "always":
    raise ValueError(f"dataset.on_device='always' but {reason}; set dataset.on_device='auto' "
                     "to read batches on the host instead")
  return reason is None


def put_split(source: Split, sharding: Any) -> dict[str, Any]:
  """The split's images and labels on the device(s), replicated (one copy, once per run)."""
  import jax  # noqa: PLC0415 - heavy: the host-side data modules load without it
  return {"image": jax.device_put(np.asarray(source.images), sharding),
          "label": jax.device_put(np.asarray(source.labels, np.int32), sharding)}


def index_batches(source: Split, batch_size: int, seed: int, *, steps_per_epoch: int,
                  start_step: int = 0, num_steps: int) -> Iterator[dict[str, np.ndarray]]:
  """{"index": int32 (batch_size,)} for global steps start_step .. num_steps - 1: the
  examples `input_pipeline.train_batches` would read at those steps."""
  order = TrainBatch(source, batch_size, steps_per_epoch, seed, "")
  for step in range(start_step, num_steps):
    yield {"index": order.indices(step)[1].astype(np.int32)}
