"""airbench's initialisation and optimisation, part by part, against hand-computed values.

Whitened stem (eigenvectors of the patch second moments; checked by what they do to the
data), dirac init (torch.nn.init.dirac_), batch norm's running-average decay in torch's
terms, no batch-norm scale, the 64x learning rate on norm biases, and the trainer putting
the data-computed stem in place and keeping it frozen.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax
from ml_collections import ConfigDict

from cnn_jax import models
from cnn_jax.config import base_config
from cnn_jax.data.split import Split
from cnn_jax.models import airbench
from cnn_jax.training import optim, setup as setup_lib

SMALL = dict(widths=(8, 8, 8), stem_width=24)


def test_whitening_kernel_whitens_the_patches_it_was_computed_from():
  rng = np.random.RandomState(0)
  mix = rng.randn(3, 3)  # correlated colour channels with a spatial trend
  images = rng.randn(64, 10, 10, 3) @ mix + np.linspace(0, 2, 10)[None, :, None, None]
  kernel = airbench.whitening_kernel(images, patch=2, eps=0.0)
  assert kernel.shape == (2, 2, 3, 24)
  np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
  out = lax.conv_general_dilated(jnp.asarray(images, jnp.float32), jnp.asarray(kernel[..., :12]),
                                 (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=lax.Precision.HIGHEST)
  flat = np.asarray(out, np.float64).reshape(-1, 12)
  np.testing.assert_allclose(flat.T @ flat / len(flat), np.eye(12), atol=2e-3)
  # Largest eigenvalue first: its filter has the smallest norm (1 / sqrt(eigenvalue)).
  norms = np.linalg.norm(kernel[..., :12].reshape(12, 12), axis=0)
  assert np.all(np.diff(norms) >= -1e-6)


def test_dirac_init_matches_torch():
  kernel = airbench.dirac_init()(jax.random.key(0), (3, 3, 4, 6))
  ref = torch.empty(6, 4, 3, 3)
  torch.nn.init.dirac_(ref[:4])
  got = np.asarray(kernel).transpose(3, 2, 0, 1)  # HWIO -> OIHW
  np.testing.assert_array_equal(got[:4], ref[:4].numpy())
  rest = got[4:]
  bound = 1 / np.sqrt(4 * 9)  # torch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  assert np.abs(rest).max() <= bound and np.abs(rest).max() > bound / 2


def test_batch_norm_decays_as_torch_momentum_and_keeps_no_scale():
  """airbench94's BatchNorm(momentum=0.6) gives torch momentum 0.4: after one batch the
  running mean is 0.4 of the batch mean. Before, the zoo stored 0.6 of it (flax 0.4)."""
  model = models.get_model("airbench", bn_scale=False, **SMALL)
  x = jnp.asarray(np.random.RandomState(0).randn(4, 32, 32, 3), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  assert "scale" not in variables["params"]["group1"]["bn1"]
  assert set(variables["params"]["group1"]["bn1"]) == {"bias"}
  _, state = model.apply(variables, x, train=True, mutable=["batch_stats"],
                         capture_intermediates=lambda m, _: m.name == "pool")
  pooled = state["intermediates"]["group1"]["pool"]["__call__"][0]
  np.testing.assert_allclose(state["batch_stats"]["group1"]["bn1"]["mean"],
                             0.4 * pooled.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)


def test_norm_bias_lr_scale_multiplies_only_norm_biases():
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 2)), "bias": jnp.ones(2)},
            "bn": {"bias": jnp.ones(2), "scale": jnp.ones(2)}, "head": {"kernel": jnp.ones((2, 2))}}
  mask = optim.norm_bias_mask(params)
  assert jax.tree.leaves(mask) == jax.tree.leaves(
      {"conv": {"kernel": False, "bias": False}, "bn": {"bias": True, "scale": False},
       "head": {"kernel": False}})
  cfg = ConfigDict(dict(name="sgd", learning_rate=0.5, schedule="constant",
                        norm_bias_lr_scale=64.0))
  tx, _ = optim.make_optimizer(cfg, 10, 1)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(updates["bn"]["bias"][0]) == pytest.approx(-32.0)     # -0.5 * 64
  assert float(updates["bn"]["scale"][0]) == pytest.approx(-0.5)
  assert float(updates["conv"]["bias"][0]) == pytest.approx(-0.5)
  assert float(updates["conv"]["kernel"][0, 0, 0, 0]) == pytest.approx(-0.5)


def _config():
  c = base_config()
  c.model = "airbench"
  c.model_kwargs = ConfigDict(dict(whitened_stem=True, **SMALL))
  c.batch_size, c.eval_batch_size, c.num_epochs = 16, 16, 1
  c.optimizer.name, c.optimizer.learning_rate = "nesterov", 0.05
  c.freeze = ("stem/kernel",)
  c.dataset.name, c.dataset.mean, c.dataset.std = "folder", (0.5,) * 3, (0.25,) * 3
  return c


def test_trainer_puts_the_whitened_stem_in_place_and_keeps_it_frozen():
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (48, 32, 32, 3)).astype(np.uint8)
  train = Split(images, rng.randint(0, 10, 48).astype(np.int32), 10)
  s = setup_lib.setup(_config(), train, Split(images[:16], train.labels[:16], 10), None)
  state = s.compiled.init_state(jax.random.key(0))
  want = airbench.whitening_kernel((images / 255.0 - 0.5) / 0.25, patch=2)
  np.testing.assert_allclose(state.params["stem"]["kernel"], want, rtol=1e-4, atol=1e-4)
  before = jax.tree.map(np.asarray, state.params)
  batch = s.compiled.put_batch({"image": images[:16], "label": train.labels[:16]})
  for _ in range(2):
    state, _ = s.compiled.train_step(state, batch)
  np.testing.assert_array_equal(state.params["stem"]["kernel"], before["stem"]["kernel"])
  assert not np.allclose(state.params["stem"]["bias"], before["stem"]["bias"])
  assert not np.allclose(state.params["group1"]["conv1"]["kernel"],
                         before["group1"]["conv1"]["kernel"])
