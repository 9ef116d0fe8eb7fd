"""Data sources and the grain pipeline: image folders, the decoded cache, workers, tfds mocks.

Images are tiny (a few pixels a side), so every test decodes in milliseconds.
"""
import io
import logging
import os
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from ml_collections import ConfigDict
from PIL import Image

from cnn_jax import parallel
from cnn_jax.data import folders, images, input_pipeline, sources, tfds_data
from cnn_jax.data.folders import FolderSource
from cnn_jax.data.images import CorruptImageError
from cnn_jax.data.split import Split, shard
from cnn_jax.training import setup, trainer
from helpers import tiny_config

CLASSES = {"b_cat": 1, "a_dog": 0}  # written unsorted: labels follow the sorted names
MODES = ("L", "RGB", "RGBA", "P")


def write(path, mode, size=(5, 7), seed=0):
  """A random image of (h, w) `size` saved in `mode`; returns the PIL image as written."""
  rng = np.random.default_rng(seed)
  img = Image.fromarray(rng.integers(0, 256, (*size, 4), dtype=np.uint8), "RGBA")
  img = img.convert(mode) if mode in ("RGBA", "L") else img.convert("RGB").convert(mode)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img.save(path)
  return img


def make_folder(root, split="train", per_class=6, sizes=((5, 7),), ext=".png", modes=MODES):
  """root/split/<class>/*.png in mixed modes; {path: (image as written, label)}."""
  written, seed = {}, 0
  for name, label in CLASSES.items():
    for i in range(per_class):
      seed += 1
      path = os.path.join(str(root), split, name, f"{i:02d}{ext}")
      written[path] = (write(path, modes[i % len(modes)], sizes[i % len(sizes)], seed), label)
  return written


def folder_ds(root, **kw):
  ds = ConfigDict({"name": "folder", "path": str(root), "channels": 3, "skip_corrupt": False,
                   "cache": True, "cache_dir": None, "cache_max_mb": 4096})
  ds.update(kw)
  return ds


def folder_config(root, model="mlp", shape=(5, 7, 3), **overrides):
  return tiny_config(model, **{
      "dataset.name": "folder", "dataset.path": str(root), "dataset.test_split": "",
      "model_input_shape": shape, "batch_size": 8, "eval_batch_size": 8, "num_epochs": 1,
      **overrides})


@pytest.fixture
def no_compile():
  """Fail the test if setup gets as far as compiling (`.undo()` allows it again)."""
  def boom(*a, **kw):
    raise AssertionError("setup compiled the steps before rejecting the input")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(parallel, "compile_steps", boom)
    yield mp


# --- image folders ---------------------------------------------------------------------

@pytest.mark.parametrize("channels", [3, 1])
def test_folder_images_in_any_mode_decode_to_channels_with_sorted_labels(tmp_path, channels):
  written = make_folder(tmp_path)
  jpegs = {os.path.join(str(tmp_path), "train", "a_dog", f"j{i}.jpg"): (m, 0)
           for i, m in enumerate(("RGB", "L"))}
  for path, (mode, _) in jpegs.items():
    Image.new(mode, (7, 5), (90, 140, 200) if mode == "RGB" else 120).save(path)
  src = folders.folder_source(str(tmp_path), "train", channels=channels)
  assert src.class_names == ["a_dog", "b_cat"] and src.num_classes == 2
  assert len(src) == len(written) + len(jpegs) == 14
  assert src.image_shape == (5, 7, channels)
  mode = "RGB" if channels == 3 else "L"
  for i, path in enumerate(src.files):
    image, label = src[i]
    assert image.dtype == np.uint8 and image.shape == (5, 7, channels), path
    if path in written:
      img, want_label = written[path]
      assert label == want_label, path
      np.testing.assert_array_equal(image[..., 0] if channels == 1 else image,
                                    np.asarray(img.convert(mode)), err_msg=path)
    else:  # lossy: a flat colour comes back within a few levels
      flat = Image.new(jpegs[path][0], (7, 5), (90, 140, 200) if jpegs[path][0] == "RGB" else 120)
      assert label == 0
      assert np.abs(image.astype(int) - _hwc(flat.convert(mode))).max() <= 3, path
  # every class is there with its own count
  assert np.bincount(src.labels).tolist() == [8, 6]


