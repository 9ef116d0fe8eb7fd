"""Random-access data sources: in-memory arrays, image folders, and tfds data sets.

A source is anything with `len(source)`, `source[i] -> (image uint8 HWC, label int)`,
`num_classes`, `class_names` and `image_shape` ((H, W, C), or None when images differ in
size). grain reads sources by index (`input_pipeline`), so the position in an epoch is a
pure function of (seed, epoch, step), whatever the number of workers.

`load_source(dataset_config, split)` is the one place a split named in a config becomes a
source: tfds data sets (prepared offline, see `tfds_data`) and `name="folder"` image
folders laid out as Keras' `image_dataset_from_directory` / torchvision's `ImageFolder`
expect (`DIR/<split>/<class>/*.jpg`, classes sorted → labels). Small data sets with
fixed-shape images are decoded once and cached (`cache`): later runs start in seconds.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from cnn_jax.data import cache as cache_lib

log = logging.getLogger("cnn_jax")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_SPLIT_RE = re.compile(r"^(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


@dataclasses.dataclass
class Split:
  """A split held in memory (or memory-mapped) as uint8 images (N, H, W, C), int32 labels."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: Optional[list[str]] = None
  mapped_from: Optional[str] = None   # the cached images.npy `images` memory-maps

  def __getstate__(self) -> dict:
    """Pickle a memory-mapped split (to a grain worker) by its path, not its bytes."""
    state = dict(self.__dict__)
    if self.mapped_from:
      state["images"] = None
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    if self.images is None:
      self.images = np.load(self.mapped_from, mmap_mode="r")

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    return self.images[i], int(self.labels[i])

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.images.shape[1:])

  def subset(self, index: np.ndarray) -> "Split":
    return Split(np.asarray(self.images[index]), self.labels[index], self.num_classes,
                 self.class_names)


class CorruptImageError(ValueError):
  """An image file that cannot be decoded; the message names it."""


