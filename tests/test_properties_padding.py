"""Padding and output-size arithmetic of cnn_jax.layers, for generated sizes.

Three references that share nothing with cnn_jax.layers.conv: the formulas as the
PyTorch and TensorFlow documentation write them (typed in below), PyTorch itself, and
XLA's own "SAME" / "VALID" handling in `lax.conv_general_dilated` / `lax.reduce_window`.
Sizes are compared by tracing only (`jax.eval_shape`, nothing compiled); values for a
few shapes per test. Hand-worked cases are in tests/test_layers.py and tests/test_zoo.py.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, example, given, settings, strategies as st

from cnn_jax import layers

PROPS = settings(max_examples=50, deadline=None, derandomize=True, database=None)
FEW = settings(max_examples=4, deadline=None, derandomize=True, database=None)  # compiles

size, kernel, stride, dilation = (st.integers(1, 20), st.integers(1, 5), st.integers(1, 4),
                                  st.integers(1, 3))


def torch_conv_out(w: int, k: int, p: int, s: int, d: int) -> int:
  """torch.nn.Conv2d docs: floor((W + 2P - D (K - 1) - 1) / S + 1)."""
  return math.floor((w + 2 * p - d * (k - 1) - 1) / s + 1)


def tf_same(w: int, k: int, s: int, d: int) -> tuple[int, tuple[int, int]]:
  """TensorFlow's "SAME" (tf.nn convolution docs): out = ceil(W / S); total padding
  max((out - 1) S + K_eff - W, 0), the smaller half first."""
  out, k_eff = -(-w // s), d * (k - 1) + 1
  total = max((out - 1) * s + k_eff - w, 0)
  return out, (total // 2, total - total // 2)


def conv_out_shape(x_hw, k, s, d, padding) -> tuple[int, int]:
  """Conv2D's output (H, W), traced only."""
  conv = layers.Conv2D(1, k, strides=s, dilation=d, padding=padding)
  x = jax.ShapeDtypeStruct((1, *x_hw, 1), jnp.float32)
  y = jax.eval_shape(lambda x: conv.init_with_output(jax.random.key(0), x)[0], x)
  return tuple(y.shape[1:3])


@PROPS
@given(w=size, k=kernel, p=st.integers(0, 3), s=stride, d=dilation)
def test_conv_output_size_is_torchs(w, k, p, s, d):
  want = torch_conv_out(w, k, p, s, d)
  if want < 1:  # torch: "Calculated output size ... is too small"
    with pytest.raises(ValueError, match="does not fit"):
      layers.conv_output_size(w, k, p, s, d)
  else:
    assert layers.conv_output_size(w, k, p, s, d) == want
    assert conv_out_shape((w, w + 1), k, s, d, p) == (want, torch_conv_out(w + 1, k, p, s, d))


