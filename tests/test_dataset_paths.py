"""Shipped experiments find their data from any working directory, and say how to point
them at one's own copy."""
from __future__ import annotations

import os
import runpy

import pytest

from cnn_jax import config as config_lib
from cnn_jax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("experiment, env, name", [
    ("cifar10_fast.py", "CNN_JAX_CIFAR10_DIR", "cifar10_jpeg"),
    ("cifar10_resnet20.py", "CNN_JAX_CIFAR10_DIR", "cifar10_jpeg"),
    ("imagenette_resnet18.py", "CNN_JAX_IMAGENETTE_DIR", "imagenette_224"),
    ("raccoon_yolo.py", "CNN_JAX_RACCOON_DIR", "raccoon"),
    ("kangaroo_yolo.py", "CNN_JAX_KANGAROO_DIR", "kangaroo")])
def test_experiment_data_path_does_not_depend_on_the_working_directory(
    experiment, env, name, monkeypatch, tmp_path):
  monkeypatch.delenv(env, raising=False)
  monkeypatch.chdir(tmp_path)  # not the repository root
  c = runpy.run_path(os.path.join(REPO, "experiments", experiment))["get_config"]()
  assert c.dataset.path == os.path.normpath(os.path.join(REPO, "..", "shared", "datasets", name))
  assert c.dataset.path_env == env
  monkeypatch.setenv(env, str(tmp_path / "mine"))
  c = runpy.run_path(os.path.join(REPO, "experiments", experiment))["get_config"]()
  assert c.dataset.path == str(tmp_path / "mine")


@pytest.mark.parametrize("name, layout", [("folder", "DIR/<split>/<class>/*.jpg"),
                                          ("voc", "DIR/images/*.jpg and Pascal VOC XML")])
def test_a_missing_data_folder_names_the_variable_to_set(name, layout, tmp_path):
  c = config_lib.base_config()
  c.dataset.name, c.dataset.path = name, str(tmp_path / "nowhere")
  c.dataset.path_env = "CNN_JAX_CIFAR10_DIR"
  with pytest.raises(FileNotFoundError) as e:
    sources.load_source(c.dataset, "train")
  assert str(e.value) == (f"dataset.path={str(tmp_path / 'nowhere')!r} does not exist: set "
                          "$CNN_JAX_CIFAR10_DIR=DIR or pass --config.dataset.path=DIR, holding "
                          f"{layout}" + (" in DIR/annotations" if name == "voc" else "")
                          + " (docs/data.md)")
