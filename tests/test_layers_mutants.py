"""Exact checks of cnn_jax.layers that kill the mutants tests/test_layers.py let through.

Each test names the line it guards; the expected numbers are worked out by hand or by
an independent numpy loop, never by the function under test. They are the first tests
`benchmarks/mutation.py` runs for layers/ (so they stay cheap: tiny shapes, eager).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import layers


# ------------------------------------------------------------------------- activations
def test_maxout_default_axis_is_the_last_one_and_keeps_the_others():
  # (2, 3, 4): default axis -1 pools the 4 channels in pairs; axis=1 pools the 3 rows
  # ... in threes, and the trailing axis must survive the reshape.
  x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) * np.array([1, -1, 1, -1], np.float32)
  want_last = np.maximum(x[..., 0::2], x[..., 1::2])  # pairs (0, 1), (2, 3)
  np.testing.assert_array_equal(layers.maxout(jnp.asarray(x), 2), want_last)
  want_mid = x.max(axis=1, keepdims=True)             # one group of all 3 rows
  got = layers.maxout(jnp.asarray(x), 3, axis=1)
  assert got.shape == (2, 1, 4)
  np.testing.assert_array_equal(got, want_mid)


def test_maxout_layer_defaults_to_two_pieces():
  m = layers.Maxout(features=3)
  x = jnp.asarray(np.random.RandomState(0).randn(2, 5), jnp.float32)
  v = m.init(jax.random.key(0), x)
  k, b = np.asarray(v["params"]["linear"]["kernel"]), np.asarray(v["params"]["linear"]["bias"])
  assert k.shape == (5, 6)
  z = np.asarray(x) @ k + b
  np.testing.assert_allclose(m.apply(v, x), np.maximum(z[:, 0::2], z[:, 1::2]), rtol=1e-6)