def _hwc(img):
  a = np.asarray(img, np.int64)
  return a[..., None] if a.ndim == 2 else a


def test_percent_slices_partition_the_files(tmp_path):
  make_folder(tmp_path, per_class=9)
  whole = folders.folder_source(str(tmp_path), "train")
  a = folders.folder_source(str(tmp_path), "train[:50%]")
  b = folders.folder_source(str(tmp_path), "train[50%:]")
  assert len(a) == 9 and len(b) == 9
  assert not set(a.files) & set(b.files)
  assert sorted(a.files + b.files) == sorted(whole.files)
  # a slice keeps each file's label, and (files listed shuffled) holds both classes
  label = dict(zip(whole.files, whole.labels.tolist()))
  for part in (a, b):
    assert [label[f] for f in part.files] == part.labels.tolist()
    assert set(part.labels.tolist()) == {0, 1}
  with pytest.raises(ValueError, match="train\\[:90%\\]"):
    folders.folder_source(str(tmp_path), "train[:ninety]")


def _classes(root, split, names, per_class=2):
  for k, name in enumerate(names):
    for i in range(per_class):
      write(os.path.join(str(root), split, name, f"{i}.png"), "RGB", seed=10 * k + i)


def test_every_folder_split_is_labelled_by_the_training_class_names(tmp_path, no_compile):
  """Labels used to be each split's own sorted folders: test {bee, cat} scored bee as 0 = ant."""
  _classes(tmp_path, "train", ["ant", "bee", "cat"])
  _classes(tmp_path, "test", ["bee", "cat"])
  test = sources.load_source(folder_ds(tmp_path, train_split="train"), "test")
  assert test.class_names == ["ant", "bee", "cat"] and test.num_classes == 3
  names = {0: "ant", 1: "bee", 2: "cat"}
  by_file = folders.folder_source(str(tmp_path), "test", class_names=["ant", "bee", "cat"])
  assert {f.split(os.sep)[-2] for f in by_file.files} == {"bee", "cat"}
  assert [names[k] for k in by_file.labels.tolist()] == [f.split(os.sep)[-2] for f in by_file.files]
  assert sorted(test.labels.tolist()) == [1, 1, 2, 2]  # via the decoded cache too
  # A class the training split lacks is refused before anything compiles, even when
  # model_kwargs.num_classes is set (the class counts were not even compared).
  _classes(tmp_path, "test", ["dog"])
  cfg = folder_config(tmp_path, **{"dataset.train_split": "train", "dataset.val_split": "",
                                   "dataset.test_split": "test"})
  cfg.model_kwargs.num_classes = 4
  with pytest.raises(ValueError) as e:
    setup.setup(cfg)
  assert str(e.value).startswith("split 'test' has class folder(s) 'dog' that the training "
                                 "split 'train' lacks (its classes: ant, bee, cat)")
  assert "\n" not in str(e.value)


