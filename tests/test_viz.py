"""cnn-jax viz and cnn-jax kernels end to end, on one tiny run trained here on an image folder."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnn_jax import cli, inference, layers, predict, viz
from cnn_jax.trained_run import TrainedRun
from cnn_jax.data import augment as augment_lib
from cnn_jax.training import trainer
from cnn_jax.viz import activations, augment, confusion, curves, filters, gradcam, runs
from helpers import tiny_config

CLASSES = ("a", "b", "c")


def write_folder(root, split, per_class, seed):
  """root/split/<class>/*.png: 28x28 grey noise with a bright bar whose row is the class."""
  rng = np.random.RandomState(seed)
  for label, name in enumerate(CLASSES):
    os.makedirs(root / split / name)
    for i in range(per_class):
      img = rng.randint(0, 60, (28, 28)).astype(np.uint8)
      img[4 + 8 * label:10 + 8 * label, 4:24] = 255
      Image.fromarray(img).save(root / split / name / f"{i:02d}.png")


def folder_config(root):
  return tiny_config("mnist_cnn", num_epochs=2, batch_size=16, eval_batch_size=16, **{
      "dataset.name": "folder", "dataset.path": str(root), "dataset.channels": 1,
      "dataset.train_split": "train", "dataset.val_split": "test", "dataset.test_split": ""})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(workdir, data root, config): mnist_cnn trained for 2 epochs on 48 folder images."""
  root = tmp_path_factory.mktemp("viz")
  write_folder(root / "data", "train", 16, 0)
  write_folder(root / "data", "test", 5, 1)
  config = folder_config(root / "data")
  config.dataset.cache_dir = str(root / "cache")
  trainer.train_and_evaluate(config, str(root / "w"))
  return str(root / "w"), root / "data", config


def png_size(path):
  with Image.open(path) as img:
    return img.size


def main(argv, capsys):
  rc = cli.main(argv)
  out = capsys.readouterr()
  return rc, out.out, out.err


# ------------------------------------------------------------------------- curves
def test_curves_overlay_runs_and_skip_missing_metrics(trained, tmp_path, capsys):
  workdir = trained[0]
  m = curves.read_metrics(workdir)
  assert {"train/loss", "train/accuracy", "validation/loss", "validation/accuracy"} <= set(m)
  assert len(m["validation/accuracy"][0]) == 2  # one point per epoch
  det = tmp_path / "det"
  det.mkdir()
  rows = [{"step": 1, "train/loss": 3.0}, {"step": 2, "validation/mAP50": 0.4}, "half a li"]
  (det / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n{\"st")
  out = str(tmp_path / "curves.png")
  rc, text, _ = main(["viz", "curves", "--workdir", workdir, str(det), "--out", out], capsys)
  assert rc == 0 and "loss, accuracy, top-5 accuracy, mAP@0.5 of 2 run(s)" in text
  assert png_size(out) == (4 * 480, 360)
  rc, _, err = main(["viz", "curves", "--workdir", workdir, "--out", out], capsys)
  assert rc == 1 and "exists; pass --overwrite" in err
  r = curves.plot_curves([workdir], out, overwrite=True)
  assert r["panels"] == ["loss", "accuracy", "top-5 accuracy"] and png_size(out) == (1440, 360)
  rc, _, err = main(["viz", "curves", "--workdir", str(tmp_path / "none"), "--out",
                     str(tmp_path / "c2.png")], capsys)
  assert rc == 1 and "no metrics.jsonl" in err


# ------------------------------------------------------------------------ filters
def test_filters_grid_shows_a_known_kernel(trained, tmp_path, capsys):
  run = inference.load(trained[0])
  params = jax.tree_util.tree_map(np.array, run.variables["params"])
  k = params["conv1"]["kernel"]                      # (5, 5, 1, 16)
  k[..., 0, 0] = np.arange(25).reshape(5, 5) - 7.0   # a ramp: min-max -> 0 .. 1
  k[..., 0, 1] = 3.0                                 # constant: mid-grey
  run.variables = {**run.variables, "params": params}
  r = filters.plot_filters(run, str(tmp_path / "f.png"))
  assert (r["layer"], r["layout"], r["rows"], r["cols"], r["scale"]) == ("conv1", "grey", 2, 8, 10)
  assert png_size(r["path"]) == r["size"] == (8 * 52 + 2, 2 * 52 + 2)
  grid = np.asarray(Image.open(r["path"]))
  g, s = filters.GAP, r["scale"]
  tile0 = grid[g:g + 5 * s, g:g + 5 * s]
  want = np.round(np.arange(25).reshape(5, 5) / 24 * 255).astype(np.uint8)
  np.testing.assert_array_equal(tile0, np.kron(want, np.ones((s, s), np.uint8)))
  x1 = g + 5 * s + g
  np.testing.assert_array_equal(grid[g:g + 5 * s, x1:x1 + 5 * s], 128)
  assert (grid[:g] == 255).all() and (grid[:, :g] == 255).all()  # white gaps


def test_filters_deeper_layer_and_unknown_layer(trained, tmp_path, capsys):
  out = str(tmp_path / "f2.png")
  rc, text, _ = main(["viz", "filters", "--workdir", trained[0], "--layer", "conv2",
                      "--out", out], capsys)
  assert rc == 0 and "conv2 kernel 5x5x16x24 as 8x8 pairs tiles" in text
  assert png_size(out) == (8 * 52 + 2, 8 * 52 + 2)
  rc, _, err = main(["viz", "filters", "--workdir", trained[0], "--layer", "fc1",
                     "--out", str(tmp_path / "f3.png")], capsys)
  assert rc == 1 and "unknown layer 'fc1'; conv layers: conv1, conv2" in err


class TwoConvs(nn.Module):
  """conv0 (3 -> 2 channels) then `conv` (2 -> 1, 3x3 mean, bias -0.5): the class-1 logit
  is the mean of relu(conv), which is positive only around bright patches."""

  @nn.compact
  def __call__(self, x, train=False):
    h = layers.Conv2D(2, 3, padding="SAME", name="conv0")(x)
    a = layers.Conv2D(1, 3, padding="SAME", name="conv")(h)
    evidence = jnp.mean(nn.relu(a), axis=(1, 2, 3))
    return jnp.stack([jnp.zeros_like(evidence) + 0.01, evidence], -1)


def hand_built_run(shape=(16, 16, 3)):
  model = TwoConvs()
  k0 = np.zeros((3, 3, 3, 2), np.float32)
  k0[1, 1, :, 0] = 1 / 3                       # channel 0: the grey level
  k0[..., 1] = np.arange(27).reshape(3, 3, 3)  # channel 1: a ramp, weight 0 in `conv`
  k1 = np.zeros((3, 3, 2, 1), np.float32)
  k1[:, :, 0, 0] = 1 / 9
  variables = {"params": {"conv0": {"kernel": k0, "bias": np.zeros(2, np.float32)},
                          "conv": {"kernel": k1, "bias": np.full(1, -0.5, np.float32)}}}
  p = predict.Predictor(model, variables, augment_lib.make_preprocess_fn(None, (0.0,), (1.0,)),
                        shape, ["none", "patch"])
  config = tiny_config(**{"dataset.mean": (0.0,), "dataset.std": (1.0,)})
  return TrainedRun("hand-built", model, variables, config, {}, p)


def test_filters_rgb_tiles_of_a_3_channel_first_layer(tmp_path):
  run = hand_built_run()
  r = filters.plot_filters(run, str(tmp_path / "rgb.png"))
  assert (r["layer"], r["layout"], r["rows"], r["cols"], r["scale"]) == ("conv0", "rgb", 1, 2, 16)
  grid = np.asarray(Image.open(r["path"]).convert("RGB"))
  g, s = filters.GAP, 16
  tile1 = grid[g:g + 3 * s:s, g + 3 * s + g:g + 6 * s + g:s]  # one pixel per weight
  want = np.round(np.arange(27).reshape(3, 3, 3) / 26 * 255).astype(np.uint8)
  np.testing.assert_array_equal(tile1, want)


# -------------------------------------------------------------------- activations
def test_activations_of_each_stage(trained, tmp_path, capsys):
  workdir, data, _ = trained
  image_path = str(data / "test" / "b" / "00.png")
  out = str(tmp_path / "maps.png")
  rc, text, _ = main(["viz", "activations", "--workdir", workdir, image_path, "--out", out],
                     capsys)
  assert rc == 0 and "conv1 24x24x16, pool1 12x12x16, conv2 8x8x24, pool2 4x4x24" in text
  assert png_size(out) == (96 * 17, 96 * 5)
  run = inference.load(workdir)
  maps = dict((s.path, m) for s, m in activations.feature_maps(
      run.model, run.variables, run.model_input(run.predictor.load_image(image_path))))
  c = np.maximum(maps["conv1"], 0)  # the model's relu sits between conv1 and pool1
  np.testing.assert_allclose(maps["pool1"], c.reshape(12, 2, 12, 2, 16).max(axis=(1, 3)))
  # An RGB file is converted to the run's grey; a file that is no image is refused.
  Image.open(image_path).convert("RGB").save(tmp_path / "rgb.png")
  assert main(["viz", "activations", "--workdir", workdir, str(tmp_path / "rgb.png"), "--out",
               str(tmp_path / "m2.png")], capsys)[0] == 0
  (tmp_path / "bad.png").write_bytes(b"not a png")
  rc, _, err = main(["viz", "activations", "--workdir", workdir, str(tmp_path / "bad.png"),
                     "--out", str(tmp_path / "m3.png")], capsys)
  assert rc == 1 and "cannot read image" in err
  with pytest.raises(ValueError, match="takes 28x28x1 images"):
    run.model_input(np.zeros((28, 28, 3), np.uint8))


# ---------------------------------------------------------------------- confusion
def test_confusion_counts_every_example_once(trained, tmp_path, capsys):
  workdir, data, _ = trained
  out = str(tmp_path / "cm.png")
  rc, text, _ = main(["viz", "confusion", "--workdir", workdir, "--split", "validation",
                      "--out", out], capsys)
  assert rc == 0 and "test, 15 examples" in text and png_size(out) == (1200, 600)
  run = inference.load(workdir)
  _, source = runs.split_source(run, "validation")
  result = runs.predict_source(run, source, batch_size=4)  # padded last batch
  assert result["matrix"].shape == (3, 3) and result["matrix"].sum() == len(source) == 15
  images = np.stack([source[i][0] for i in range(15)])
  pred = np.asarray(run.predictor.probs(images)).argmax(-1)
  labels = np.array([source[i][1] for i in range(15)])
  want = np.zeros((3, 3), int)
  np.add.at(want, (labels, pred), 1)
  np.testing.assert_array_equal(result["matrix"], want)
  assert len(result["errors"]) == (labels != pred).sum()
  # A head with its classes rotated gets most of them wrong: the grid shows them.
  params = jax.tree_util.tree_map(np.array, run.variables["params"])
  for k in ("kernel", "bias"):
    params["head"][k] = np.roll(params["head"][k], 1, axis=-1)
  run.variables = {**run.variables, "params": params}
  wrong = runs.predict_source(run, source, max_examples=4)
  assert wrong["matrix"].sum() == 15 and len(wrong["errors"]) == 4
  assert all(t != p for _, t, p in wrong["errors"])
  r = confusion.plot_confusion(run, wrong, str(tmp_path / "wrong.png"))
  assert png_size(r["path"]) == (1200, 600) and r["pairs"][0][2] >= 1
  m = np.array([[5, 0, 1], [3, 2, 0], [0, 2, 3]])
  assert confusion.most_confused(m) == [(1, 0, 3), (2, 1, 2), (0, 2, 1)]


# ------------------------------------------------------------------------ gradcam
def test_gradcam_lies_on_the_evidence():
  run = hand_built_run()
  image = np.zeros((16, 16, 3), np.uint8)
  image[10:14, 3:7] = 255                           # the bright patch
  r = gradcam.grad_cam(run.model, run.variables, run.model_input(image))
  assert r["class"] == 1 and r["layer"] == "conv"  # the last conv, not conv0
  cam = r["cam"]
  y, x = np.unravel_index(cam.argmax(), cam.shape)
  assert 10 <= y < 14 and 3 <= x < 7 and cam.max() == pytest.approx(1.0)
  assert cam[:6].max() == 0 and cam[:, 10:].max() == 0  # nothing far from the patch
  inside = np.zeros((16, 16), bool)
  inside[9:15, 2:8] = True
  assert cam[~inside].max() < 0.05


def test_gradcam_command_and_bad_input(trained, tmp_path, capsys):
  workdir, data, _ = trained
  image = str(data / "test" / "c" / "01.png")
  out = str(tmp_path / "cam.png")
  rc, text, _ = main(["viz", "gradcam", "--workdir", workdir, image, "--class", "b",
                      "--out", out], capsys)
  assert rc == 0 and "Grad-CAM of b" in text and "on pool2" in text  # relu'd, pooled conv2
  assert png_size(out) == (720, 270)
  rc, _, err = main(["viz", "gradcam", "--workdir", workdir, image, "--class", "zebra",
                     "--out", str(tmp_path / "c2.png")], capsys)
  assert rc == 1 and "unknown class 'zebra'; classes: a, b, c" in err
  rc, _, err = main(["viz", "gradcam", "--workdir", workdir, image, "--layer", "fc1",
                     "--out", str(tmp_path / "c3.png")], capsys)
  assert rc == 1 and "layers: conv1, pool1:input, pool1, conv2, pool2:input, pool2" in err


# ------------------------------------------------------------------------ augment
def test_augment_grid_of_one_training_batch(trained, tmp_path, capsys):
  _, data, config = trained
  plain = augment.augmented_batch(config, num=6)
  assert plain["images"].shape == (6, 28, 28, 1)
  # No augmentation: de-normalising gives back the stored pixels / 255.
  batch = set(map(bytes, (np.round(plain["images"] * 255).astype(np.uint8))))
  stored = {bytes(np.asarray(Image.open(p))[..., None])
            for p in (data / "train").glob("*/*.png")}
  assert batch <= stored
  cfg = tmp_path / "cfg.py"
  cfg.write_text("from cnn_jax.config import base_config\n"
                 "def get_config():\n"
                 "  c = base_config()\n"
                 "  c.model = 'mnist_cnn'\n"
                 f"  c.dataset.name, c.dataset.path = 'folder', {str(data)!r}\n"
                 "  c.dataset.channels, c.dataset.train_split = 1, 'train'\n"
                 "  return c\n")
  out = str(tmp_path / "aug.png")
  rc, text, _ = main(["viz", "augment", "--config", str(cfg),
                      "--config.augment=pad_crop(4)|flip_lr", "--num", "8", "--out", out], capsys)
  assert rc == 0 and "8 training images of 28x28x1" in text
  assert png_size(out) == (8 * 120, 120 + 30)
  rc, _, err = main(["viz", "augment", "--config", str(cfg), "--config.augment=spin(3)",
                     "--out", str(tmp_path / "a2.png")], capsys)
  assert rc == 1 and "spin" in err


