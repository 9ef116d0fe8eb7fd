"""A decoded cache: small fixed-shape data sets are decoded once, then memory-mapped.

Why: decoding is what makes a start slow (MNIST's 70,000 PNGs take ~17 s; CIFAR-10's
60,000 JPEGs longer), and a research loop starts many runs. The first run decodes the
split (in parallel threads: PIL releases the GIL) into `images.npy` / `labels.npy` under
`dataset.cache_dir` (default `$CNN_JAX_CACHE_DIR` or `~/.cache/cnn_jax`), keyed by a hash
of everything the decoded arrays depend on (files, sizes, mtimes, tfds version, split,
share, channels). Later runs memory-map the arrays: the first step comes in seconds, and
grain workers share the pages instead of copying them.

A cache entry is written to a temporary folder and renamed into place, so a killed run
never leaves a half-written entry that a later run would trust. The folder is capped at
`dataset.cache_total_mb`: after a new entry is written, the least recently used entries go
(each read marks its entry used). `cnn-jax cache list|clear` shows and empties it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from cnn_jax.data.split import Split

log = logging.getLogger("cnn_jax")


def cache_dir(ds: Any) -> str:
  return (ds.get("cache_dir") or os.environ.get("CNN_JAX_CACHE_DIR")
          or os.path.join(os.path.expanduser("~"), ".cache", "cnn_jax"))


def key_of(description: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _load(path: str) -> Any:
  meta_path = os.path.join(path, "meta.json")
  meta = json.loads(open(meta_path).read())
  try:
    os.utime(meta_path)  # "last used", for least-recently-used eviction (atime is unreliable)
  except OSError:  # a read-only cache still reads
    pass
  images = np.load(os.path.join(path, "images.npy"), mmap_mode="r")
  labels = np.load(os.path.join(path, "labels.npy"))
  return Split(images, labels, meta["num_classes"], meta.get("class_names"),
               mapped_from=os.path.join(path, "images.npy"))


def decode_all(source: Any, shape: tuple[int, ...], threads: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Every example of `source` as one uint8 array (N, *shape) and int32 labels (N,)."""
  images = np.empty((len(source),) + tuple(shape), np.uint8)
  labels = np.empty((len(source),), np.int32)

  def put(i: int) -> None:
    img, label = source[i]
    img = np.asarray(img, np.uint8)
    if img.ndim == 2:
      img = img[..., None]
    if img.shape != tuple(shape):
      raise ValueError(f"example {i} has shape {img.shape}, the others {tuple(shape)}")
    images[i], labels[i] = img, label

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for f in [pool.submit(put, i) for i in range(len(source))]:
      f.result()
  return images, labels


def maybe_cached(source: Any, description: dict[str, Any], ds: Any,
                 prepare: Optional[Callable[[Any], Any]] = None) -> Any:
  """`source` as a memory-mapped `Split` from the cache (filled now if needed), when it fits.

  Returned unchanged when caching is off (`dataset.cache=False`), when its images differ
  in size, or when the decoded split would exceed `dataset.cache_max_mb`. `prepare` runs
  only when the cache cannot answer (e.g. the corrupt-file scan of skip_corrupt, whose
  outcome the description's file fingerprint already fixes): a cache hit skips it.
  """
  prepare = prepare or (lambda s: s)
  if not ds.get("cache", True) or len(source) == 0:
    return prepare(source)
  root = os.path.join(cache_dir(ds), key_of(description))
  if os.path.exists(os.path.join(root, "meta.json")):
    return _load(root)
  source = prepare(source)
  shape = source.image_shape
  if shape is None or any(v is None for v in shape):
    return source
  size_mb = len(source) * int(np.prod(shape)) / 2**20
  if size_mb > ds.get("cache_max_mb", 4096):
    log.info("not caching %s: %.0f MB decoded > dataset.cache_max_mb", description, size_mb)
    return source
  t0 = time.time()
  images, labels = decode_all(source, shape)
  os.makedirs(os.path.dirname(root), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(root))
  try:
    np.save(os.path.join(tmp, "images.npy"), images)
    np.save(os.path.join(tmp, "labels.npy"), labels)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump({"num_classes": source.num_classes, "class_names": source.class_names,
                 "description": description}, f, default=str)
    os.rename(tmp, root)
  except OSError as e:  # another process filled it first, or the disk is full: use memory
    shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.exists(os.path.join(root, "meta.json")):
      log.warning("could not write the decoded cache %s (%s); using the decoded arrays in "
                  "memory", root, e)
      return Split(images, labels, source.num_classes, source.class_names)
  log.info("decoded %d examples (%.0f MB) in %.1fs, cached in %s", len(source), size_mb,
           time.time() - t0, root)
  split = _load(root)
  evict(os.path.dirname(root), ds.get("cache_total_mb", 8192), keep=(os.path.basename(root),))
  return split