def test_folder_layout_errors_name_the_path(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    folders.folder_source(str(missing), "train")
  (tmp_path / "val").mkdir()
  (tmp_path / "extra").mkdir()
  with pytest.raises(FileNotFoundError) as e:
    folders.folder_source(str(tmp_path), "train[:90%]")
  assert str(tmp_path / "train") in str(e.value) and "['extra', 'val']" in str(e.value)
  (tmp_path / "train").mkdir()
  with pytest.raises(ValueError, match=f"{tmp_path / 'train'} has no class sub-folders"):
    folders.folder_source(str(tmp_path), "train")
  write(str(tmp_path / "train" / "a" / "x.png"), "RGB")
  (tmp_path / "train" / "b").mkdir()
  (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match=f"class folder {tmp_path / 'train' / 'b'} holds no images"):
    folders.folder_source(str(tmp_path), "train")
  with pytest.raises(ValueError, match="dataset.path"):
    sources.load_source(folder_ds(tmp_path, path=None), "train")


def test_corrupt_file_is_named_or_skipped_and_counted(tmp_path, caplog):
  make_folder(tmp_path, per_class=3)
  bad = tmp_path / "train" / "b_cat" / "x.jpg"
  bad.write_bytes(b"definitely not a JPEG" * 10)
  src = folders.folder_source(str(tmp_path), "train")
  assert len(src) == 7 and src.image_shape == (5, 7, 3)  # the header scan passes over it
  with pytest.raises(CorruptImageError, match=str(bad)) as e:
    [src[i] for i in range(len(src))]
  assert "skip_corrupt" in str(e.value)
  # through load_source the cache decodes everything at once: the same error
  with pytest.raises(CorruptImageError, match=str(bad)):
    sources.load_source(folder_ds(tmp_path), "train")
  with caplog.at_level(logging.WARNING, logger="cnn_jax"):
    kept = folders.folder_source(str(tmp_path), "train", skip_corrupt=True)
  assert len(kept) == 6 and str(bad) not in kept.files
  assert [src.labels[src.files.index(f)] for f in kept.files] == kept.labels.tolist()
  warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert "skipped 1 unreadable" in warning and str(bad) in warning
  loaded = sources.load_source(folder_ds(tmp_path, skip_corrupt=True), "train")
  assert isinstance(loaded, Split) and loaded.images.shape == (6, 5, 7, 3)


def test_skip_corrupt_scans_only_when_the_cache_misses(tmp_path, monkeypatch):
  """Every start used to decode every file to find the corrupt ones, even when the decoded
  cache already held the split (minutes for a large folder)."""
  make_folder(tmp_path, per_class=3)
  (tmp_path / "train" / "b_cat" / "x.jpg").write_bytes(b"not a JPEG" * 10)
  scans = []
  real = folders.without_corrupt
  monkeypatch.setattr(folders, "without_corrupt", lambda s: scans.append(1) or real(s))
  first = sources.load_source(folder_ds(tmp_path, skip_corrupt=True), "train")
  second = sources.load_source(folder_ds(tmp_path, skip_corrupt=True), "train")
  assert len(scans) == 1 and len(first) == len(second) == 6
  np.testing.assert_array_equal(first.images, second.images)
  # Without the cache, the scan runs every time (nothing else can vouch for the files).
  sources.load_source(folder_ds(tmp_path, skip_corrupt=True, cache=False), "train")
  assert len(scans) == 2


def test_skip_corrupt_skips_a_truncated_jpeg(tmp_path, caplog):
  # A cut-off download: the header is fine, the scan data ends early. PIL's verify()
  # checks nothing for JPEG, so only decoding finds it.
  make_folder(tmp_path, per_class=2)
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(
      buf, "JPEG", quality=95)
  cut = tmp_path / "train" / "a_dog" / "cut.jpg"
  cut.write_bytes(buf.getvalue()[:int(len(buf.getvalue()) * 0.9)])
  with pytest.raises(CorruptImageError, match=str(cut)):
    images.decode_image(str(cut), 3)
  with caplog.at_level(logging.WARNING, logger="cnn_jax"):
    kept = folders.folder_source(str(tmp_path), "train", skip_corrupt=True)
  assert str(cut) not in kept.files and len(kept) == 4
  assert "skipped 1 unreadable" in caplog.text
  assert all(kept[i][0].shape == (5, 7, 3) for i in range(len(kept)))  # all decode


def test_mixed_sizes_need_a_resize_op_then_train(tmp_path, no_compile):
  make_folder(tmp_path, per_class=12, sizes=((5, 7), (9, 6), (8, 8)))
  assert sources.load_source(folder_ds(tmp_path), "train").image_shape is None  # not cached
  with pytest.raises(ValueError, match="resize / crop") as e:
    setup.setup(folder_config(tmp_path, shape=(8, 8, 3)))
  # The message names the key of the split at fault and its example sets that key (it
  # named pp_train with an example setting pp_eval).
  assert "folder/train[:90%] images differ in size and dataset.pp_train='' " in str(e.value)
  assert "--config.dataset.pp_train='resize_small(146)|central_crop(128)'" in str(e.value)
  assert "pp_eval" not in str(e.value)
  with pytest.raises(ValueError, match="resize / crop") as e:
    setup.setup(folder_config(tmp_path, shape=(8, 8, 3), **{"dataset.pp_train": "resize(8)"}))
  assert "folder/train[90%:] images differ in size and dataset.pp_eval='' " in str(e.value)
  assert "--config.dataset.pp_eval='resize_small(146)|central_crop(128)'" in str(e.value)
  no_compile.undo()  # compiling allowed from here on
  cfg = folder_config(tmp_path, shape=(8, 8, 3), **{"dataset.pp_train": "resize(8)",
                                                    "dataset.pp_eval": "resize(8)"})
  r = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert r["final_step"] == (24 * 9 // 10) // 8 == 2  # train[:90%] = 21 examples
  assert r["validation"]["num_examples"] == 3
  assert np.isfinite(r["validation"]["loss"])


def test_wrong_class_count_and_unknown_pp_op_fail_before_compiling(tmp_path, no_compile):
  make_folder(tmp_path, per_class=5)
  cfg = folder_config(tmp_path)
  cfg.model_kwargs.num_classes = 1
  with pytest.raises(ValueError, match="has 2 classes but the model.s head has 1 outputs"):
    setup.setup(cfg)
  with pytest.raises(ValueError, match="Did you mean 'random_crop'"):
    setup.setup(folder_config(tmp_path, **{"dataset.pp_train": "random_crp(5)"}))
  with pytest.raises(ValueError, match="dataset.pp_eval.*Did you mean 'central_crop'"):
    setup.setup(folder_config(tmp_path, **{"dataset.pp_eval": "centre_crop(5)"}))


# --- the decoded cache -----------------------------------------------------------------

REAL_DECODE = images.decode_image


def count_decodes(monkeypatch):
  calls = []
  real = REAL_DECODE

  def counted(path, channels):
    calls.append(path)
    return real(path, channels)
  monkeypatch.setattr(images, "decode_image", counted)
  return calls


def test_cache_fills_once_and_is_invalidated_by_changed_files(tmp_path, monkeypatch):
  make_folder(tmp_path, per_class=4)
  ds = folder_ds(tmp_path)
  files = folders.folder_source(str(tmp_path), "train").files
  decoded = np.stack([images.decode_image(f, 3) for f in files])
  calls = count_decodes(monkeypatch)
  first = sources.load_source(ds, "train")
  assert isinstance(first, Split) and first.mapped_from
  assert first.mapped_from.startswith(os.environ["CNN_JAX_CACHE_DIR"])
  assert len(calls) == 8
  np.testing.assert_array_equal(first.images, decoded)
  assert first.class_names == ["a_dog", "b_cat"] and first.num_classes == 2

  def fail(path, channels):
    raise AssertionError(f"decoded {path} although the cache holds it")
  monkeypatch.setattr(images, "decode_image", fail)
  second = sources.load_source(ds, "train")
  np.testing.assert_array_equal(second.images, decoded)
  np.testing.assert_array_equal(second.labels, first.labels)

  # a touched file (newer mtime) or a replaced one (other size) invalidates the entry
  calls = count_decodes(monkeypatch)
  st = os.stat(files[5])
  os.utime(files[5], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  sources.load_source(ds, "train")
  assert len(calls) == 8
  calls.clear()
  new = write(files[2], "RGB", seed=99)
  third = sources.load_source(ds, "train")
  assert len(calls) == 8
  np.testing.assert_array_equal(third.images[2], np.asarray(new))
  calls.clear()
  sources.load_source(ds, "train")
  assert not calls  # and the new entry is used again
  # another split, channel count or slice is another entry
  grey = sources.load_source(folder_ds(tmp_path, channels=1), "train")
  assert grey.images.shape == (8, 5, 7, 1) and len(calls) == 8

  off = sources.load_source(folder_ds(tmp_path, cache=False), "train")
  assert isinstance(off, FolderSource) and off.files == files


def test_cache_follows_files_moved_between_classes(tmp_path):
  # Relabelling by moving files, one each way, keeps the file count, the bytes (RGB BMPs
  # all have one size), the label sum, the newest mtime (a move keeps it) and the files
  # listed first: the cache must still see it and not serve the old labels.
  make_folder(tmp_path, per_class=10, ext=".bmp", modes=("RGB",))
  ds = folder_ds(tmp_path)
  before = sources.load_source(ds, "train")
  train = tmp_path / "train"
  os.rename(train / "a_dog" / "00.bmp", train / "b_cat" / "00a.bmp")
  os.rename(train / "b_cat" / "00.bmp", train / "a_dog" / "00a.bmp")
  fresh = folders.folder_source(str(tmp_path), "train")
  assert not {str(train / c / "00a.bmp") for c in CLASSES} & set(fresh.files[:3])
  images = np.stack([fresh[i][0] for i in range(len(fresh))])
  assert not np.array_equal(before.images, images)
  cached = sources.load_source(ds, "train")
  np.testing.assert_array_equal(cached.labels, fresh.labels)
  np.testing.assert_array_equal(cached.images, images)


def test_cache_is_skipped_above_cache_max_mb_and_for_an_unwritable_dir(tmp_path, monkeypatch):
  make_folder(tmp_path, per_class=2)
  big = sources.load_source(folder_ds(tmp_path, cache_max_mb=0), "train")
  assert isinstance(big, FolderSource)
  assert not os.listdir(os.environ["CNN_JAX_CACHE_DIR"])
  # a cache that cannot be written (disk full): the decoded arrays in memory, nothing left
  def disk_full(*args):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "rename", disk_full)
  mem = sources.load_source(folder_ds(tmp_path), "train")
  assert isinstance(mem, Split) and mem.mapped_from is None and len(mem) == 4
  assert not os.listdir(os.environ["CNN_JAX_CACHE_DIR"])  # the temporary folder removed too


# --- grain workers ---------------------------------------------------------------------

def as_list(batches):
  """Plain copies (grain hands worker batches over in shared memory)."""
  return [{k: np.array(v) for k, v in b.items()} for b in batches]


def test_grain_workers_build_the_same_batches(tmp_path):
  make_folder(tmp_path, per_class=10)
  cached = sources.load_source(folder_ds(tmp_path), "train")   # memory-mapped Split
  assert cached.mapped_from
  pp = "random_crop(6, padding=1)|flip_lr"
  run = lambda src, **kw: as_list(input_pipeline.train_batches(
      src, 4, seed=3, steps_per_epoch=5, num_steps=10, pp=pp, **kw))
  local = run(cached)
  assert len(local) == 10 and all(b["image"].shape == (4, 6, 6, 3) for b in local)
  in_workers = run(cached, workers=1)
  resumed = run(cached, workers=1, start_step=7)
  for a, b in zip(local, in_workers):
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
  assert len(resumed) == 3
  for a, b in zip(local[7:], resumed):
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
  # the random ops do something, differently per epoch
  assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(local[:5], local[5:]))
  # eval: a decoding source in a worker, padded last batch
  folder = sources.load_source(folder_ds(tmp_path, cache=False), "train")
  ev = lambda **kw: as_list(input_pipeline.eval_batches(folder, 6, pp="central_crop(4)", **kw))
  e0, e1 = ev(), ev(workers=1)
  assert len(e0) == len(e1) == 4 and e1[-1]["mask"].tolist() == [1, 1, 0, 0, 0, 0]
  for a, b in zip(e0, e1):
    for k in ("image", "label", "mask"):
      assert np.array_equal(a[k], b[k])
  assert np.array_equal(np.concatenate([b["label"] for b in e1])[:20], folder.labels)


# --- tfds mock data --------------------------------------------------------------------

TFDS_CASES = [  # name, eval split, classes, stored image shape (None: varies), cached
    ("cifar10", "test", 10, (32, 32, 3), True),
    ("cifar100", "test", 100, (32, 32, 3), True),
    ("imagenette/160px-v2", "validation", 10, None, False),
    ("imagenet_resized/32x32", "validation", 1000, (32, 32, 3), True),
    ("imagenet2012_subset/1pct", "validation", 1000, None, False),
]


@pytest.mark.parametrize("name,split,classes,shape,cached", TFDS_CASES,
                         ids=[c[0] for c in TFDS_CASES])
def test_tfds_mock_sources(name, split, classes, shape, cached):
  ds = ConfigDict({"name": name, "cache": True, "cache_dir": None, "cache_max_mb": 4096})
  cache_root = os.environ["CNN_JAX_CACHE_DIR"]
  with tfds.testing.mock_data(num_examples=10):
    for part in ("train", split):
      src = sources.load_source(ds, part)
      assert len(src) == 10 and src.num_classes == classes and len(src.class_names) == classes
      assert src.image_shape == shape
      assert isinstance(src, Split) == cached and bool(os.listdir(cache_root)) == cached
      images = [src[i][0] for i in range(len(src))]
      assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in images)
      assert all(0 <= src[i][1] < classes for i in range(len(src)))
      if shape:
        assert {im.shape for im in images} == {shape}
        continue
      assert isinstance(src, tfds_data.TfdsSource)
      assert len({im.shape for im in images}) > 1  # the mock's sizes vary, as the real ones
      cfg = tiny_config("mlp", **{"dataset.name": name})
      with pytest.raises(ValueError, match="resize / crop"):
        setup.batch_image_shape(cfg, src, "validation")
      cfg.dataset.pp_eval = "resize_small(40)|central_crop(32)"
      assert setup.batch_image_shape(cfg, src, "validation") == (32, 32, 3)
      batches = as_list(input_pipeline.eval_batches(src, 4, pp=cfg.dataset.pp_eval))
      assert [b["image"].shape for b in batches] == [(4, 32, 32, 3)] * 3
      assert sum(b["mask"].sum() for b in batches) == 10