@PROPS
@given(h=size, w=size, k=kernel, s=stride, d=dilation)
@example(h=5, w=6, k=2, s=1, d=1)  # odd total (1): the extra row / column at the end
@example(h=7, w=8, k=3, s=2, d=1)  # total 2 vs 1 with stride 2
def test_same_padding_is_tensorflows_and_xlas(h, w, k, s, d):
  pads = layers.resolve_padding("SAME", (h, w), (k, k), (s, s), (d, d))
  (oh, ph), (ow, pw) = tf_same(h, k, s, d), tf_same(w, k, s, d)
  assert [tuple(p) for p in pads] == [ph, pw]
  assert [tuple(p) for p in pads] == list(
      jax.lax.padtype_to_pads((h, w), (d * (k - 1) + 1,) * 2, (s, s), "SAME"))
  assert conv_out_shape((h, w), k, s, d, "SAME") == (oh, ow)
  # And XLA's own SAME, for the same convolution.
  ref = jax.eval_shape(lambda x, f: jax.lax.conv_general_dilated(
      x, f, (s, s), "SAME", rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC")),
      jax.ShapeDtypeStruct((1, h, w, 1), jnp.float32),
      jax.ShapeDtypeStruct((k, k, 1, 1), jnp.float32))
  assert ref.shape[1:3] == (oh, ow)


@PROPS
@given(h=size, w=size, k=kernel, s=stride, d=dilation)
def test_valid_and_full_padding_sizes(h, w, k, s, d):
  k_eff = d * (k - 1) + 1
  assume(min(h, w) >= k_eff)
  # TensorFlow's "VALID": ceil((W - K_eff + 1) / S).
  want = tuple(-(-(v - k_eff + 1) // s) for v in (h, w))
  assert conv_out_shape((h, w), k, s, d, "VALID") == want
  # FULL: K_eff - 1 on both sides, so every window overlaps the input (scipy's "full").
  assert [tuple(p) for p in layers.resolve_padding("FULL", (h, w), (k, k), (s, s), (d, d))] \
      == [(k_eff - 1, k_eff - 1)] * 2
  assert conv_out_shape((h, w), k, s, d, "FULL") == tuple(
      (v + k_eff - 2) // s + 1 for v in (h, w))


@FEW
@given(h=st.integers(3, 9), w=st.integers(3, 9), k=st.integers(1, 4), s=st.integers(1, 3),
       d=st.integers(1, 2), seed=st.integers(0, 99))
def test_same_conv_values_equal_xlas_same(h, w, k, s, d, seed):
  """Values, not just sizes: layers.Conv2D(padding="SAME") is lax's "SAME" convolution."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(1, h, w, 2)).astype(np.float32)
  kernel = rng.normal(size=(k, k, 2, 3)).astype(np.float32)
  conv = layers.Conv2D(3, k, strides=s, dilation=d, padding="SAME", use_bias=False)
  ours = conv.apply({"params": {"kernel": kernel}}, x)
  ref = jax.lax.conv_general_dilated(x, kernel, (s, s), "SAME",
                                     rhs_dilation=(d, d),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


@PROPS
@given(h=size, w=size, k=kernel, s=stride, padding=st.sampled_from(["SAME", "VALID"]))
def test_pool_sizes_equal_reduce_windows(h, w, k, s, padding):
  assume(padding == "SAME" or min(h, w) >= k)
  x = jax.ShapeDtypeStruct((1, h, w, 1), jnp.float32)
  ref = jax.eval_shape(lambda x: jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), padding), x)
  for pool in (layers.MaxPool(k, s, padding), layers.AvgPool(k, s, padding)):
    assert jax.eval_shape(lambda x: pool.apply({}, x), x).shape == ref.shape


def np_pool(x: np.ndarray, k: int, s: int, pads: tuple[int, int], kind: str) -> np.ndarray:
  """1-D pooling over explicitly padded x, by definition: max over each window, or the mean
  of the window's elements that lie inside x (padding excluded)."""
  lo, hi = pads
  n_out = (len(x) + lo + hi - k) // s + 1
  out = []
  for o in range(n_out):
    idx = [i for i in range(o * s - lo, o * s - lo + k) if 0 <= i < len(x)]
    out.append(x[idx].max() if kind == "max" else x[idx].mean())
  return np.asarray(out, np.float32)


@PROPS
@given(n=st.integers(1, 16), k=kernel, s=stride, p=st.integers(0, 2), seed=st.integers(0, 99))
@example(n=5, k=2, s=2, p=1, seed=0)  # rounding up adds a window starting in the padding
@example(n=6, k=2, s=3, p=0, seed=0)  # the same without padding
@example(n=7, k=3, s=2, p=1, seed=0)  # rounding up adds a window that torch keeps
def test_ceil_mode_padding_pools_as_torch_ceil_mode(n, k, s, p, seed):
  torch = pytest.importorskip("torch")
  assume(p <= k // 2 and n + 2 * p >= k)  # torch's own limits
  x = np.random.default_rng(seed).normal(size=n).astype(np.float32)
  pads = layers.ceil_mode_padding(n, k, s, p)
  t = torch.from_numpy(x)[None, None]
  ref_max = torch.nn.functional.max_pool1d(t, k, s, p, ceil_mode=True)[0, 0].numpy()
  ref_avg = torch.nn.functional.avg_pool1d(t, k, s, p, ceil_mode=True,
                                           count_include_pad=False)[0, 0].numpy()
  # torch's ceil_mode output size (its docs), a last window starting in the padding dropped.
  out = math.ceil((n + 2 * p - k) / s) + 1
  out -= (out - 1) * s >= n + p
  assert len(ref_max) == out and pads[0] == p
  np.testing.assert_array_equal(np_pool(x, k, s, pads, "max"), ref_max)
  np.testing.assert_allclose(np_pool(x, k, s, pads, "avg"), ref_avg, rtol=1e-6, atol=1e-7)


@FEW
@given(n=st.integers(2, 9), k=st.integers(2, 3), s=st.integers(1, 3), p=st.integers(0, 1))
@example(n=5, k=2, s=2, p=1)
def test_pool_layers_use_explicit_pads_as_given(n, k, s, p):
  """layers.MaxPool / AvgPool over ceil_mode_padding's pairs: the values np_pool gives."""
  assume(n + 2 * p >= k)
  x = np.random.default_rng(n * 10 + k).normal(size=(1, n, n + 1, 1)).astype(np.float32)
  pads = [layers.ceil_mode_padding(n, k, s, p), layers.ceil_mode_padding(n + 1, k, s, p)]
  for layer, kind in ((layers.MaxPool(k, s, pads), "max"), (layers.AvgPool(k, s, pads), "avg")):
    ours = np.asarray(layer.apply({}, jnp.asarray(x)))[0, ..., 0]
    rows = np.stack([np_pool(r, k, s, pads[1], kind) for r in x[0, ..., 0]])
    ref = np.stack([np_pool(c, k, s, pads[0], kind) for c in rows.T], axis=1)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