def entries(directory: str) -> list[dict[str, Any]]:
  """The cache's entries, most recently used first: key, MB on disk, last use, what it holds."""
  out = []
  if not os.path.isdir(directory):
    return out
  for key in os.listdir(directory):
    path = os.path.join(directory, key)
    meta_path = os.path.join(path, "meta.json")
    if key.startswith(".") or not os.path.isfile(meta_path):
      continue
    try:
      meta = json.loads(open(meta_path).read())
      size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
      used = os.path.getmtime(meta_path)
    except (OSError, ValueError):  # removed or being written meanwhile
      continue
    labels = os.path.join(path, "labels.npy")
    examples = int(np.load(labels, mmap_mode="r").shape[0]) if os.path.exists(labels) else 0
    out.append({"key": key, "mb": size / 2**20, "last_used": used, "examples": examples,
                "description": meta.get("description", {})})
  return sorted(out, key=lambda e: -e["last_used"])


def remove(directory: str, key: str) -> None:
  """Delete one entry: renamed away first, so a reader never sees a half-deleted entry."""
  path = os.path.join(directory, key)
  gone = tempfile.mkdtemp(prefix=".del-", dir=directory)
  os.rename(path, os.path.join(gone, key))
  shutil.rmtree(gone, ignore_errors=True)


def evict(directory: str, max_mb: float, keep: tuple[str, ...] = ()) -> list[str]:
  """Remove least recently used entries until the cache holds at most `max_mb` (never those
  in `keep`); returns the removed keys. A run that has an entry memory-mapped keeps reading
  it: a removed file lives on until its last reader closes it."""
  listed = entries(directory)
  total = sum(e["mb"] for e in listed)
  removed = []
  for e in reversed(listed):  # least recently used first
    if total <= max_mb:
      break
    if e["key"] in keep:
      continue
    try:
      remove(directory, e["key"])
    except OSError:  # another process removed it first
      continue
    total -= e["mb"]
    removed.append(e["key"])
  if removed:
    log.info("decoded cache over dataset.cache_total_mb=%d: removed %d least recently used "
             "entr%s", max_mb, len(removed), "y" if len(removed) == 1 else "ies")
  return removed


def command(argv: Sequence[str]) -> int:
  """`cnn-jax cache list | clear (--all | KEY ...) [--cache_dir D]`."""
  p = argparse.ArgumentParser("cnn-jax cache", description="The decoded-data cache: list its "
                              "entries, or clear them (they are decoded again when needed).")
  p.add_argument("action", choices=["list", "clear"])
  p.add_argument("keys", nargs="*", help="clear: the entries to remove (see list)")
  p.add_argument("--all", action="store_true", help="clear: every entry")
  p.add_argument("--cache_dir", default=None, help="default $CNN_JAX_CACHE_DIR or ~/.cache/cnn_jax")
  args = p.parse_intermixed_args(argv)
  directory = cache_dir({"cache_dir": args.cache_dir})
  listed = entries(directory)
  if args.action == "list":
    for e in listed:
      d = e["description"]
      what = " ".join(str(d[k]) for k in ("name", "root", "split", "share") if d.get(k) not in (None, ""))
      used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"]))
      print(f"{e['key']}  {e['mb']:8.1f} MB  {e['examples']:7d} examples  used {used}  {what}")
    print(f"{len(listed)} entries, {sum(e['mb'] for e in listed):.1f} MB in {directory}")
    return 0
  known = {e["key"] for e in listed}
  if bool(args.all) == bool(args.keys):
    raise ValueError("cache clear: give --all or the keys to remove (cnn-jax cache list shows them)")
  unknown = [k for k in args.keys if k not in known]
  if unknown:
    raise ValueError(f"no cache entry {', '.join(unknown)} in {directory} (cnn-jax cache list)")
  for key in (known if args.all else args.keys):
    remove(directory, key)
  print(f"removed {len(known) if args.all else len(args.keys)} entries from {directory}")
  return 0
