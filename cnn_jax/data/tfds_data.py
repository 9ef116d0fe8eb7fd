"""tensorflow-datasets data sets, read without a TensorFlow runtime.

Data sets are read with `tfds.data_source` (random access into array_record files).
Why not `tfds.load` + tf.data: reading needs no TensorFlow, there is no second runtime
competing with XLA for the CPU cores, and a random-access source is what grain reads by
index. TensorFlow is only needed once, to *prepare* a data set from its raw files
(`cnn-jax prepare`, or automatically when `raw_dir` is given).

Per-host sharding: each process reads `tfds.even_splits(split, process_count)[index]`.
"""
from __future__ import annotations

import difflib
import os
import socket
from typing import Any, Optional

import numpy as np
from ml_collections import ConfigDict

from cnn_jax.data import cache as cache_lib

# Raw files tfds expects in `manual_dir` for the data sets we document.
RAW_FILES = {
    "mnist": ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
    "fashion_mnist": ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                      "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
    "cifar10": ["cifar-10-binary.tar.gz"],
    "cifar100": ["cifar-100-binary.tar.gz"],
    "imagenet2012": ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"],
    "imagenet2012_subset": ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"],
}


class DatasetUnavailableError(RuntimeError):
  """The data set is neither prepared in data_dir nor preparable from raw_dir."""


def default_data_dir(data_dir: Optional[str] = None) -> Optional[str]:
  return data_dir or os.environ.get("CNN_JAX_DATA_DIR") or os.environ.get("TFDS_DATA_DIR")


def default_raw_dir(raw_dir: Optional[str] = None) -> Optional[str]:
  return raw_dir or os.environ.get("CNN_JAX_RAW_DIR")


def _builder(name: str, data_dir: Optional[str]):
  import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy: only when tfds data is read
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(name, tfds.list_builders(), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"tensorflow-datasets knows no data set named {name!r}.{hint}") from None


def _missing_data_message(name: str, data_dir: Optional[str], raw_dir: Optional[str],
                          cause: str = "") -> str:
  files = RAW_FILES.get(name.split("/")[0])
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


PROBE_HOST = "storage.googleapis.com"  # where tfds keeps most data sets and its checksums


def _network_reachable(timeout: float = 3.0) -> bool:
  """Whether a download can start at all (behind a proxy, assume it can: tfds will say)."""
  if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
    return True
  try:
    socket.create_connection((PROBE_HOST, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def prepare(name: str, data_dir: Optional[str] = None, raw_dir: Optional[str] = None,
            allow_download: bool = True) -> Any:
  """Make sure `name` is prepared in data_dir (from raw_dir if given); return its builder."""
  import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy: only when tfds data is read
  data_dir, raw_dir = default_data_dir(data_dir), default_raw_dir(raw_dir)
  builder = _builder(name, data_dir)
  if builder.is_prepared():
    return builder
  if raw_dir is None and not allow_download:
    raise DatasetUnavailableError(_missing_data_message(name, data_dir, raw_dir))
  if raw_dir is not None:
    missing = [f for f in RAW_FILES.get(name.split("/")[0], []) if not os.path.exists(os.path.join(raw_dir, f))]
    if missing:
      raise DatasetUnavailableError(_missing_data_message(
          name, data_dir, raw_dir, f"missing in raw_dir: {', '.join(missing)}"))
  mocked = getattr(type(builder).download_and_prepare, "__name__", "").startswith("mock")
  if raw_dir is None and not mocked and not _network_reachable():  # tfds.testing.mock_data: none
    raise DatasetUnavailableError(_missing_data_message(
        name, data_dir, raw_dir, f"no network: {PROBE_HOST} cannot be reached, and tfds would "
        "retry its downloads for minutes before failing"))
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


class TfdsSource:
  """A tfds split decoded on access (for data sets too large, or too ragged, to cache)."""

  def __init__(self, source: Any, num_classes: int, class_names: Optional[list[str]],
               image_shape: Optional[tuple[int, ...]]):
    self.source, self.num_classes, self.class_names = source, num_classes, class_names
    self.image_shape = image_shape
    self.labels = None  # unknown without decoding every record

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    record = self.source[int(i)]
    image = np.asarray(record["image"], np.uint8)
    return (image[..., None] if image.ndim == 2 else image), int(record["label"])

  def subset(self, index: np.ndarray) -> "Subset":
    return Subset(self, np.asarray(index))


class Subset:
  """Examples `index` of a source, by reference."""

  def __init__(self, parent: Any, index: np.ndarray):
    self.parent, self.index = parent, index
    self.num_classes, self.class_names = parent.num_classes, parent.class_names
    self.image_shape, self.labels = parent.image_shape, None

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    return self.parent[self.index[i]]

  def subset(self, index: np.ndarray) -> "Subset":
    return Subset(self.parent, self.index[index])


def process_data_source(ds: Any, split: str, process_index: int = 0, process_count: int = 1
                        ) -> tuple[Any, str, Any]:
  """(builder, this process's sub-split, its `tfds.data_source`): the data set prepared
  first, the split cut into even shares (`tfds.even_splits`), a bad split name explained."""
  import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy: only when tfds data is read
  builder = prepare(ds.name, ds.get("data_dir"), ds.get("raw_dir"), ds.get("allow_download", True))
  sub = tfds.even_splits(split, process_count)[process_index] if process_count > 1 else split
  try:
    source = tfds.data_source(ds.name, split=sub, data_dir=default_data_dir(ds.get("data_dir")))
  except (ValueError, KeyError) as e:
    raise ValueError(f"cannot read split {split!r} of {ds.name!r} (it has "
                     f"{list(builder.info.splits) or 'unknown splits'}): {e}") from e
  return builder, sub, source


def examples_share(max_examples: int, process_index: int, process_count: int) -> int:
  """This process's part of a global `max_examples` (as folders count it: in all)."""
  return (max_examples * (process_index + 1) // process_count
          - max_examples * process_index // process_count)


def tfds_source(ds: Any, split: str, *, max_examples: Optional[int] = None,
                process_index: int = 0, process_count: int = 1) -> Any:
  """This process's share of a tfds split: a cached in-memory `Split` when it is small."""
  builder, sub, source = process_data_source(ds, split, process_index, process_count)
  label = builder.info.features["label"]
  shape = tuple(builder.info.features["image"].shape)
  if len(shape) == 2:
    shape = shape + (1,)
  src: Any = TfdsSource(source, label.num_classes, list(label.names),
                        None if None in shape else shape)
  if max_examples is not None:  # a global count, as for folders: this process keeps its share
    mine = examples_share(max_examples, process_index, process_count)
    if mine < len(src):
      src = src.subset(np.arange(mine))
  return cache_lib.maybe_cached(src, {"kind": "tfds", "name": ds.name, "version": str(builder.version),
                                      "data_dir": builder.data_dir, "split": sub,
                                      "max_examples": max_examples, "n": len(src)}, ds)


def load_split(name: str, split: str, data_dir: Optional[str] = None,
               raw_dir: Optional[str] = None, process_index: int = 0, process_count: int = 1,
               allow_download: bool = True, max_examples: Optional[int] = None,
               cache: bool = True) -> Any:
  """A tfds split as a source without a run config (notebooks, tests): see `tfds_source`."""
  ds = ConfigDict({"name": name, "data_dir": data_dir, "raw_dir": raw_dir,
                   "allow_download": allow_download, "cache": cache})
  return tfds_source(ds, split, max_examples=max_examples, process_index=process_index,
                     process_count=process_count)