def test_training_run_on_mock_cifar10(tmp_path):
  cfg = tiny_config("mlp", **{"dataset.name": "cifar10", "model_input_shape": (32, 32, 3),
                              "batch_size": 16, "eval_batch_size": 40, "dataset.test_split": ""})
  cfg.model_kwargs.hidden = (16,)
  with tfds.testing.mock_data(num_examples=40):
    r = trainer.train_and_evaluate(cfg, str(tmp_path))
  assert r["final_step"] == 40 // 16
  assert r["validation"]["num_examples"] == 40 and np.isfinite(r["validation"]["loss"])


# --- multi-host shares -----------------------------------------------------------------

def test_max_examples_is_a_global_count_for_tfds_as_for_folders():
  """max_eval_examples=10 on 2 hosts read 10 tfds examples per host (20 in all), but 10 in
  all from a folder; now both read 10 in all, split 5 / 5."""
  from cnn_jax.data import tfds_data
  with tfds.testing.mock_data(num_examples=40):
    sizes = [len(tfds_data.load_split("cifar10", "train", process_index=i, process_count=2,
                                      max_examples=11, cache=False)) for i in range(2)]
    assert sizes == [5, 6]
    assert len(tfds_data.load_split("cifar10", "train", max_examples=11, cache=False)) == 11


