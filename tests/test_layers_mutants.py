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


def test_conv_output_size_defaults_no_padding_stride_1_no_dilation():
  assert layers.conv_output_size(32, 5) == 28   # P=1 would give 30, S=2 14, D=2 24
  assert layers.conv_output_size(5, 5) == 1     # an exact fit is one output
  with pytest.raises(ValueError, match="effective size 6 .* input of size 5 with padding 0"):
    layers.conv_output_size(5, 6)
  with pytest.raises(ValueError, match="effective size 5"):  # 2 + 2*1 pads: one short
    layers.conv_output_size(2, 5, 1)


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
  # One pixel short (4 < 5) is refused; an exact fit gives one output.
  with pytest.raises(ValueError, match=r"spatial size \(4, 5\) is too small"):
    layers.Conv2D(4, 5).init(jax.random.key(0), jnp.zeros((1, 4, 5, 1)))
  assert layers.Conv2D(4, 5).init_with_output(
      jax.random.key(0), jnp.zeros((1, 5, 5, 1)))[0].shape == (1, 1, 1, 4)
  with pytest.raises(ValueError, match=r"expected an int or a pair, got \(1, 2, 3\)"):
    layers.Conv2D(4, (1, 2, 3)).init(jax.random.key(0), jnp.zeros((1, 3, 4, 1)))


# ---------------------------------------------------------------------------- pooling
def _np_pool(x, window, stride, pads=((0, 0), (0, 0)), op=np.max, include_pad=False):
  """NHWC pooling as a numpy loop; padded cells are NaN and left out (or counted as 0)."""
  xp = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)), constant_values=np.nan)
  oh = (xp.shape[1] - window[0]) // stride[0] + 1
  ow = (xp.shape[2] - window[1]) // stride[1] + 1
  out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
  for i in range(oh):
    for j in range(ow):
      win = xp[:, i * stride[0]:i * stride[0] + window[0], j * stride[1]:j * stride[1] + window[1]]
      if include_pad:
        out[:, i, j] = np.nansum(win, axis=(1, 2)) / (window[0] * window[1])
      else:
        out[:, i, j] = {np.max: np.nanmax, np.mean: np.nanmean}[op](win, axis=(1, 2))
  return out


def _prims(fn, x):
  return {e.primitive.name for e in jax.make_jaxpr(fn)(x).jaxpr.eqns}


def test_pool_defaults_are_2x2_stride_window_valid():
  x = np.random.RandomState(6).randn(2, 5, 7, 3).astype(np.float32)
  np.testing.assert_array_equal(layers.MaxPool().apply({}, jnp.asarray(x)),
                                _np_pool(x, (2, 2), (2, 2)))
  np.testing.assert_allclose(layers.AvgPool().apply({}, jnp.asarray(x)),
                             _np_pool(x, (2, 2), (2, 2), op=np.mean), rtol=1e-6, atol=1e-6)
  # Non-square window, strides None -> the window; a 1-row remainder dropped.
  np.testing.assert_array_equal(layers.MaxPool((2, 3)).apply({}, jnp.asarray(x)),
                                _np_pool(x, (2, 3), (2, 3)))
  np.testing.assert_allclose(layers.AvgPool((3, 2)).apply({}, jnp.asarray(x)),
                             _np_pool(x, (3, 2), (3, 2), op=np.mean), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 1, (0, 1)), (3, 3, ((1, 0), (2, 1)))])
def test_pools_with_padding_or_overlap_against_a_loop(k, s, p):
  x = np.random.RandomState(7).randn(1, 7, 6, 2).astype(np.float32)
  pads = layers.resolve_padding(p, (7, 6), (k, k), (s, s), (1, 1))
  assert pads == {1: [(1, 1)] * 2, (0, 1): [(0, 0), (1, 1)]}.get(p, [(1, 0), (2, 1)])
  xj = jnp.asarray(x)
  np.testing.assert_array_equal(layers.MaxPool(k, s, padding=p).apply({}, xj),
                                _np_pool(x, (k, k), (s, s), pads))
  np.testing.assert_allclose(layers.AvgPool(k, s, padding=p).apply({}, xj),
                             _np_pool(x, (k, k), (s, s), pads, op=np.mean), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
      layers.AvgPool(k, s, padding=p, count_include_pad=True).apply({}, xj),
      _np_pool(x, (k, k), (s, s), pads, include_pad=True), rtol=1e-6, atol=1e-7)


