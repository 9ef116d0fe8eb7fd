"""`cnn_jax.load`: the one public way to use a trained run from Python."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from PIL import Image

import cnn_jax
from cnn_jax import cli
from cnn_jax.training import trainer
from helpers import tiny_config

NAMES = {"n01": "tench", "n02": "English springer"}


def _folder(root):
  """Two classes told apart by brightness, 12x12 RGB, named by id with a classes.txt."""
  rng = np.random.default_rng(0)
  for split, n in (("train", 24), ("val", 8)):
    for k, wnid in enumerate(NAMES):
      os.makedirs(root / split / wnid)
      for i in range(n):
        pixels = rng.integers(0, 60, (12, 12, 3)) + 160 * k
        Image.fromarray(pixels.astype(np.uint8)).save(root / split / wnid / f"{i}.png")
  (root / "classes.txt").write_text("".join(f"{w} {n}\n" for w, n in NAMES.items()))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder")
  _folder(root)
  c = tiny_config("mlp", num_epochs=2, batch_size=16, eval_batch_size=16,
                  model_input_shape=(12, 12, 3))
  c.dataset.name, c.dataset.path = "folder", str(root)
  c.dataset.train_split, c.dataset.val_split, c.dataset.test_split = "train", "val", "val"
  c.dataset.max_train_examples = c.dataset.max_eval_examples = None
  c.dataset.cache_dir = str(root / ".cache")
  trainer.train_and_evaluate(c, str(root / "run"))
  return root


def test_load_is_public_and_unpacks_as_before(run_dir):
  assert "load" in dir(cnn_jax) and "load" in cnn_jax.__all__
  run = cnn_jax.load(str(run_dir / "run"), which="best")
  model, variables, config = run
  assert model is run.model and variables is run.variables and config.model == "mlp"
  assert run.class_names == ["tench", "English springer"]


def test_predict_and_top_k_of_files_and_arrays(run_dir):
  run = cnn_jax.load(str(run_dir / "run"))
  paths = [str(run_dir / "val" / w / "0.png") for w in NAMES]
  images = np.stack([np.asarray(Image.open(p)) for p in paths])
  probs = run.predict(paths)
  np.testing.assert_array_equal(run.predict(images), probs)  # arrays as files store them
  np.testing.assert_allclose(run.predict(images[0]), probs[:1], rtol=1e-5)  # batch of 1
  # The run's own eval preprocessing, then the model: what evaluation scored.
  want = jax.nn.softmax(run.model.apply(run.variables, run.preprocess(images), train=False))
  np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-7)
  top = run.top_k(paths, k=2)
  assert [t[0][0] for t in top] == ["tench", "English springer"], top  # it learned them
  for t, p in zip(top, probs):
    assert [prob for _, prob in t] == sorted(p.tolist(), reverse=True)
  with pytest.raises(ValueError, match=r"give uint8 images with values 0-255"):
    run.predict(images.astype(np.float32) / 255)


def test_cli_predict_prints_class_names(run_dir, capsys):
  path = str(run_dir / "val" / "n02" / "1.png")
  assert cli.main(["predict", "--workdir", str(run_dir / "run"), "--top", "1", path]) == 0
  assert capsys.readouterr().out.splitlines()[1].endswith("%: English springer")
