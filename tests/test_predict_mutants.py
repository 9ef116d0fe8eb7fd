"""predict.py lines that a one-token bug could change while tests/test_predict.py passes.

Written against the surviving mutants of `benchmarks/mutation.py` (docs/testing.md). No run
is trained here: the model is a fixed linear map, the images are a few pixels, and the
expected probabilities, notes and shapes are worked out with numpy and PIL.
"""
from __future__ import annotations

import types

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from cnn_jax import predict


class _Linear:
  """model.apply(variables, x, train): logits = flattened x @ w (a stand-in model)."""

  def apply(self, variables, x, train=False):
    assert train is False
    return x.reshape((x.shape[0], -1)) @ variables["w"]


def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _run_config(**kw):
  c = ConfigDict({"dataset": {"name": "folder", "pp_eval": "", "image_size": None},
                  "eval_flip": False, "matmul_precision": None, "model": "mlp"})
  for k, v in kw.items():
    c[k] = v
  return c


def test_probs_top_k_and_flip_by_hand(tmp_path):
  """Probabilities are softmax of the logits (with eval_flip: of the mean of the image's
  and its mirror's logits); top_k orders them, best first, k of them."""
  w = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
  pixels = np.array([[10, 200, 30], [90, 0, 255]], np.uint8)  # 2 x 3 grey
  Image.fromarray(pixels).save(tmp_path / "x.png")
  x = pixels.astype(np.float32) / 255.0
  pre = lambda images, key, train: images.astype(np.float32) / 255.0  # noqa: E731
  for flip in (False, True):
    p = predict.Predictor(_Linear(), {"w": w}, pre, (2, 3, 1), flip=flip)
    logits = x.reshape(1, 6) @ w
    if flip:
      logits = 0.5 * (logits + x[:, ::-1].reshape(1, 6) @ w)
    want = _softmax(logits)[0]
    np.testing.assert_allclose(p.probs(pixels[None, :, :, None])[0], want, rtol=1e-5)
    top, seconds = p.top_k(str(tmp_path / "x.png"), k=3)
    order = np.argsort(-want)[:3]
    assert [c for c, _ in top] == order.tolist() and 0 <= seconds < 60
    np.testing.assert_allclose([q for _, q in top], want[order], rtol=1e-5)
  assert len(p.top_k(str(tmp_path / "x.png"), k=1)[0]) == 1
  assert len(p.top_k(str(tmp_path / "x.png"))[0]) == 4  # default k = 5, of 4 classes
  w6 = np.concatenate([w, w[:, :2]], 1)
  plain = predict.Predictor(_Linear(), {"w": w6}, pre, (2, 3, 1))  # default: no flip
  assert len(plain.top_k(str(tmp_path / "x.png"))[0]) == 5
  np.testing.assert_allclose(plain.probs(pixels[None, :, :, None])[0],
                             _softmax(x.reshape(1, 6) @ w6)[0], rtol=1e-5)
  for k in (0, -1, 2.0, "3"):
    with pytest.raises(ValueError, match="top k must be a positive integer"):
      p.top_k(str(tmp_path / "x.png"), k=k)