def test_max_pool_tiles_only_where_the_tiles_cover_the_input():
  """The tiled CPU path (reduce_max) only for unpadded non-overlapping windows that cover
  the input exactly (tests/test_max_pool_gradient.py: the crop's gradient is miscompiled);
  AvgPool's tile view (reduce_sum) for any unpadded non-overlapping windows."""
  def prims(module, shape):
    return _prims(lambda x: module.apply({}, x), jnp.zeros(shape))
  assert "reduce_max" in prims(layers.MaxPool((2, 3)), (1, 4, 6, 1))
  for shape in [(1, 5, 6, 1), (1, 4, 7, 1), (1, 4, 8, 1)]:
    assert "reduce_window_max" in prims(layers.MaxPool((2, 3)), shape), shape
  assert "reduce_window_max" in prims(layers.MaxPool(2, padding=1), (1, 4, 4, 1))
  assert "reduce_window_max" in prims(layers.MaxPool(2, 1), (1, 4, 4, 1))
  assert "reduce_window_sum" not in prims(layers.AvgPool((2, 3)), (1, 5, 7, 1))
  assert "reduce_window_sum" in prims(layers.AvgPool(2, padding=1), (1, 4, 4, 1))
  assert "reduce_window_sum" in prims(layers.AvgPool(2, 1), (1, 4, 4, 1))


def test_flatten_keeps_the_batch_axis():
  x = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)
  y = layers.Flatten().apply({}, x)
  assert y.shape == (2, 60)
  np.testing.assert_array_equal(y, np.arange(120).reshape(2, 60))


def test_adaptive_avg_pool_windows_by_hand():
  # Rows 0..4 -> 3 outputs: torch's windows [0, 2), [1, 4), [3, 5) -> means 0.5, 2, 3.5.
  # Columns 0..5 -> 3 outputs (divisible): [0, 2), [2, 4), [4, 6) -> 0.5, 2.5, 4.5.
  # Columns 0..5 -> 4 outputs: [0, 2), [1, 3), [3, 5), [4, 6) -> 0.5, 1.5, 3.5, 4.5.
  rows = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 6), np.float32)
  cols = np.ones((5, 1), np.float32) * np.arange(6, dtype=np.float32)[None, :]
  x = jnp.asarray(np.stack([rows, cols], -1)[None])  # (1, 5, 6, 2)
  y = layers.adaptive_avg_pool(x, (3, 3))
  np.testing.assert_allclose(y[0, :, 0, 0], [0.5, 2.0, 3.5])
  np.testing.assert_allclose(y[0, 0, :, 1], [0.5, 2.5, 4.5])
  y = layers.adaptive_avg_pool(x, (3, 4))
  np.testing.assert_allclose(y[0, 0, :, 1], [0.5, 1.5, 3.5, 4.5])
  np.testing.assert_allclose(y[0, :, 0, 0], [0.5, 2.0, 3.5])
  y = layers.adaptive_avg_pool(x, 5)  # an int: both sides; rows unchanged
  np.testing.assert_allclose(y[0, 0, :, 1], [0.5, 1.5, 2.5, 3.5, 4.5])
  np.testing.assert_allclose(y[0, :, 0, 0], [0, 1, 2, 3, 4])
  # More outputs than inputs (torch allows it): 2 rows -> 3, windows [0, 1), [0, 2), [1, 2).
  y = layers.adaptive_avg_pool(x[:, :2, :2], (3, 2))
  np.testing.assert_allclose(y[0, :, 0, 0], [0.0, 0.5, 1.0])
  # Default output size 1: the global mean of each channel.
  np.testing.assert_allclose(layers.AdaptiveAvgPool().apply({}, x)[0, 0, 0], [2.0, 2.5])
  np.testing.assert_allclose(layers.AdaptiveAvgPool((2, 1)).apply({}, x)[0, :, 0, 0],
                             [1.0, 3.0])  # rows [0, 3), [2, 5)


