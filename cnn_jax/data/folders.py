"""Image folders: `DIR/<split>/<class>/*.jpg`, as Keras' `image_dataset_from_directory` and
torchvision's `ImageFolder` lay them out.

Labels are class NAMES numbered by the training split: the training split's class folders,
sorted, are labels 0..K-1, and every other split is labelled by the same names. Why not
number each split's own folders: a test split without one of the training classes (or
with one more) would shift every label after it, and "bee" would be scored as "ant". A
split may lack some training classes (its labels keep the training numbers); a class the
training split lacks is refused, naming it, before anything compiles.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Optional, Sequence

import numpy as np

from cnn_jax.data import images
from cnn_jax.data.split import parse_split, slice_range


class FolderSource:
  """`root/<class>/*.{jpg,png,...}` decoded on access; label i is class_names[i].

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
    return images.decode_image(self.files[i], self.channels), int(self.labels[i])

  def subset(self, index: np.ndarray) -> "FolderSource":
    return FolderSource([self.files[i] for i in index], self.labels[index], self.class_names,
                        self.channels)

  @property
  def image_shape(self) -> Optional[tuple[int, int, int]]:
    """(H, W, C) when every image has that size (read from headers only), else None."""
    if self._shape == "unknown":
      sizes = set()
      for f in self.files:
        size = images.header_size(f)
        if size is not None:
          sizes.add(size)
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


def _split_dir(root: str, split: str) -> str:
  name, _, spec = parse_split(split)
  split_dir = os.path.join(root, name)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"dataset.path={root!r} does not exist; point it at a folder "
                            "holding one sub-folder per split (train/, val/ or test/)")
  if not os.path.isdir(split_dir):
    have = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    raise FileNotFoundError(f"no split folder {split_dir!r} (split {spec!r}); {root} holds "
                            f"{have or 'no folders'}. Expected {root}/<split>/<class>/*.jpg")
  return split_dir


def folder_classes(root: str, split: str) -> list[str]:
  """The sorted class folder names of split `split` (its slice, if any, is ignored)."""
  split_dir = _split_dir(root, split)
  classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
  if not classes:
    raise ValueError(f"{split_dir} has no class sub-folders: put each class's images in "
                     f"{split_dir}/<class name>/ (labels are the sorted folder names)")
  return classes


def folder_source(root: str, split: str, channels: int = 3, skip_corrupt: bool = False,
                  class_names: Optional[Sequence[str]] = None, train_split: str = "train"
                  ) -> FolderSource:
  """The split `split` (e.g. 'train[:90%]') of the image folder tree under `root`.

  class_names: label i is class_names[i] (the training split's classes, `folder_classes`);
  None: this split's own sorted class folders. A class folder not in class_names is a
  ValueError naming it, the split and `train_split` (the split that defines the classes).
  """
  _, (start, stop), spec = parse_split(split)
  split_dir = _split_dir(root, split)
  classes = folder_classes(root, split)
  class_names = list(classes if class_names is None else class_names)
  unknown = [c for c in classes if c not in class_names]
  if unknown:
    raise ValueError(f"split {spec!r} has class folder(s) {', '.join(map(repr, unknown))} that "
                     f"the training split {train_split!r} lacks (its classes: "
                     f"{', '.join(class_names)}); a model cannot be scored on a class it never "
                     f"saw: remove {os.path.join(split_dir, unknown[0])}, or add that class "
                     "to the training split")
  index = {c: k for k, c in enumerate(class_names)}
  files, labels = [], []
  for c in classes:
    names = sorted(f for f in os.listdir(os.path.join(split_dir, c))
                   if f.lower().endswith(images.IMAGE_EXTENSIONS))
    if not names:
      raise ValueError(f"class folder {os.path.join(split_dir, c)} holds no images "
                       f"({', '.join(images.IMAGE_EXTENSIONS)}); remove it or add its images")
    files += [os.path.join(split_dir, c, f) for f in names]
    labels += [index[c]] * len(names)
  order = np.random.default_rng(0).permutation(len(files))[slice_range(start, stop, len(files))]
  source = FolderSource([files[i] for i in order], np.asarray(labels, np.int32)[order],
                        class_names, channels)
  if skip_corrupt:
    source = without_corrupt(source)
  return source


NAMES_FILES = ("classes.txt", "labels.txt")


def display_names(root: str, folder_names: Sequence[str],
                  configured: Optional[Sequence[str]] = None) -> list[str]:
  """What to call each class (label i is folder_names[i]) in predictions and pictures.

  Folders are often named by id (ImageNet's `n03000684`); a person wants "chain saw".
  In order: `configured` (dataset.class_names: one name per class in label order, or
  (folder name, name) pairs, which name the folders they list and leave the others); else a
  names file in `root` (classes.txt or labels.txt, one `folder_name display name` per
  line, as ImageNet's LOC_synset_mapping.txt); else the folder names themselves.
  """
  folder_names = list(folder_names)
  if configured and all(isinstance(c, (tuple, list)) and len(c) == 2 for c in configured):
    mapping = {str(k): str(v) for k, v in configured}  # ((folder, name), ...): by folder name
    return [mapping.get(f, f) for f in folder_names]
  if configured:
    if len(configured) != len(folder_names):
      raise ValueError(f"dataset.class_names has {len(configured)} names but {root} has "
                       f"{len(folder_names)} classes ({', '.join(folder_names)}); give one "
                       "name per class folder, in sorted folder order")
    return [str(n) for n in configured]
  for name in NAMES_FILES:
    path = os.path.join(root, name)
    if os.path.isfile(path):
      mapping = {}
      for line in open(path, encoding="utf-8"):
        key, _, shown = line.strip().partition(" ")
        if key:
          mapping[key] = shown.strip() or key
      return [mapping.get(f, f) for f in folder_names]
  return folder_names


def without_corrupt(source: FolderSource) -> FolderSource:
  """`source` less its unreadable files (skipped, counted in one warning)."""
  return images.without_unreadable(source, source.files)