@pytest.mark.parametrize("n", [11, 12])
def test_shards_partition_a_folder_split(tmp_path, n):
  written = make_folder(tmp_path, per_class=n // 2 + 1)
  src = folders.folder_source(str(tmp_path), f"train[:{n}]")
  assert len(src) == n
  parts = [shard(src, i, 3) for i in range(3)]
  sizes = [len(p) for p in parts]
  assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
  assert [f for p in parts for f in p.files] == src.files  # contiguous, in order, disjoint
  assert np.array_equal(np.concatenate([p.labels for p in parts]), src.labels)
  assert all(p.class_names == ["a_dog", "b_cat"] for p in parts)
  assert shard(src, 0, 1) is src
  # through load_source: each process's share is cached on its own
  ds = folder_ds(tmp_path)
  loaded = [sources.load_source(ds, f"train[:{n}]", process_index=i, process_count=3)
            for i in range(3)]
  assert [len(p) for p in loaded] == sizes
  np.testing.assert_array_equal(
      np.concatenate([p.images for p in loaded]),
      np.stack([np.asarray(written[f][0].convert("RGB")) for f in src.files]))


ORPHAN_CHILD = r"""
import glob, os, sys, time
import numpy as np
from cnn_jax.data import input_pipeline
from cnn_jax.data.split import Split
data = Split(np.zeros((64, 4, 4, 1), np.uint8), np.zeros(64, np.int32), 2)
it = input_pipeline.train_batches(data, 8, 0, steps_per_epoch=8, num_steps=10**6,
                                  pp="flip_lr", workers=1)
next(it)
kids = set()
for f in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
  kids |= {int(p) for p in open(f).read().split()}
print(" ".join(map(str, sorted(kids))), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_grain_workers_die_with_a_sigkilled_trainer():
  """A SIGKILLed run cannot clean up: its grain workers must not live on as orphans."""
  import signal
  import subprocess
  p = subprocess.Popen([sys.executable, "-c", ORPHAN_CHILD], stdout=subprocess.PIPE, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  kids = [int(k) for k in p.stdout.readline().split()]
  alive = lambda pid: os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2]
  workers = [k for k in kids if "spawn_main" in open(f"/proc/{k}/cmdline").read()]
  assert workers, kids
  p.send_signal(signal.SIGKILL)
  p.wait()
  deadline = time.time() + 20
  while time.time() < deadline and any(alive(k) for k in workers):
    time.sleep(0.2)
  leftover = [k for k in workers if alive(k)]
  for k in leftover:
    os.kill(k, signal.SIGKILL)
  assert not leftover, "grain worker outlived its SIGKILLed parent"


class _DiesInAWorker:
  """Exits (as an OOM-killed process would) when read anywhere but in the test process."""
  image_shape, num_classes, labels = (4, 4, 1), 2, np.zeros(32, np.int32)

  def __init__(self):
    self.parent = os.getpid()

  def __len__(self):
    return 32

  def __getitem__(self, i):
    if os.getpid() != self.parent:
      os._exit(3)
    return np.zeros((4, 4, 1), np.uint8), 0


def test_a_dead_worker_is_explained():
  """grain says only "Worker process was terminated unexpectedly"; the loop now says what
  to do about it."""
  batches = input_pipeline.train_batches(_DiesInAWorker(), 8, 0, steps_per_epoch=4,
                                         num_steps=4, workers=1)
  with pytest.raises(RuntimeError, match="grain worker process died.*dataset.workers=1.*"
                                         "exit code 3.*workers=0"):
    next(batches)
