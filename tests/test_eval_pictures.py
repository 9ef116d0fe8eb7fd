"""Pictures in TensorBoard at each evaluation (training/eval_pictures.py): the first
convolution's filters and sample predictions."""
import numpy as np
import pytest

from cnn_jax import config as config_lib
from helpers import tiny_config


def _tensorboard_images(logdir, tag):
  """(step, PNG bytes) of every image `tag` in a TensorBoard log (TFRecord framing:
  length u64, its crc u32, the Event proto, its crc u32), read with tensorboardX's protos."""
  import glob
  import struct
  from tensorboardX.proto import event_pb2
  out = []
  for path in sorted(glob.glob(f"{logdir}/events.out.tfevents.*")):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in event.summary.value:
        if v.tag == tag:
          out.append((event.step, v.image.encoded_image_string))
  return out


def test_first_layer_filters_reach_tensorboard(tmp_path):
  """Every evaluation sends the first convolution's kernels to TensorBoard as an image."""
  import io
  from PIL import Image
  from cnn_jax.training import trainer
  from helpers import random_split
  train = random_split(64)
  r = trainer.train_and_evaluate(tiny_config("mnist_cnn", num_epochs=2), str(tmp_path), train, train)
  images = _tensorboard_images(tmp_path / "tensorboard", "filters/first_conv")
  assert [step for step, _ in images] == [2, 4]
  grid = np.asarray(Image.open(io.BytesIO(images[-1][1])))
  # 16 kernels 5x5 of 1 channel -> 2 rows x 8 tiles, each weight a 10 px block, 2 px gaps
  assert grid.shape[:2] == (2 * 52 + 2, 8 * 52 + 2)
  k = np.asarray(r["state"].params["conv1"]["kernel"])[:, :, 0, 0]
  tile = grid[2:52:10, 2:52:10].astype(float)
  tile = tile[..., 0] if tile.ndim == 3 else tile
  expected = np.round((k - k.min()) / (k.max() - k.min()) * 255)
  np.testing.assert_allclose(tile, expected, atol=1)


def _png(data):
  import io
  from PIL import Image
  return np.asarray(Image.open(io.BytesIO(data)))


