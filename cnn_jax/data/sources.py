"""The one place a split named in a config becomes a random-access source: `load_source`.

A source is anything with `len(source)`, `source[i] -> (image uint8 HWC, label)`,
`num_classes`, `class_names` and `image_shape` ((H, W, C), or None when images differ in
size). grain reads sources by index (`input_pipeline`), so the position in an epoch is a
pure function of (seed, epoch, step), whatever the number of workers.

This module only dispatches, on `dataset.name`: tfds data sets (prepared offline,
`tfds_data`, `tfds_detection`), `name="folder"` image folders (`folders`), `name="voc"`
VOC XML folders (`voc`) and `name="shapes"` (`synthetic`). What they share (`split.Split`,
`parse_split`, `shard`; the image decoder `images`) lives in leaf modules below them all,
so no back-end imports this dispatcher back. Small data sets with fixed-shape images are
decoded once and cached (`cache`): later runs start in seconds.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import numpy as np

from cnn_jax.data import cache as cache_lib
from cnn_jax.data import folders, synthetic, tfds_data, tfds_detection, voc
from cnn_jax.data.split import parse_split, shard

log = logging.getLogger("cnn_jax")


def process_shares(splits: dict[str, Optional[Any]], process_index: int, process_count: int
                   ) -> dict[str, Optional[Any]]:
  """This process's share of each whole split held in memory (None stays None).

  What `load_source` does for a config's evaluation splits, for splits passed to
  `train_and_evaluate` directly: P processes evaluate P disjoint parts, instead of each the
  whole split (every example then counted P times). The train split is not shared out:
  each process reads its part of every global batch (input_pipeline.TrainBatch).
  """
  return {k: None if v is None else shard(v, process_index, process_count)
          for k, v in splits.items()}


def _training_classes(root: str, train_split: str) -> Optional[list[str]]:
  """The class names every split of an image folder is labelled by: the training split's.

  None (each split its own sorted folders) only when there is no training split to read:
  `train_split` unset, or its folder absent (evaluating a run where only test data is).
  """
  if not train_split or not os.path.isdir(os.path.join(root, parse_split(train_split)[0])):
    log.info("image folder %s: no training split folder %r; labels follow each split's own "
             "sorted class folders", root, train_split)
    return None
  return folders.folder_classes(root, train_split)


def load_source(ds: Any, split: str, *, max_examples: Optional[int] = None,
                process_index: int = 0, process_count: int = 1) -> Any:
  """This process's share of split `split` of the data set described by config `ds`.

  Fixed-shape data sets smaller than `ds.cache_max_mb` come back as an in-memory `Split`
  read from the decoded cache (built on first use); others decode on access.
  """
  if ds.name == "shapes":  # synthetic one-object localization data (data/synthetic.py)
    source = synthetic.shapes_source(split)
    if max_examples is not None:
      source = source.subset(np.arange(min(max_examples, len(source))))
    return shard(source, process_index, process_count)
  if ds.name.startswith("voc/"):  # tfds' Pascal VOC (voc/2007, voc/2012)
    return tfds_detection.tfds_detection_source(ds, split, max_examples=max_examples,
                                                process_index=process_index,
                                                process_count=process_count)
  if ds.name in ("voc", "folder") and ds.get("path") and not os.path.isdir(ds.path):
    env = ds.get("path_env")
    how = f"set ${env}=DIR or pass --config.dataset.path=DIR" if env else "pass --config.dataset.path=DIR"
    layout = ("DIR/<split>/<class>/*.jpg" if ds.name == "folder"
              else "DIR/images/*.jpg and Pascal VOC XML in DIR/annotations")
    raise FileNotFoundError(f"dataset.path={ds.path!r} does not exist: {how}, holding {layout} "
                            "(docs/data.md)")
  if ds.name == "voc":
    if not ds.get("path"):
      raise ValueError("dataset.name='voc' needs --config.dataset.path=DIR holding DIR/images/*.jpg "
                       "and Pascal VOC XML files in DIR/annotations (or Annotations, annots)")
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
    train_split = ds.get("train_split") or ""
    source = folders.folder_source(ds.path, split, ds.get("channels") or 3,
                                   class_names=_training_classes(ds.path, train_split),
                                   train_split=train_split)
    if max_examples is not None:
      source = source.subset(np.arange(min(max_examples, len(source))))
    source = shard(source, process_index, process_count)
    shown = folders.display_names(ds.path, source.class_names, ds.get("class_names"))
    source = cache_lib.maybe_cached(source, {"kind": "folder", "root": os.path.abspath(ds.path),
                                             "split": split, "fingerprint": source.fingerprint(),
                                             **({"skip_corrupt": True} if skip else {})},
                                    ds, prepare=folders.without_corrupt if skip else None)
    source.class_names = shown  # labels follow the folders; names are what people read
    return source
  return tfds_data.tfds_source(ds, split, max_examples=max_examples,
                               process_index=process_index, process_count=process_count)
