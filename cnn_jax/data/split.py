"""Split names and in-memory splits: what every source module shares (a leaf module).

`parse_split` reads tfds' slicing syntax ("train[:90%]") for the sources that are not tfds
(image folders, VOC folders, the synthetic shapes); `shard` cuts one process's share of a
source; `Split` is a split held in memory. They live here, below every source module and
the dispatcher (`sources.load_source`), so that no source has to import the dispatcher
back: nothing here imports anything else from `cnn_jax.data`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import numpy as np

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


def parse_split(spec: str) -> tuple[str, tuple[Optional[str], Optional[str]], str]:
  """'train[:90%]' -> ('train', (None, '90%'), 'train[:90%]'): tfds' slicing syntax."""
  m = _SPLIT_RE.match(spec.replace(" ", ""))
  if not m:
    raise ValueError(f"cannot read split {spec!r}: use NAME or NAME[start:stop] with integers or "
                     "percentages, e.g. 'train[:90%]'")
  return m.group(1), (m.group(2), m.group(3)), spec


def bound(v: Optional[str], n: int, default: int) -> int:
  """One end of a slice of `parse_split` ('90%', '-10', None) as an index into n examples."""
  if v is None:
    return default
  k = int(v[:-1]) * n // 100 if v.endswith("%") else int(v)
  return k + n if k < 0 else min(k, n)


def slice_range(start: Optional[str], stop: Optional[str], n: int) -> np.ndarray:
  """The indices [start:stop] of n examples (the ends as `parse_split` gives them)."""
  return np.arange(bound(start, n, 0), bound(stop, n, n))


def shard(source: Any, process_index: int, process_count: int) -> Any:
  """This process's contiguous share (as `tfds.even_splits`: sizes differ by at most one)."""
  if process_count == 1:
    return source
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1}")
  n = len(source)
  lo, hi = process_index * n // process_count, (process_index + 1) * n // process_count
  return source.subset(np.arange(lo, hi))