def _frame_colours(picture, n):
  """Per tile of a `viz.samples` picture: True where its frame is green (right)."""
  from cnn_jax import viz
  from cnn_jax.viz import samples
  _, cols = viz.grid_shape(n, samples.MAX_COLS)
  out = []
  for k in range(n):
    r, c = divmod(k, cols)
    pixel = tuple(picture[r * (samples.CELL + samples.LABEL), c * samples.CELL + samples.CELL // 2])
    assert pixel in (samples._rgb(samples.RIGHT), samples._rgb(samples.WRONG)), pixel
    out.append(pixel == samples._rgb(samples.RIGHT))
  return out


def test_sample_predictions_reach_tensorboard(tmp_path):
  """Every evaluation sends the first N validation images with the model's predictions;
  the picture holds N tiles, and its right / wrong frames are the model's own argmax."""
  import jax
  from cnn_jax.training import eval_pictures, trainer
  from cnn_jax.training.setup import setup
  from cnn_jax.training.train_state import variables_of
  from cnn_jax.viz import samples as samples_viz
  from helpers import random_split
  train, val = random_split(64), random_split(20, seed=1)
  config = tiny_config("mnist_cnn", num_epochs=2, tensorboard_samples=3)
  r = trainer.train_and_evaluate(config, str(tmp_path), train, val)
  pictures = _tensorboard_images(tmp_path / "tensorboard", "samples/predictions")
  assert [step for step, _ in pictures] == [2, 4]
  picture = _png(pictures[-1][1])
  assert picture.shape[:2] == samples_viz.size(3) == (samples_viz.CELL + samples_viz.LABEL,
                                                      3 * samples_viz.CELL)
  s = setup(config, train, val)
  samples = eval_pictures.read_samples(s)
  np.testing.assert_array_equal(samples.images, val.images[:3])  # pp_eval of the first 3
  probs = eval_pictures.sample_predictions(samples, r["state"])
  x = s.preprocess(jax.numpy.asarray(val.images[:3]), jax.random.key(0), False)
  direct = np.asarray(s.model.apply(variables_of(r["state"]), x, train=False))
  np.testing.assert_array_equal(probs.argmax(-1), direct.argmax(-1))
  np.testing.assert_allclose(probs, np.asarray(jax.nn.softmax(direct)), atol=1e-5)
  assert _frame_colours(picture, 3) == list(probs.argmax(-1) == val.labels[:3])


def test_no_sample_pictures_when_off(tmp_path):
  from cnn_jax.training import trainer
  from helpers import random_split
  train = random_split(64)
  trainer.train_and_evaluate(tiny_config("mlp", tensorboard_samples=0), str(tmp_path), train, train)
  assert _tensorboard_images(tmp_path / "tensorboard", "samples/predictions") == []
  with pytest.raises(ValueError, match="tensorboard_samples must be an integer >= 0"):
    config_lib.validate(tiny_config(tensorboard_samples=-1))
  with pytest.raises(ValueError, match="tensorboard_samples must be an integer >= 0"):
    config_lib.validate(tiny_config(tensorboard_samples=True))


def test_a_failing_sample_forward_does_not_break_the_run(tmp_path, monkeypatch, caplog):
  """A model whose forward raises on the sample batch: the run ends normally, the filters
  are still written, the samples picture is dropped and that is logged once."""
  import logging
  import flax.linen as nn
  from cnn_jax.training import setup as setup_lib, trainer
  from helpers import random_split
  build = setup_lib.build_model

  class FailsOnSamples(nn.Module):
    inner: nn.Module

    @nn.compact
    def __call__(self, x, train: bool = False):
      if x.shape[0] == 3:  # only the sample batch (train 32, eval 48 images)
        raise RuntimeError("forward failed")
      return self.inner(x, train=train)

  monkeypatch.setattr(setup_lib, "build_model",
                      lambda c, n, *shape: FailsOnSamples(build(c, n, *shape)))
  train = random_split(64)
  with caplog.at_level(logging.INFO, logger="cnn_jax"):
    r = trainer.train_and_evaluate(tiny_config("mnist_cnn", num_epochs=2, tensorboard_samples=3),
                                   str(tmp_path), train, train)
  assert r["final_step"] == 4 and "validation" in r
  assert _tensorboard_images(tmp_path / "tensorboard", "samples/predictions") == []
  assert len(_tensorboard_images(tmp_path / "tensorboard", "filters/first_conv")) == 2
  logged = [m for m in caplog.messages if "no sample predictions picture" in m]
  assert len(logged) == 1 and "forward failed" in logged[0]


SAMPLES_ON_TWO_DEVICES = """
import os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from cnn_jax.training import eval_pictures
from cnn_jax.training.setup import setup
from cnn_jax.training.train_state import variables_of
from helpers import random_split, tiny_config
assert jax.device_count() == 2
train = random_split(32)

class Writer:
  images = {}
  def image(self, tag, image, step):
    self.images[tag] = image

for mode in ("sharded", "pmap"):
  s = setup(tiny_config("mlp", parallel=mode, tensorboard_samples=3), train, train)
  state = s.compiled.init_state(jax.random.key(0))
  state, _ = s.compiled.train_step(state, s.compiled.put_batch({"image": train.images,
                                                                "label": train.labels}))
  leaf = jax.tree_util.tree_leaves(state.params)[0]
  assert len(leaf.sharding.device_set) == 2, leaf.sharding  # replicated on both devices
  memo, writer = {}, Writer()
  eval_pictures.write_eval_pictures(writer, s, state, 1, memo)
  assert writer.images["samples/predictions"].shape[:2] == (140, 336), writer.images
  probs = eval_pictures.sample_predictions(memo["samples"], state)
  x = s.preprocess(jax.numpy.asarray(train.images[:3]), jax.random.key(0), False)
  direct = s.model.apply(jax.device_get(variables_of(state)), x)
  np.testing.assert_allclose(probs, jax.nn.softmax(direct), atol=1e-5)
  print(mode, type(leaf.sharding).__name__)
"""


def test_sample_predictions_under_both_parallel_modes_on_two_devices():
  """State replicated on 2 devices (sharded: jit's replicated output; pmap: the pmapped
  step's): the forward runs on one device's copy, so process 0 can run it alone."""
  import os
  import subprocess
  import sys
  tests = os.path.dirname(os.path.abspath(__file__))
  done = subprocess.run([sys.executable, "-c", SAMPLES_ON_TWO_DEVICES, tests],
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split()[::2] == ["sharded", "pmap"], done.stdout
