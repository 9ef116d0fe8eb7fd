"""Every experiment config: loads, validates, refuses unknown variants; image-folder ones train."""
import os
import runpy

import numpy as np
import pytest
from PIL import Image

from cnn_jax import config as config_lib
from cnn_jax import models
from cnn_jax.data import augment, input_pipeline
from cnn_jax.training import trainer

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXPERIMENTS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments")) if f.endswith(".py"))


def get_config(name, arg=None):
  return runpy.run_path(os.path.join(ROOT, "experiments", f"{name}.py"))["get_config"](arg)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_and_smoke_validate(name):
  for arg in (None, "smoke"):
    c = config_lib.validate(get_config(name, arg))
    assert c.model in models.names()
    augment.parse(c.augment)
    boxes = c.task == "detection"  # box-aware host ops (data/box_ops.py)
    input_pipeline.parse_pp(c.dataset.pp_train, boxes), input_pipeline.parse_pp(c.dataset.pp_eval, boxes)
  smoke = get_config(name, "smoke")
  assert smoke.num_epochs == 1 and smoke.dataset.max_train_examples <= 512


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_unknown_variant_is_refused(name):
  with pytest.raises(ValueError, match="unknown variant 'smok'.*smoke"):
    get_config(name, "smok")


def _image_folder(root, split, n_per_class, size, classes=("a", "b", "c")):
  rng = np.random.RandomState(0)
  for k, c in enumerate(classes):
    os.makedirs(os.path.join(root, split, c), exist_ok=True)
    for i in range(n_per_class):
      img = rng.randint(0, 80, size + (3,)).astype(np.uint8)
      img[:, :, k] = 220  # the class is the dominant colour
      Image.fromarray(img).save(os.path.join(root, split, c, f"{i}.png"))


@pytest.mark.parametrize("name,size,test_split", [
    ("cifar10_fast", (32, 32), "test"),
    # 16 s (a ResNet-18 at 128 px): the slow run; the folder loader is the CIFAR case's.
    pytest.param("imagenette_resnet18", (150, 170), "val", marks=pytest.mark.slow)])
def test_image_folder_experiment_smoke_trains(tmp_path, name, size, test_split):
  """The CIFAR / Imagenette smoke configs end to end on a generated folder of their layout."""
  _image_folder(tmp_path, "train", 12, size)
  _image_folder(tmp_path, test_split, 4, size)
  c = get_config(name, "smoke")
  c.dataset.path = str(tmp_path)
  c.model_kwargs.num_classes = 3
  c.batch_size, c.eval_batch_size, c.progress_bar = 8, 8, False
  if name == "imagenette_resnet18":
    c.model = "resnet20"  # the same pipeline (random resized crop 128 on the host), a small net
  r = trainer.train_and_evaluate(c, str(tmp_path / "w"))
  assert r["final_step"] == int(36 * 0.9) // 8
  assert r["test"]["num_examples"] == 12 and r["validation"]["num_examples"] == 4