# ---------------------------------------------------------------- kernels command
def test_kernels_command_writes_images_and_sheet_and_never_overwrites(tmp_path, capsys):
  photo = tmp_path / "photo.jpg"
  rng = np.random.RandomState(0)
  Image.fromarray(rng.randint(0, 256, (30, 40, 3)).astype(np.uint8)).save(photo)
  out = tmp_path / "out"
  argv = ["kernels", str(photo), "--kernel", "sharpen", "--kernel", "edge", "--out", str(out)]
  rc, text, _ = main(argv, capsys)
  assert rc == 0 and "sheet ->" in text
  assert png_size(out / "photo_sharpen.png") == (40, 30)
  assert png_size(out / "photo_kernels.png") == (3 * 320, 240 + 40)
  from cnn_jax import kernels
  with Image.open(photo) as img:
    want = kernels.apply(np.asarray(img.convert("RGB")), "edge")
  np.testing.assert_array_equal(np.asarray(Image.open(out / "photo_edge.png")), want)
  before = os.path.getmtime(out / "photo_edge.png")
  rc, _, err = main(argv, capsys)
  assert rc == 1 and "photo_sharpen.png exists; pass --overwrite" in err
  assert os.path.getmtime(out / "photo_edge.png") == before
  assert main(argv + ["--overwrite"], capsys)[0] == 0
  rc, _, err = main(["kernels", str(photo), "--kernel", "blurr", "--out", str(out)], capsys)
  assert rc == 1 and "unknown kernel 'blurr'; kernels: identity, box_blur" in err


# ------------------------------------------------------------------ runs: errors
def test_missing_workdir_or_checkpoint_is_a_clear_error(tmp_path, capsys):
  rc, _, err = main(["viz", "filters", "--workdir", str(tmp_path / "nope"), "--out",
                     str(tmp_path / "f.png")], capsys)
  assert rc == 1 and "no work directory" in err
  (tmp_path / "empty").mkdir()
  rc, _, err = main(["viz", "gradcam", "--workdir", str(tmp_path / "empty"), "x.png", "--out",
                     str(tmp_path / "g.png")], capsys)
  assert rc == 1 and "no latest checkpoints" in err
  assert main(["viz", "nope"], capsys)[0] == 2