def decode_image(path: str, channels: int) -> np.ndarray:
  """Decode an image file to uint8 HWC with `channels` (1: "L", 3: "RGB"; any mode converts)."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as img:
      img = img.convert("L" if channels == 1 else "RGB")
      arr = np.asarray(img, np.uint8)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise CorruptImageError(f"cannot decode image {path}: {type(e).__name__}: {e}. Delete or "
                            "replace the file, or set --config.dataset.skip_corrupt=True to skip "
                            "unreadable files (they are counted and logged).") from None
  return arr[..., None] if arr.ndim == 2 else arr


class FolderSource:
  """`root/<class>/*.{jpg,png,...}` decoded on access; class folders sorted → labels 0..K-1.

  Files are listed in a fixed pseudo-random order (seed 0), so that a slice of the split
  (`train[:90%]`, `max_train_examples`, one host's share) holds every class in proportion.
  """

  def __init__(self, files: Sequence[str], labels: np.ndarray, class_names: list[str],
               channels: int = 3):
    self.files, self.labels = list(files), np.asarray(labels, np.int32)
    self.class_names, self.num_classes, self.channels = class_names, len(class_names), channels
    self._shape: Any = "unknown"

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    return decode_image(self.files[i], self.channels), int(self.labels[i])

  def subset(self, index: np.ndarray) -> "FolderSource":
    return FolderSource([self.files[i] for i in index], self.labels[index], self.class_names,
                        self.channels)

  @property
  def image_shape(self) -> Optional[tuple[int, int, int]]:
    """(H, W, C) when every image has that size (read from headers only), else None."""
    if self._shape == "unknown":
      from PIL import Image
      sizes = set()
      for f in self.files:
        try:
          with Image.open(f) as img:
            sizes.add(img.size)
        except Exception:  # noqa: BLE001 - reported when decoded
          continue
        if len(sizes) > 1:
          break
      self._shape = (sizes.pop()[::-1] + (self.channels,)) if len(sizes) == 1 else None
    return self._shape

  def fingerprint(self) -> dict[str, Any]:
    """What the decoded cache depends on: every file's path, label, size and mtime; the channels.

    Per file, not totals: moving one file from class A to B and another from B to A (a
    relabelling) keeps the count, the bytes, the label sum and the newest mtime.
    """
    digest = hashlib.sha256()
    for f, label in zip(self.files, self.labels.tolist()):
      s = os.stat(f)
      digest.update(f"{label}\t{s.st_size}\t{s.st_mtime_ns}\t{f}\n".encode())
    return {"files": len(self.files), "channels": self.channels, "digest": digest.hexdigest()}


def parse_split(spec: str) -> tuple[str, Optional[slice], str]:
  """'train[:90%]' -> ('train', slice spec as strings); tfds' slicing syntax for folders."""
  m = _SPLIT_RE.match(spec.replace(" ", ""))
  if not m:
    raise ValueError(f"cannot read split {spec!r}: use NAME or NAME[start:stop] with integers or "
                     "percentages, e.g. 'train[:90%]'")
  return m.group(1), (m.group(2), m.group(3)), spec


def _bound(v: Optional[str], n: int, default: int) -> int:
  if v is None:
    return default
  k = int(v[:-1]) * n // 100 if v.endswith("%") else int(v)
  return k + n if k < 0 else min(k, n)


def folder_source(root: str, split: str, channels: int = 3, skip_corrupt: bool = False
                  ) -> FolderSource:
  """The split `split` (e.g. 'train[:90%]') of the image folder tree under `root`."""
  name, (start, stop), spec = parse_split(split)
  split_dir = os.path.join(root, name)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"dataset.path={root!r} does not exist; point it at a folder "
                            "holding one sub-folder per split (train/, val/ or test/)")
  if not os.path.isdir(split_dir):
    have = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    raise FileNotFoundError(f"no split folder {split_dir!r} (split {spec!r}); {root} holds "
                            f"{have or 'no folders'}. Expected {root}/<split>/<class>/*.jpg")
  classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
  if not classes:
    raise ValueError(f"{split_dir} has no class sub-folders: put each class's images in "
                     f"{split_dir}/<class name>/ (labels are the sorted folder names)")
  files, labels = [], []
  for k, c in enumerate(classes):
    names = sorted(f for f in os.listdir(os.path.join(split_dir, c))
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
      raise ValueError(f"class folder {os.path.join(split_dir, c)} holds no images "
                       f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add its images")
    files += [os.path.join(split_dir, c, f) for f in names]
    labels += [k] * len(names)
  order = np.random.default_rng(0).permutation(len(files))
  n = len(files)
  order = order[_bound(start, n, 0):_bound(stop, n, n)]
  source = FolderSource([files[i] for i in order], np.asarray(labels, np.int32)[order], classes,
                        channels)
  if skip_corrupt:
    source = _without_corrupt(source)
  return source


def _decodes(path: str) -> bool:
  """Whether `path` decodes to the end.

  PIL's verify() checks little beyond the header for JPEG (the most common corruption, a
  download cut short, passes it), so decode: JPEGs in draft mode (1/8 scale), which still
  reads every byte of the scan but skips most of the work.
  """
  from PIL import Image
  try:
    with Image.open(path) as img:
      img.draft(None, (1, 1))  # JPEG only; other formats ignore it
      img.load()
    return True
  except Exception:  # noqa: BLE001 - any unreadable file is skipped and counted
    return False


def without_unreadable(source: Any, files: Sequence[str], skip: bool = True) -> Any:
  """`source` less the examples whose image file (`files[i]`) does not decode, counted in
  the log; with skip=False the first such file is a CorruptImageError naming it instead.
  The one corrupt-file scan of image folders and VOC folders."""
  with concurrent.futures.ThreadPoolExecutor(8) as pool:  # PIL decodes without the GIL
    ok = list(pool.map(_decodes, files))
  bad = [f for f, good in zip(files, ok) if not good]
  if not bad:
    return source
  if not skip:
    decode_image(bad[0], 3)  # raises CorruptImageError, naming the file
  log.warning("skipped %d unreadable image file(s) (dataset.skip_corrupt=True), e.g. %s",
              len(bad), ", ".join(bad[:3]))
  return source.subset(np.asarray([i for i, good in enumerate(ok) if good], np.int64))


def _without_corrupt(source: FolderSource) -> FolderSource:
  return without_unreadable(source, source.files)


def shard(source: Any, process_index: int, process_count: int) -> Any:
  """This process's contiguous share (as `tfds.even_splits`: sizes differ by at most one)."""
  if process_count == 1:
    return source
  n = len(source)
  lo, hi = process_index * n // process_count, (process_index + 1) * n // process_count
  return source.subset(np.arange(lo, hi))


def load_source(ds: Any, split: str, *, max_examples: Optional[int] = None,
                process_index: int = 0, process_count: int = 1) -> Any:
  """This process's share of split `split` of the data set described by config `ds`.

  Fixed-shape data sets smaller than `ds.cache_max_mb` come back as an in-memory `Split`
  read from the decoded cache (built on first use); others decode on access.
  """
  if ds.name == "shapes":  # synthetic one-object localization data (data/synthetic.py)
    from cnn_jax.data import synthetic  # noqa: PLC0415
    source = synthetic.shapes_source(split)
    if max_examples is not None:
      source = source.subset(np.arange(min(max_examples, len(source))))
    return shard(source, process_index, process_count)
  if ds.name.startswith("voc/"):  # tfds' Pascal VOC (voc/2007, voc/2012)
    from cnn_jax.data import tfds_detection  # noqa: PLC0415
    return tfds_detection.tfds_detection_source(ds, split, max_examples=max_examples,
                                                process_index=process_index,
                                                process_count=process_count)
  if ds.name == "voc":
    if not ds.get("path"):
      raise ValueError("dataset.name='voc' needs --config.dataset.path=DIR holding DIR/images/*.jpg "
                       "and Pascal VOC XML files in DIR/annotations (or Annotations, annots)")
    from cnn_jax.data import voc  # noqa: PLC0415
    names = ds.get("class_names")
    source = voc.voc_source(ds.path, split, image_dir=ds.get("image_dir") or "images",
                            annotation_dir=ds.get("annotation_dir"),
                            class_names=tuple(names) if names else None,
                            split_seed=int(ds.get("split_seed") or 0), max_examples=max_examples)
    source = shard(source, process_index, process_count)
    return voc.check_images(source, bool(ds.get("skip_corrupt")))
  if ds.name == "folder":
    if not ds.get("path"):
      raise ValueError("dataset.name='folder' needs --config.dataset.path=DIR holding "
                       "DIR/<split>/<class>/*.jpg")
    # The corrupt-file scan decodes every file: it runs only when the decoded cache misses
    # (the key holds every file's size and mtime, so the scan's outcome cannot change).
    skip = bool(ds.get("skip_corrupt"))
    source = folder_source(ds.path, split, ds.get("channels") or 3)
    if max_examples is not None:
      source = source.subset(np.arange(min(max_examples, len(source))))
    source = shard(source, process_index, process_count)
    return cache_lib.maybe_cached(source, {"kind": "folder", "root": os.path.abspath(ds.path),
                                           "split": split, "fingerprint": source.fingerprint(),
                                           **({"skip_corrupt": True} if skip else {})},
                                  ds, prepare=_without_corrupt if skip else None)
  from cnn_jax.data import tfds_data
  return tfds_data.tfds_source(ds, split, max_examples=max_examples,
                               process_index=process_index, process_count=process_count)
