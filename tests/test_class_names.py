"""Image folders named by id (n03000684) are shown by name: a names file or dataset.class_names."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cnn_jax import config as config_lib
from cnn_jax.data import sources


def _folder(root, classes=("n02", "n01"), per_class=2):
  for split in ("train", "val"):
    for c in classes:
      os.makedirs(root / split / c)
      for i in range(per_class):
        Image.fromarray(np.full((6, 5, 3), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")


def _ds(root, **kw):
  c = config_lib.base_config()
  c.dataset.name, c.dataset.path, c.dataset.cache_dir = "folder", str(root), str(root / ".cache")
  for k, v in kw.items():
    c.dataset[k] = v
  return c.dataset


@pytest.mark.parametrize("names_file", ["classes.txt", "labels.txt"])
def test_a_names_file_names_the_folders(tmp_path, names_file):
  _folder(tmp_path)
  (tmp_path / names_file).write_text("n01 tench\nn02 English springer\nn99 unused\n")
  for split in ("train", "val"):  # also the cached split on the second read
    for _ in range(2):
      source = sources.load_source(_ds(tmp_path), split)
      assert source.class_names == ["tench", "English springer"]
      assert sorted(set(source.labels.tolist())) == [0, 1]


def test_configured_names_win_and_their_count_is_checked(tmp_path):
  _folder(tmp_path)
  (tmp_path / "classes.txt").write_text("n01 tench\nn02 springer\n")
  source = sources.load_source(_ds(tmp_path, class_names=("fish", "dog")), "train")
  assert source.class_names == ["fish", "dog"]
  with pytest.raises(ValueError, match="dataset.class_names has 3 names but .* has 2 classes "
                                       r"\(n01, n02\)"):
    sources.load_source(_ds(tmp_path, class_names=("a", "b", "c")), "train")


def test_without_names_the_folder_names_are_shown(tmp_path):
  _folder(tmp_path)
  assert sources.load_source(_ds(tmp_path, cache=False), "val").class_names == ["n01", "n02"]


def test_configured_pairs_name_the_folders_they_list(tmp_path):
  _folder(tmp_path, classes=("n01", "n02", "other"))
  source = sources.load_source(_ds(tmp_path, class_names=(("n02", "springer"), ("n01", "tench"),
                                                         ("n99", "unused"))), "train")
  assert source.class_names == ["tench", "springer", "other"]