@pytest.mark.parametrize("size,window,stride,pad,want", [
    (5, 2, 2, 1, (1, 1)),   # 4 windows would start at 6 = 5 + 1 (in the padding): 3 kept
    (6, 3, 2, 0, (0, 1)),   # ceil(3/2) + 1 = 3 windows, the last reads 1 padded pixel
    (7, 3, 2, 1, (1, 1)),   # 4 windows, the last starts at 6 < 8: kept
    (6, 2, 2, 0, (0, 0)),   # exact fit: nothing added
    (8, 3, 3, 1, (1, 1)),   # ceil(7/3) + 1 = 4, the 4th would start at 9 = 8 + 1: 3 kept
    (7, 2, 3, 0, (0, 1)),   # ceil(5/3) + 1 = 3, the 3rd starts at 6 < 7: kept, 1 pad
    (6, 3, 2, 1, (1, 2)),   # ceil(5/2) + 1 = 4, the 4th starts at 6 < 7: 2 high pads
    (5, 4, 1, 2, (2, 2)),   # 6 windows at stride 1, the last starts at 5 < 7
])
def test_ceil_mode_padding_by_hand(size, window, stride, pad, want):
  assert layers.ceil_mode_padding(size, window, stride, pad) == want


# ------------------------------------------------------------------------------- norm
def _np_lrn(x, size, alpha, beta, k):
  """Across-channel LRN as a loop: window [c - size//2, c + (size-1)//2], torch's padding."""
  c_all = x.shape[-1]
  out = np.empty(x.shape, np.float64)
  for c in range(c_all):
    lo, hi = max(0, c - size // 2), min(c_all, c + (size - 1) // 2 + 1)
    out[..., c] = x[..., c] / (k + alpha * np.sum(x[..., lo:hi].astype(np.float64) ** 2, -1)) ** beta
  return out


def test_local_response_norm_defaults_are_the_papers_constants():
  # Large activations, so that alpha * sum is not lost next to k.
  x = (np.random.RandomState(8).randn(2, 2, 2, 9) * 40).astype(np.float32)
  got = layers.LocalResponseNorm().apply({}, jnp.asarray(x))
  np.testing.assert_allclose(got, _np_lrn(x, 5, 1e-4, 0.75, 2.0), rtol=1e-5)


def test_local_response_norm_even_size_and_bfloat16():
  x = (np.random.RandomState(9).randn(1, 2, 3, 7) * 40).astype(np.float32)
  got = layers.LocalResponseNorm(4, 1e-3, 0.5, 1.0).apply({}, jnp.asarray(x))
  np.testing.assert_allclose(got, _np_lrn(x, 4, 1e-3, 0.5, 1.0), rtol=1e-5)
  xb = jnp.asarray(x, jnp.bfloat16)
  got = layers.LocalResponseNorm().apply({}, xb)
  assert got.dtype == jnp.bfloat16
  ref = _np_lrn(np.asarray(xb, np.float32), 5, 1e-4, 0.75, 2.0)
  np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=2e-2)


def test_dropout_rate_0_needs_no_rng_and_rate_1_has_zero_gradients():
  x = jnp.asarray(np.random.RandomState(10).uniform(1, 2, (4, 6)), jnp.float32)
  np.testing.assert_array_equal(layers.Dropout(0.0).apply({}, x, deterministic=False), x)
  np.testing.assert_array_equal(layers.Dropout(0.5, deterministic=True).apply({}, x), x)
  d = layers.Dropout(1.0)
  f = lambda x: d.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}).sum()  # noqa: E731
  assert float(f(x)) == 0.0
  np.testing.assert_array_equal(jax.grad(f)(x), np.zeros((4, 6)))  # not 0 * inf = NaN


