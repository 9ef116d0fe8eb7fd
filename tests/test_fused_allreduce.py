"""Gradients, metrics and batch statistics cross devices in one all-reduce per dtype, not one
per array: XLA:CPU does not combine them, and over Gloo each costs milliseconds."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.training import setup, steps
from helpers import random_split, tiny_config


def test_fused_pmean_is_the_mean_of_every_leaf():
  rng = np.random.default_rng(0)
  tree = {"kernel": rng.normal(size=(4, 3, 3, 2)).astype(np.float32),
          "bias": rng.normal(size=(4, 2)).astype(np.float32),
          "loss": rng.normal(size=(4,)).astype(np.float32),
          "half": rng.normal(size=(4, 5)).astype(jnp.bfloat16)}
  got = jax.vmap(lambda t: steps.fused_pmean(t, "devices"), axis_name="devices")(tree)
  for k, v in tree.items():  # every "device" (row) holds the mean over the 4 rows
    want = np.broadcast_to(np.asarray(v, np.float32).mean(0), v.shape)
    np.testing.assert_allclose(np.asarray(got[k], np.float32), want, rtol=1e-2 if k == "half" else 1e-6)
    assert got[k].dtype == v.dtype and got[k].shape == v.shape


def test_a_pmap_step_has_one_all_reduce_for_all_gradients():
  """mnist_cnn (no batch norm): 8 parameter arrays and the metrics, one all-reduce."""
  c = tiny_config("mnist_cnn", parallel="pmap")
  c.batch_size = 2 * jax.local_device_count()
  s = setup.setup(c, random_split(8))
  state = s.compiled.init_state(jax.random.key(0))
  batch = s.compiled.put_batch({"image": np.zeros((c.batch_size, 28, 28, 1), np.uint8),
                                "label": np.zeros(c.batch_size, np.int32)})
  text = s.compiled.train_step.lower(state, batch).as_text()
  assert text.count("all_reduce") + text.count("all-reduce") == 1, text.count("all_reduce")
