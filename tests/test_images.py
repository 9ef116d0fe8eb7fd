"""The one image decoder (`data/images.py`): a decompression bomb is one line for every reader.

PIL's limit is lowered for the test (a 20x20 image plays a 20000x20000 one), so nothing
large is written or decoded.
"""
import logging
import types

import numpy as np
import pytest
from PIL import Image

from cnn_jax import cli
from cnn_jax.data import folders, images, sources
from cnn_jax.predict import Predictor
from test_pipeline import folder_ds, make_folder


@pytest.fixture
def small_limit(monkeypatch):
  """PIL refuses images over 2 x 100 pixels, as it refuses a 20000x20000 PNG by default."""
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
  monkeypatch.delenv(images.PIXEL_LIMIT_ENV, raising=False)


def bomb(path, side=20):
  Image.fromarray(np.full((side, side, 3), 7, np.uint8)).save(path)
  return str(path)


def one_line(text):
  lines = [l for l in text.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in text, text
  return lines[0]


def test_a_bomb_is_refused_in_one_line_by_predict_and_kernels(tmp_path, small_limit, capsys):
  path = bomb(tmp_path / "huge.png")
  rc = cli.main(["kernels", path, "--kernel", "sharpen", "--out", str(tmp_path / "out")])
  line = one_line(capsys.readouterr().err)
  assert rc == 1 and line.startswith(f"cnn-jax kernels: error: cannot read image {path}: 400 "
                                     "pixels, more than the limit of 200")
  assert f"{images.PIXEL_LIMIT_ENV}=400" in line
  predictor = Predictor(model=types.SimpleNamespace(apply=None), variables=None,
                        preprocess=None, image_shape=(20, 20, 3))
  with pytest.raises(images.ImageTooLargeError, match=f"{path}: 400 pixels.*"
                     f"{images.PIXEL_LIMIT_ENV}=400"):
    predictor.load_image(path)


def test_a_bomb_in_a_data_set_is_named_or_skipped_as_unreadable(tmp_path, small_limit, caplog):
  make_folder(tmp_path, per_class=2, modes=("RGB",))
  path = bomb(tmp_path / "train" / "a_dog" / "huge.png")
  with pytest.raises(images.ImageTooLargeError, match=f"cannot read image {path}: 400 pixels"):
    sources.load_source(folder_ds(tmp_path), "train")
  with caplog.at_level(logging.WARNING, logger="cnn_jax"):
    kept = sources.load_source(folder_ds(tmp_path, skip_corrupt=True), "train")
  assert len(kept) == 4 and kept.images.shape == (4, 5, 7, 3)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1 and "skipped 1 unreadable" in warnings[0] and path in warnings[0]


def test_the_limit_is_raised_from_the_environment(tmp_path, small_limit, monkeypatch):
  monkeypatch.setenv(images.PIXEL_LIMIT_ENV, "1000")
  np.testing.assert_array_equal(images.decode_image(bomb(tmp_path / "a.png"), 3),
                                np.full((20, 20, 3), 7, np.uint8))
  assert folders.FolderSource([str(tmp_path / "a.png")], [0], ["a"])[0][0].shape == (20, 20, 3)
  big = bomb(tmp_path / "b.png", side=40)
  with pytest.raises(images.ImageTooLargeError, match="1,600 pixels, more than the limit of "
                     f"1,000.*{images.PIXEL_LIMIT_ENV}=1600"):
    images.decode_image(big, 3)
  assert not images.decodes(big) and images.decodes(str(tmp_path / "a.png"))
  monkeypatch.setenv(images.PIXEL_LIMIT_ENV, "lots")
  with pytest.raises(ValueError, match="CNN_JAX_MAX_IMAGE_PIXELS='lots' must be a whole number"):
    images.decode_image(big, 3)
