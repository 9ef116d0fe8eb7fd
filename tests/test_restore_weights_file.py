"""`config.restore_from` takes a torchvision .pth: the backbone restored leaf by leaf, a head of
another class count re-initialised, a backbone that does not fit refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
from flax import traverse_util

import types

import jax
import optax

from cnn_jax import cli, models
from cnn_jax.training import evaluation, resume
from cnn_jax.training.train_state import create_train_state
from cnn_jax.weights import torch_import
from helpers import tiny_config

torch = pytest.importorskip("torch")
from test_weights import build_torch, randomize_torch_bn  # noqa: E402 - needs torch


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
  """A torchvision-layout resnet18 state dict with 1000 ImageNet classes, saved as .pth."""
  net = randomize_torch_bn(torch, build_torch(torch, "resnet18", num_classes=1000))
  path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
  torch.save(net.state_dict(), path)
  return str(path)


def _config(pth, model="resnet18"):
  c = tiny_config(model, model_input_shape=(32, 32, 3), restore_from=pth)
  c.model_kwargs.num_classes = 10
  return c


def _fresh(config):
  """(what restore_weights reads of a Setup, a state of this model's shapes, all ones):
  nothing compiled or computed, so the test costs what the restore costs."""
  model = models.get_model(config.model, **config.model_kwargs)
  shapes = jax.eval_shape(lambda rng: create_train_state(model, optax.sgd(0.1), rng, (32, 32, 3)),
                          jax.random.key(0))
  return types.SimpleNamespace(config=config), jax.tree_util.tree_map(
      lambda a: (jax.random.key(0) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
                 else np.ones(a.shape, a.dtype)), shapes)


def test_a_pth_restores_the_backbone_and_gives_a_new_head(pth, tmp_path):
  config = _config(pth)
  resume.check(config, tmp_path)  # a weights file is a valid restore_from
  s, fresh = _fresh(config)
  state = evaluation.restore_weights(s, fresh, *evaluation.restore_source(config))
  want = torch_import.load_torchvision_pth(pth, "resnet18")
  got = traverse_util.flatten_dict({"params": state.params, "batch_stats": state.batch_stats},
                                   sep="/")
  ref = traverse_util.flatten_dict(want, sep="/")
  head = [k for k in got if k.startswith("params/head/")]
  assert head and got["params/head/kernel"].shape == (512, 10)
  for k, v in got.items():
    if k in head:  # the head keeps this model's own init, not the 1000-class one
      np.testing.assert_array_equal(v, traverse_util.flatten_dict(
          {"params": fresh.params}, sep="/")[k])
    else:
      np.testing.assert_array_equal(v, ref[k], err_msg=k)


def test_a_backbone_that_does_not_fit_is_refused_in_one_line(pth):
  config = _config(pth, model="resnet34")
  s, state = _fresh(config)
  with pytest.raises(ValueError, match=r"its weights do not fit model 'resnet34' \(missing "
                                       r"there: params/layer1_2"):
    evaluation.restore_weights(s, state, *evaluation.restore_source(config))


def test_train_cli_accepts_a_pth_and_refuses_a_missing_file(pth, tmp_path, capsys):
  missing = str(tmp_path / "nope.pth")
  assert cli.main(["train", "--config", "experiments/mnist_cnn.py:smoke", "--workdir",
                   str(tmp_path / "w"), f"--config.restore_from={missing}"]) == 1
  err = capsys.readouterr().err
  assert f"config.restore_from={missing} does not exist" in err and "torchvision .pth" in err
