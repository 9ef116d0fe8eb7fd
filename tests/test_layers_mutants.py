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


# ------------------------------------------------------------------------------- conv
def _np_conv(x, k, pads, stride=(1, 1)):
  """NHWC x HWIO cross-correlation, a plain numpy loop (no library convolution)."""
  x = np.pad(x, ((0, 0), *pads, (0, 0)))
  kh, kw, _, cout = k.shape
  oh, ow = (x.shape[1] - kh) // stride[0] + 1, (x.shape[2] - kw) // stride[1] + 1
  out = np.zeros((x.shape[0], oh, ow, cout))
  for i in range(oh):
    for j in range(ow):
      patch = x[:, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
      out[:, i, j] = np.einsum("nhwc,hwco->no", patch, k)
  return out


def test_conv_defaults_are_3x3_stride_1_valid_with_a_bias():
  x = np.random.RandomState(0).randn(1, 5, 6, 3).astype(np.float32)
  m = layers.Conv2D(2)
  v = m.init(jax.random.key(0), jnp.asarray(x))
  assert v["params"]["kernel"].shape == (3, 3, 3, 2)
  assert v["params"]["bias"].shape == (2,)
  k = np.random.RandomState(1).randn(3, 3, 3, 2).astype(np.float32)
  b = np.array([0.5, -2.0], np.float32)  # non-zero: a bias subtracted instead would show
  y = m.apply({"params": {"kernel": k, "bias": b}}, jnp.asarray(x))
  assert y.shape == (1, 3, 4, 2)
  np.testing.assert_allclose(y, _np_conv(x, k, [(0, 0), (0, 0)]) + b, rtol=1e-5, atol=1e-5)


def test_conv_padding_as_a_pair_of_ints_pads_each_side():
  x = np.random.RandomState(2).randn(1, 4, 5, 1).astype(np.float32)
  k = np.random.RandomState(3).randn(3, 3, 1, 1).astype(np.float32)
  y = layers.Conv2D(1, 3, padding=(1, 2), use_bias=False).apply({"params": {"kernel": k}},
                                                                jnp.asarray(x))
  assert y.shape == (1, 4, 7, 1)
  np.testing.assert_allclose(y, _np_conv(x, k, [(1, 1), (2, 2)]), rtol=1e-5, atol=1e-5)


def test_resolve_padding_by_hand():
  assert layers.resolve_padding("valid", (5, 5), (3, 3), (1, 1), (1, 1)) == [(0, 0), (0, 0)]
  # FULL pads D*(K-1): 3x3 dilated 2 spans 5 pixels -> 4 each side; 2 wide -> 1.
  assert layers.resolve_padding("full", (5, 5), (3, 2), (1, 1), (2, 1)) == [(4, 4), (1, 1)]
  # SAME, 1x1 kernel: stride 1 needs no padding; stride 3 on 8 pixels: ceil(8/3) = 3
  # outputs, 2*3 + 1 - 8 = -1 -> no padding (never negative); a 3x3 kernel at stride 2
  # on 8: 4 outputs, 3*2 + 3 - 8 = 1 -> (0, 1).
  assert layers.resolve_padding("SAME", (8, 8), (1, 1), (1, 3), (1, 1)) == [(0, 0), (0, 0)]
  assert layers.resolve_padding("SAME", (8,), (3,), (2,), (1,)) == [(0, 1)]
  assert layers.resolve_padding(2, (8, 8), (3, 3), (1, 1), (1, 1)) == [(2, 2), (2, 2)]
  assert layers.resolve_padding(((1, 0), (0, 2)), (8, 8), (3, 3), (1, 1), (1, 1)) == [
      (1, 0), (0, 2)]
  with pytest.raises(ValueError, match="unknown padding 'HALF'"):
    layers.resolve_padding("HALF", (8, 8), (3, 3), (1, 1), (1, 1))


@pytest.mark.parametrize("stride", [1, 3])
def test_same_padding_of_a_1x1_kernel_matches_lax_same(stride):
  """1x1 kernels are where SAME's total is 0 (stride 1) or would be negative (stride 3)."""
  x = jnp.asarray(np.random.RandomState(4).randn(1, 8, 7, 2), jnp.float32)
  k = jnp.asarray(np.random.RandomState(5).randn(1, 1, 2, 3), jnp.float32)
  got = layers.Conv2D(3, 1, strides=stride, padding="SAME", use_bias=False).apply(
      {"params": {"kernel": k}}, x)
  want = jax.lax.conv_general_dilated(x, k, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("in_ch,features", [(3, 4), (4, 3)])
def test_groups_must_divide_both_channel_counts(in_ch, features):
  with pytest.raises(ValueError, match=f"input channels \\({in_ch}\\) and features "
                                       f"\\({features}\\) must both be divisible"):
    layers.Conv2D(features, 1, feature_group_count=2).init(
        jax.random.key(0), jnp.zeros((1, 2, 2, in_ch)))


def test_conv_errors_name_the_layer_and_the_spatial_size():
  with pytest.raises(ValueError, match=r"^Conv2D: expected NHWC input of rank 4, got shape "
                                       r"\(3, 3, 1\)"):
    layers.Conv2D(4, 3).init(jax.random.key(0), jnp.zeros((3, 3, 1)))
  with pytest.raises(ValueError, match=r"^Conv2D: input of spatial size \(3, 4\) is too "
                                       r"small for a kernel of \(5, 5\)"):
    layers.Conv2D(4, 5).init(jax.random.key(0), jnp.zeros((1, 3, 4, 1)))
  with pytest.raises(ValueError, match=r"expected an int or a pair, got \(1, 2, 3\)"):
    layers.Conv2D(4, (1, 2, 3)).init(jax.random.key(0), jnp.zeros((1, 3, 4, 1)))