def test_dropout_masks_do_not_depend_on_the_device_split():
  """With axis_name, each of D shards (vmap stands in for pmap's devices) keeps its slice
  of the global batch's mask: the same units as one device dropping the whole batch."""
  x = jnp.asarray(np.random.RandomState(11).uniform(1, 2, (8, 50)), jnp.float32)
  key = jax.random.key(3)
  whole = layers.Dropout(0.5).apply({}, x, deterministic=False, rngs={"dropout": key})
  shard = layers.Dropout(0.5, axis_name="d")
  for n_dev in (2, 4):
    split = jax.jit(jax.vmap(
        lambda xs: shard.apply({}, xs, deterministic=False, rngs={"dropout": key}),
        axis_name="d"))(x.reshape(n_dev, -1, 50))
    np.testing.assert_array_equal(split.reshape(8, 50), whole)
  kept = np.asarray(whole) != 0
  np.testing.assert_allclose(np.asarray(whole)[kept], np.asarray(x)[kept] * 2, rtol=1e-6)
  # Fewer features (3) than examples per shard (4): the global mask has 8 rows, not 2 x 3.
  x3 = x[:, :3]
  whole = layers.Dropout(0.5).apply({}, x3, deterministic=False, rngs={"dropout": key})
  split = jax.jit(jax.vmap(
      lambda xs: shard.apply({}, xs, deterministic=False, rngs={"dropout": key}),
      axis_name="d"))(x3.reshape(2, 4, 3))
  np.testing.assert_array_equal(split.reshape(8, 3), whole)


def test_batch_norm_epsilon_is_1e_5():
  # Variance 1e-6, below epsilon: y = (x - mean) / sqrt(var + 1e-5) is far from unit std.
  x = np.random.RandomState(12).randn(32, 2).astype(np.float32) * 1e-3
  v = layers.batch_norm(train=True).init(jax.random.key(0), jnp.asarray(x))
  y, _ = layers.batch_norm(train=True).apply(v, jnp.asarray(x), mutable=["batch_stats"])
  want = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
  np.testing.assert_allclose(y, want, rtol=1e-3, atol=1e-6)


def test_pool_same_and_full_padding_by_hand():
  # SAME, 3x3 stride 2 on 7 x 6: ceil(7/2) = 4 rows need 3*2 + 3 - 7 = 2 pads (1, 1);
  # ceil(6/2) = 3 columns need 2*2 + 3 - 6 = 1: (0, 1). FULL, 2x2 stride 1: (1, 1) each.
  x = np.random.RandomState(13).randn(1, 7, 6, 2).astype(np.float32)
  same = [(1, 1), (0, 1)]
  np.testing.assert_array_equal(layers.MaxPool(3, 2, padding="SAME").apply({}, jnp.asarray(x)),
                                _np_pool(x, (3, 3), (2, 2), same))
  np.testing.assert_allclose(layers.AvgPool(3, 2, padding="SAME").apply({}, jnp.asarray(x)),
                             _np_pool(x, (3, 3), (2, 2), same, op=np.mean), rtol=1e-6, atol=1e-6)
  full = layers.MaxPool(2, 1, padding="FULL").apply({}, jnp.asarray(x))
  assert full.shape == (1, 8, 7, 2)
  np.testing.assert_array_equal(full, _np_pool(x, (2, 2), (1, 1), [(1, 1), (1, 1)]))


def test_pool_size_errors_name_the_layer():
  for cls in (layers.MaxPool, layers.AvgPool):
    name = cls.__name__
    with pytest.raises(ValueError, match=rf"^{name}: input of spatial size \(2, 3\) is too small "
                                         r"for a kernel of \(3, 3\) \(dilation \(1, 1\)"):
      cls(3).apply({}, jnp.zeros((1, 2, 3, 1)))
    assert cls(3).apply({}, jnp.zeros((1, 3, 3, 1))).shape == (1, 1, 1, 1)  # an exact fit


def test_ceil_mode_padding_defaults_to_no_padding():
  assert layers.ceil_mode_padding(6, 3, 2) == (0, 1)
  assert layers.ceil_mode_padding(5, 2, 2) == (0, 1)  # ceil(3/2) + 1 = 3, the last at 4 < 5
