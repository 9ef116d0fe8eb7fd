"""tfds input pipeline without a TensorFlow runtime.

Data sets are read with `tfds.data_source` (random access into array_record files) and
batched with numpy. Why not `tfds.load` + tf.data: reading needs no TensorFlow, there
is no second runtime competing with XLA for the CPU cores, and a random-access source
makes the position in an epoch a pure function of (seed, epoch, step) — exactly what an
exact resume needs. TensorFlow is only needed once, to *prepare* a data set from its
raw files (`cnn-jax prepare`, or automatically when `raw_dir` is given).

Per-host sharding: each process reads `tfds.even_splits(split, process_count)[index]`.
Train batches have a fixed shape (the last partial batch of an epoch is dropped; the
order is reshuffled each epoch). Eval batches are padded to a fixed shape and carry a
`mask` so that every test example counts exactly once and nothing recompiles.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

# Raw files tfds expects in `manual_dir` for the data sets we document.
RAW_FILES = {
    "mnist": ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
    "fashion_mnist": ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                      "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
    "cifar10": ["cifar-10-binary.tar.gz"],
}

# ImageNet's per-channel mean / std: what torchvision / Keras "torch"-mode weights expect.
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# Per-channel mean / std of the training split (pixel values scaled to [0, 1]).
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenette": IMAGENET_MEAN_STD,
    "imagenet2012": IMAGENET_MEAN_STD,
}


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per channel for data set `name`; 0.5 / 0.5 for one without statistics here."""
  return NORMALIZATION.get(name, ((0.5,), (0.5,)))


class DatasetUnavailableError(RuntimeError):
  """The data set is neither prepared in data_dir nor preparable from raw_dir."""


def default_data_dir(data_dir: Optional[str] = None) -> Optional[str]:
  return data_dir or os.environ.get("CNN_JAX_DATA_DIR") or os.environ.get("TFDS_DATA_DIR")


def default_raw_dir(raw_dir: Optional[str] = None) -> Optional[str]:
  return raw_dir or os.environ.get("CNN_JAX_RAW_DIR")


def _builder(name: str, data_dir: Optional[str]):
  import tensorflow_datasets as tfds
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(name, tfds.list_builders(), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"tensorflow-datasets knows no data set named {name!r}.{hint}") from None


def _missing_data_message(name: str, data_dir: Optional[str], raw_dir: Optional[str],
                          cause: str = "") -> str:
  files = RAW_FILES.get(name)
  where = raw_dir or "<RAW_DIR>"
  lines = [f"data set {name!r} is not prepared in data_dir={data_dir or '~/tensorflow_datasets'}"
           + (f" and could not be prepared ({cause})" if cause else "") + "."]
  if files:
    lines.append(f"Put the original files {', '.join(files)} in {where}/ and pass "
                 f"--config.dataset.raw_dir={where} (or set CNN_JAX_RAW_DIR), or run "
                 f"`cnn-jax prepare {name} --raw_dir {where}`.")
  else:
    lines.append(f"Download the original files of {name} (see its tensorflow-datasets page) "
                 f"into {where}/ and pass --config.dataset.raw_dir={where}.")
  lines.append("Preparing from raw files needs TensorFlow once: pip install tensorflow-cpu.")
  return "\n".join(lines)


