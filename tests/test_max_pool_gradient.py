"""Max pooling's gradient under jit equals the op-by-op (eager) gradient, in tiny_cnn.

XLA:CPU (jax 0.10.2) miscompiled the gradient of the CPU-only tiled max pool (a max over a
reshaped view) when the view first crops an odd size: tiny_cnn on 28x28 input (its last
pool takes 7x7 to 3x3) got kernel gradients 60-86% off the eager / float64 gradient at
backend optimization levels 1 and 2 (the test suite's conftest runs level 1), and in
float64 at the default level 3. It was the unexplained part of 1 vs 8 devices: each device
count compiles another program, and a program with the bug (or a milder form of it) trains
on other gradients, 3.6e-3 apart in running variance after 8 steps. Cropped tiles now take
`reduce_window`, whose gradient is exact at every level.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import layers
from cnn_jax.layers import pooling
from cnn_jax.models.tiny_cnn import TinyCNN


def _grads(model, variables, x, y):
  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
  return jax.grad(loss)


# 28: 7x7 -> 3x3 crops (the miscompiled case); 32: 4x4 -> 2x2 does not (a control, slow).
@pytest.mark.parametrize("size", [28, pytest.param(32, marks=pytest.mark.slow)])
def test_tiny_cnn_gradient_under_jit_equals_eager(size, monkeypatch):
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, size, size, 1), jnp.float32)
  y = jnp.asarray([3, 7])
  model = TinyCNN(widths=(16, 32, 8))
  variables = model.init(jax.random.key(0), x, train=False)
  grad = _grads(model, variables, x, y)
  jitted = jax.device_get(jax.jit(grad)(variables["params"]))
  # The reference: the same gradient with every max pool on reduce_window (exact at every
  # level), compiled too: op by op (jax.disable_jit) it costs 10 s more, and agrees.
  monkeypatch.setattr(pooling, "_use_tiled_max_pool", lambda: False)
  eager = jax.device_get(jax.jit(_grads(model, variables, x, y))(variables["params"]))
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(eager)[0],
                          jax.tree_util.tree_leaves(jitted)):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(np.max(np.abs(a))),
                               err_msg=jax.tree_util.keystr(path))


def test_max_pool_crops_odd_sizes_as_reduce_window():
  """The values are reduce_window's where the tile view would crop (7 -> 3) and not."""
  x = jnp.asarray(np.random.RandomState(1).randn(2, 7, 8, 3), jnp.float32)
  out = layers.MaxPool(2).apply({}, x)
  np.testing.assert_array_equal(out, nn.max_pool(x, (2, 2), (2, 2), "VALID"))
  assert out.shape == (2, 3, 4, 3)