def test_load_image_converts_resizes_and_says_so(tmp_path):
  rgb = np.random.default_rng(1).integers(0, 256, (5, 4, 3), dtype=np.uint8)  # H 5, W 4
  Image.fromarray(rgb).save(tmp_path / "rgb.png")
  grey = Predictor_for((5, 4, 1))
  notes = []
  got = grey.load_image(str(tmp_path / "rgb.png"), notes)
  np.testing.assert_array_equal(got[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
  assert got.shape == (5, 4, 1) and notes == ["converted from RGB to grey"]
  notes = []
  got = Predictor_for((3, 2, 3)).load_image(str(tmp_path / "rgb.png"), notes)
  want = np.asarray(Image.fromarray(rgb).resize((2, 3), Image.BILINEAR))
  np.testing.assert_array_equal(got, want)
  assert notes == ["4x5 brought to 2x3 (bilinear resize)"]
  Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
  notes = []
  got = Predictor_for((5, 4, 3)).load_image(str(tmp_path / "grey.png"), notes)
  assert got.shape == (5, 4, 3) and notes == ["converted from L to RGB"]
  notes = []
  got = grey.load_image(str(tmp_path / "grey.png"), notes)  # nothing to change, nothing said
  np.testing.assert_array_equal(got[..., 0], rgb[..., 0])
  assert notes == [] and grey.load_image(str(tmp_path / "grey.png")).shape == (5, 4, 1)
  # The run's host eval pp (here a crop of the central 3x2) runs before any resize.
  cropped = Predictor_for((3, 2, 1), host_pp="central_crop((3, 2))")
  notes = []
  got = cropped.load_image(str(tmp_path / "grey.png"), notes)
  np.testing.assert_array_equal(got[..., 0], rgb[1:4, 1:3, 0])
  assert notes == ["4x5 brought to 2x3 (the run's eval pp 'central_crop((3, 2))')"]
  got = Predictor_for((3, 2, 3), host_pp="central_crop((3, 2))").load_image(
      str(tmp_path / "rgb.png"))
  np.testing.assert_array_equal(got, rgb[1:4, 1:3])
  # An (H, W, 1) array is a grey image, as a file would be.
  got = grey.prepare_array(rgb[..., :1], notes := [])
  np.testing.assert_array_equal(got, rgb[..., :1])
  assert notes == []


def test_prepare_array_keeps_channels_and_applies_host_pp_as_training_does():
  """An RGB array keeps its three channels (only an (H, W, 1) one is read as grey); the
  run's host eval pp sees an HWC image of either kind, exactly as the data pipeline gives
  it (ops.parse on the HWC array is the reference); the compiled function stays out of
  the predictor's repr (it is logged)."""
  from cnn_jax.data import ops
  rgb = np.random.default_rng(2).integers(0, 256, (8, 6, 3), dtype=np.uint8)
  np.testing.assert_array_equal(Predictor_for((8, 6, 3)).prepare_array(rgb), rgb)
  grey = np.asarray(Image.fromarray(rgb).convert("L"))[..., None]
  for image, c in ((rgb, 3), (grey, 1)):
    want = ops.parse("pad(1)|resize_small(4)")(image, np.random.default_rng(0))
    assert want.shape == (5, 4, c)
    p = Predictor_for((5, 4, c), host_pp="pad(1)|resize_small(4)")
    np.testing.assert_array_equal(p.prepare_array(image), want, err_msg=f"{c} channels")
    np.testing.assert_array_equal(p.prepare_array(image[..., 0] if c == 1 else image), want)
  assert "probs_fn" not in repr(Predictor_for((5, 4, 1)))


def Predictor_for(shape, **kw):  # noqa: N802 - reads as the class it builds
  return predict.Predictor(_Linear(), {"w": np.zeros((1, 1), np.float32)},
                           lambda x, key, train: x, shape, **kw)


def test_image_paths(tmp_path):
  for name in ("b.PNG", "a.jpg", "notes.txt", "c.webp"):
    (tmp_path / name).write_bytes(b"")
  (tmp_path / "empty").mkdir()
  single = tmp_path / "notes.txt"
  assert predict.image_paths([str(tmp_path), str(single)]) == [
      str(tmp_path / "a.jpg"), str(tmp_path / "b.PNG"), str(tmp_path / "c.webp"), str(single)]
  with pytest.raises(FileNotFoundError, match="no such image or folder: .*nope"):
    predict.image_paths([str(tmp_path / "nope")])
  with pytest.raises(ValueError, match="no images found in"):
    predict.image_paths([str(tmp_path / "empty")])


def test_stored_shape_class_names_and_from_run(monkeypatch):
  """The image shape: meta's data_shape, else the model input (no image_size), else the
  tfds builder's fixed image shape; class names: meta's, else tfds'; from_run carries the
  run's eval pp, eval_flip and matmul precision."""
  from cnn_jax.data import tfds_data
  cfg = _run_config(model_input_shape=(9, 8, 3))
  assert predict.stored_image_shape({"data_shape": [4, 5, 1]}, cfg) == (4, 5, 1)
  assert predict.stored_image_shape({"input_shape": [6, 7, 1]}, cfg) == (6, 7, 1)
  assert predict.stored_image_shape({}, cfg) == (9, 8, 3)
  shapes = {}

  def builder(name, data_dir):
    if name == "broken":
      raise OSError("no such data set")
    return types.SimpleNamespace(info=types.SimpleNamespace(features={
        "image": types.SimpleNamespace(shape=shapes[name]),
        "label": types.SimpleNamespace(names=["cat", "dog"])}))
  monkeypatch.setattr(tfds_data, "_builder", builder)
  cfg = _run_config(dataset={"name": "fixed", "image_size": (32, 32)})
  shapes["fixed"] = (30, 31, 3)
  assert predict.stored_image_shape({}, cfg) == (30, 31, 3)
  shapes["fixed"] = (None, None, 3)
  with pytest.raises(ValueError, match="no fixed shape"):
    predict.stored_image_shape({}, cfg)
  shapes["fixed"] = (30, 3)
  with pytest.raises(ValueError, match="no fixed shape"):
    predict.stored_image_shape({}, cfg)
  cfg.dataset.name = "broken"
  with pytest.raises(ValueError, match="image_size=\\(32, 32\\)"):
    predict.stored_image_shape({}, cfg)
  assert predict.class_names(cfg, {"class_names": ["a"]}) == ["a"]
  assert predict.class_names(cfg, {}) is None                      # tfds fails: no names
  assert predict.class_names(_run_config(dataset={"name": "fixed"}), {}) == ["cat", "dog"]
  assert predict.class_names(_run_config(), {}) is None            # a folder data set
  run = _run_config(dataset={"name": "folder", "pp_eval": "central_crop(2)"}, eval_flip=True,
                    matmul_precision="highest")
  p = predict.from_run(_Linear(), {"w": np.zeros((4, 2))}, run,
                       {"data_shape": [2, 2, 1], "class_names": ["x", "y"]})
  assert (p.host_pp, p.flip, p.matmul_precision, p.image_shape, p.class_names) == (
      "central_crop(2)", True, "highest", (2, 2, 1), ["x", "y"])
  p = predict.from_run(_Linear(), {"w": np.zeros((4, 2))}, _run_config(),
                       {"data_shape": [2, 2, 1]})
  assert (p.host_pp, p.flip, p.matmul_precision) == ("", False, "default")
  with pytest.raises(ValueError, match="--model needs --weights FILE"):
    predict.from_weights("resnet18", "")


def test_read_labels(tmp_path):
  (tmp_path / "labels.txt").write_text("cat\n\n  dog  \n\n")
  assert predict.read_labels(str(tmp_path / "labels.txt")) == ["cat", "dog"]