def prepare(name: str, data_dir: Optional[str] = None, raw_dir: Optional[str] = None,
            allow_download: bool = True) -> Any:
  """Make sure `name` is prepared in data_dir (from raw_dir if given); return its builder."""
  import tensorflow_datasets as tfds
  data_dir, raw_dir = default_data_dir(data_dir), default_raw_dir(raw_dir)
  builder = _builder(name, data_dir)
  if builder.is_prepared():
    return builder
  if raw_dir is None and not allow_download:
    raise DatasetUnavailableError(_missing_data_message(name, data_dir, raw_dir))
  if raw_dir is not None:
    missing = [f for f in RAW_FILES.get(name, []) if not os.path.exists(os.path.join(raw_dir, f))]
    if missing:
      raise DatasetUnavailableError(_missing_data_message(
          name, data_dir, raw_dir, f"missing in raw_dir: {', '.join(missing)}"))
  # A download (and extraction) cache of its own per data set: tfds names extracted files
  # after the archive, and MNIST and Fashion-MNIST ship archives with the same names, so a
  # shared cache silently turns Fashion-MNIST into MNIST.
  download_dir = os.path.join(builder.data_dir_root, "downloads", name)
  config = tfds.download.DownloadConfig(manual_dir=raw_dir)
  try:
    builder.download_and_prepare(download_dir=download_dir, download_config=config)
  except Exception as e:  # network down, checksum mismatch, no TensorFlow, ...
    raise DatasetUnavailableError(_missing_data_message(
        name, data_dir, raw_dir, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")) from e
  return builder


@dataclass
class Split:
  """A split held in memory as uint8 images (N, H, W, C) and int32 labels (N,)."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  def __len__(self) -> int:
    return len(self.labels)


def load_split(name: str, split: str, data_dir: Optional[str] = None,
               raw_dir: Optional[str] = None, process_index: int = 0, process_count: int = 1,
               allow_download: bool = True, max_examples: Optional[int] = None) -> Split:
  """Read this process's share of a split into memory.

  Each process gets `tfds.even_splits(split, process_count)[process_index]`, so the
  processes of a multi-host job together read every example exactly once.
  """
  import tensorflow_datasets as tfds
  builder = prepare(name, data_dir, raw_dir, allow_download)
  sub = tfds.even_splits(split, process_count)[process_index] if process_count > 1 else split
  try:
    source = tfds.data_source(name, split=sub, data_dir=default_data_dir(data_dir))
  except (ValueError, KeyError) as e:
    raise ValueError(f"cannot read split {split!r} of {name!r} (it has "
                     f"{list(builder.info.splits) or 'unknown splits'}): {e}") from e
  n = len(source) if max_examples is None else min(len(source), max_examples)
  records = [source[i] for i in range(n)]
  images = np.stack([np.asarray(r["image"]) for r in records]).astype(np.uint8)
  if images.ndim == 3:
    images = images[..., None]
  labels = np.asarray([r["label"] for r in records], np.int32)
  num_classes = builder.info.features["label"].num_classes
  return Split(images, labels, num_classes)


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


def train_batches(data: Split, batch_size: int, seed: int, epoch: int, start_step: int = 0,
                  num_steps: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
  """Shuffled fixed-shape batches of one epoch, starting at `start_step` (for resume).

  num_steps (default: all full batches of `data`) is the epoch length every process of a
  multi-host job agreed on: one holding an example more must not take a step more.
  """
  available = steps_per_epoch(len(data), batch_size)
  if num_steps is None:
    num_steps = available
  elif num_steps > available:
    raise ValueError(f"num_steps={num_steps} but {len(data)} examples give only {available} "
                     f"batches of {batch_size}")
  order = epoch_permutation(len(data), seed, epoch)
  for step in range(start_step, num_steps):
    idx = np.sort(order[step * batch_size:(step + 1) * batch_size])
    yield {"image": data.images[idx], "label": data.labels[idx]}


def eval_batches(data: Split, batch_size: int, num_batches: Optional[int] = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """All examples in order; the last batch is padded and `mask` marks real examples.

  num_batches (at least what the data needs) pads with fully masked batches, so that
  every process of a multi-host job runs the same number of eval steps.
  """
  n = len(data)
  needed = -(-n // batch_size)
  for b in range(max(needed, num_batches or 0)):
    start, stop = min(b * batch_size, n), min((b + 1) * batch_size, n)
    real = stop - start
    images, labels = data.images[start:stop], data.labels[start:stop]
    mask = np.zeros(batch_size, np.float32)
    mask[:real] = 1
    if real < batch_size:
      pad = batch_size - real
      images = np.concatenate([images, np.zeros((pad,) + data.images.shape[1:], data.images.dtype)])
      labels = np.concatenate([labels, np.zeros((pad,), data.labels.dtype)])
    yield {"image": images, "label": labels, "mask": mask}
