"""Layers reproduce the course's worked examples exactly, and match scipy / numpy."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from scipy import signal

from cnn_jax import layers
from cnn_jax.layers import pooling


def conv(x2d, k2d, **kw):
  """Single-channel helper: apply Conv2D with the given kernel and no bias."""
  x = jnp.asarray(x2d, jnp.float32)[None, :, :, None]
  k = jnp.asarray(k2d, jnp.float32)[:, :, None, None]
  m = layers.Conv2D(1, k.shape[:2], use_bias=False, **kw)
  return np.asarray(m.apply({"params": {"kernel": k}}, x))[0, :, :, 0]


def test_sharpen_kernel_top_left_is_114():
  x = [[60, 113, 56, 139, 85], [73, 121, 54, 84, 128], [131, 99, 70, 129, 127],
       [80, 57, 115, 69, 134], [104, 126, 123, 95, 130]]
  k = [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]
  out = conv(x, k, padding=1)
  assert out.shape == (5, 5)
  assert out[0, 0] == 114
  # The SAME padding of a 3x3 kernel at stride 1 is the same zero padding of 1.
  np.testing.assert_array_equal(conv(x, k, padding="SAME"), out)


def test_x_kernel_valid():
  x = [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]]
  k = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
  np.testing.assert_array_equal(conv(x, k, padding="VALID"), [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


def test_vertical_edge_detector():
  x = np.zeros((6, 6)); x[:, :3] = 10
  k = [[1, 0, -1]] * 3
  out = conv(x, k)
  np.testing.assert_array_equal(out, np.tile([0, 30, 30, 0], (4, 1)))


def pool(cls, x2d, **kw):
  x = jnp.asarray(x2d, jnp.float32)[None, :, :, None]
  return np.asarray(cls(**kw).apply({}, x))[0, :, :, 0]


def test_max_and_average_pooling():
  np.testing.assert_array_equal(
      pool(layers.MaxPool, [[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]], window=2),
      [[6, 8], [3, 4]])
  x = [[3, 13, 17, 11], [5, 3, 1, 23], [7, 1, 2, 3], [11, 17, 1, 4]]
  np.testing.assert_array_equal(pool(layers.MaxPool, x, window=2, strides=2), [[13, 23], [17, 4]])
  np.testing.assert_array_equal(pool(layers.AvgPool, x, window=2), [[6, 13], [9, 2.5]])


def test_overlapping_and_global_pooling():
  x = np.arange(49, dtype=np.float32).reshape(7, 7)
  out = pool(layers.MaxPool, x, window=3, strides=2)
  assert out.shape == (3, 3)
  np.testing.assert_array_equal(out, x[2::2, 2::2])  # increasing ramp: max is bottom-right
  x4 = jnp.asarray(np.random.RandomState(0).randn(2, 5, 5, 3), jnp.float32)
  np.testing.assert_allclose(layers.GlobalAvgPool().apply({}, x4), x4.mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_array_equal(layers.GlobalMaxPool().apply({}, x4), x4.max(axis=(1, 2)))


def test_avg_pool_padding_excludes_zeros():
  x = jnp.ones((1, 3, 3, 1))
  out = layers.AvgPool(3, strides=1, padding=1).apply({}, x)
  np.testing.assert_allclose(out, 1.0)  # padded zeros are not averaged in
  out_incl = layers.AvgPool(3, strides=1, padding=1, count_include_pad=True).apply({}, x)
  assert float(out_incl[0, 0, 0, 0]) == pytest.approx(4 / 9)


def _torch_nchw(x):
  torch = pytest.importorskip("torch")
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("size,k,s,p,drops", [(5, 2, 2, 1, True), (4, 2, 3, 1, True),
                                              (6, 2, 3, 0, True), (8, 3, 3, 1, True),
                                              (7, 3, 2, 1, False)])
def test_ceil_mode_pools_drop_a_last_window_that_starts_in_the_padding(size, k, s, p, drops):
  """MaxPool / AvgPool over `ceil_mode_padding` equal torch's ceil_mode=True pools. The
  first four cases are those where rounding up would add a window starting in the right
  padding, which torch drops (its rule: every window starts inside the input or the left
  padding); the last one keeps its rounded-up window."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  x = np.random.RandomState(size * 10 + k).randn(2, size, size, 3).astype(np.float32)
  pads = [layers.ceil_mode_padding(size, k, s, p)] * 2
  rounded_up = -(-(size + 2 * p - k) // s) + 1
  last_start = (rounded_up - 1) * s  # in padded coordinates; the input ends at size + p
  assert (last_start >= size + p) == drops
  want_out = rounded_up - drops
  ours = layers.MaxPool(k, s, padding=pads).apply({}, jnp.asarray(x))
  ref = F.max_pool2d(_torch_nchw(x), k, s, p, ceil_mode=True).permute(0, 2, 3, 1).numpy()
  assert ours.shape[1:3] == (want_out, want_out)
  np.testing.assert_array_equal(ours, ref)
  # Average: torch's count_include_pad=False divides by the pixels inside the input.
  ours = layers.AvgPool(k, s, padding=pads).apply({}, jnp.asarray(x))
  ref = F.avg_pool2d(_torch_nchw(x), k, s, p, ceil_mode=True,
                     count_include_pad=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avg_pool_padding_matches_torch(count_include_pad):
  """AvgPool(padding=p, count_include_pad) equals torch's avg_pool2d with the same flag:
  True divides every window by k*k, padded zeros included; False by the input pixels."""
  torch = pytest.importorskip("torch")
  x = np.random.RandomState(3).randn(2, 7, 6, 3).astype(np.float32)
  for k, s, p in [(3, 2, 1), (3, 1, 1), (4, 3, 2)]:
    ours = layers.AvgPool(k, s, padding=p, count_include_pad=count_include_pad).apply(
        {}, jnp.asarray(x))
    ref = torch.nn.functional.avg_pool2d(_torch_nchw(x), k, s, p,
                                         count_include_pad=count_include_pad)
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6,
                               err_msg=f"k={k} s={s} p={p}")


@pytest.mark.parametrize("W,K,P,S,D,expected", [
    (32, 5, 0, 1, 1, 28), (7, 3, 1, 3, 1, 3), (227, 11, 0, 4, 1, 55),
    (28, 3, 0, 1, 2, 24), (5, 3, 1, 2, 1, 3),
])
def test_conv_output_size(W, K, P, S, D, expected):
  assert layers.conv_output_size(W, K, P, S, D) == expected


def test_conv_output_size_matches_layer_and_rejects_misfit():
  for W, K, P, S, D in itertools.product([7, 10, 32], [1, 3, 5], [0, 1, 2], [1, 2, 3], [1, 2]):
    if W + 2 * P < D * (K - 1) + 1:
      with pytest.raises(ValueError):
        layers.conv_output_size(W, K, P, S, D)
      continue
    m = layers.Conv2D(2, K, strides=S, padding=P, dilation=D)
    y = jax.eval_shape(lambda x: m.init_with_output(jax.random.key(0), x)[0],
                       jax.ShapeDtypeStruct((1, W, W, 3), jnp.float32))
    assert y.shape[1] == layers.conv_output_size(W, K, P, S, D)


def test_shape_error_names_the_layer():
  m = layers.Conv2D(4, 5, name="conv_big")
  with pytest.raises(ValueError, match="conv_big.*too small"):
    m.init(jax.random.key(0), jnp.zeros((1, 3, 3, 1)))
  with pytest.raises(ValueError, match="rank 4"):
    layers.Conv2D(4, 3).init(jax.random.key(0), jnp.zeros((3, 3, 1)))


def reference_conv(x, k, stride, pad, dilation, groups):
  """Independent NHWC/HWIO convolution built from scipy.signal.correlate2d."""
  (pt, pb), (pl, pr) = pad
  xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  kh, kw, cin_g, cout = k.shape
  kd = np.zeros(((kh - 1) * dilation + 1, (kw - 1) * dilation + 1, cin_g, cout))
  kd[::dilation, ::dilation] = k
  cout_g = cout // groups
  outs = []
  for n in range(x.shape[0]):
    chans = []
    for o in range(cout):
      g = o // cout_g
      acc = sum(signal.correlate2d(xp[n, :, :, g * cin_g + c], kd[:, :, c, o], mode="valid")
                for c in range(cin_g))
      chans.append(acc[::stride, ::stride])
    outs.append(np.stack(chans, -1))
  return np.stack(outs)


def expected_pads(padding, input_hw, kernel, stride, dilation):
  """(low, high) pads written out here, not taken from `layers.resolve_padding` (the code
  under test). SAME as TensorFlow: output ceil(W / S), an odd total's extra pixel at the end."""
  eff = [dilation * (k - 1) + 1 for k in kernel]
  if padding == "VALID":
    return [(0, 0), (0, 0)]
  if padding == "FULL":
    return [(e - 1, e - 1) for e in eff]
  if padding == "SAME":
    totals = [max((-(-w // stride) - 1) * stride + e - w, 0) for w, e in zip(input_hw, eff)]
    return [(t // 2, t - t // 2) for t in totals]
  if isinstance(padding, int):
    return [(padding, padding)] * 2
  return [tuple(p) for p in padding]


@pytest.mark.parametrize("padding,stride,dilation,groups", [
    (p, s, d, g) for p in ["VALID", "SAME", "FULL", 2, ((1, 0), (0, 2))]
    for s in [1, 2] for d in [1, 2] for g in [1, 2]])
def test_conv_parity_with_scipy(padding, stride, dilation, groups):
  rng = np.random.RandomState(hash((str(padding), stride, dilation, groups)) % 2**31)
  x = rng.randn(2, 9, 8, 4).astype(np.float32)
  m = layers.Conv2D(6, (3, 2), strides=stride, padding=padding, dilation=dilation,
                    feature_group_count=groups)
  params = m.init(jax.random.key(0), jnp.asarray(x))
  y = np.asarray(m.apply(params, jnp.asarray(x)))
  k = np.asarray(params["params"]["kernel"], np.float64)
  b = np.asarray(params["params"]["bias"])
  pads = expected_pads(padding, x.shape[1:3], (3, 2), stride, dilation)
  ref = reference_conv(x.astype(np.float64), k, stride, pads, dilation, groups) + b
  assert y.shape == ref.shape
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_same_padding_matches_lax_same():
  """Conv2D(padding="SAME") equals XLA's own SAME (`lax.conv_general_dilated(...,
  "SAME")`), an independent reference, over kernels 2-5, strides 1 and 2, dilations 1 and
  2, odd and even inputs; many of these have an odd pad total, whose extra pixel goes at
  the end (bottom / right), as in TensorFlow."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(1, 7, 8, 2), jnp.float32)  # odd height, even width
  odd_totals = 0
  for k, s, d in itertools.product([2, 3, 4, 5], [1, 2], [1, 2]):
    kernel = jnp.asarray(rng.randn(k, k, 2, 3), jnp.float32)
    m = layers.Conv2D(3, k, strides=s, padding="SAME", dilation=d, use_bias=False)
    got = m.apply({"params": {"kernel": kernel}}, x)
    want = lax.conv_general_dilated(x, kernel, (s, s), "SAME", rhs_dilation=(d, d),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)
    assert got.shape == want.shape, (k, s, d)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"k={k} s={s} d={d}")
    odd_totals += sum(t % 2 for t in (sum(p) for p in layers.resolve_padding(
        "SAME", (7, 8), (k, k), (s, s), (d, d))))
  assert odd_totals >= 8  # the cases where a low / high swap shows
  # Hand-worked: a 2-wide kernel at stride 1 pads one pixel, after the input.
  assert layers.resolve_padding("SAME", (7, 8), (2, 2), (1, 1), (1, 1)) == [(0, 1), (0, 1)]
  # 4-wide at stride 2 on 7 pixels: ceil(7/2) = 4 outputs need 3*2 + 4 - 7 = 3 pads: (1, 2).
  assert layers.resolve_padding("SAME", (7,), (4,), (2,), (1,)) == [(1, 2)]


def test_full_and_same_padding_sizes():
  x = jnp.zeros((1, 10, 10, 1))
  for pad, stride, out in [("FULL", 1, 14), ("SAME", 1, 10), ("SAME", 3, 4), ("VALID", 1, 6)]:
    m = layers.Conv2D(1, 5, strides=stride, padding=pad)
    assert m.init_with_output(jax.random.key(0), x)[0].shape[1] == out, pad


def test_activations_by_value():
  x = jnp.array([-2.0, 0.0, 3.0])
  np.testing.assert_allclose(layers.get_activation("relu")(x), [0, 0, 3])
  np.testing.assert_allclose(layers.get_activation("leaky_relu")(x), [-0.02, 0, 3], rtol=1e-6)
  np.testing.assert_allclose(layers.get_activation("elu")(x), [np.exp(-2) - 1, 0, 3], rtol=1e-6)
  np.testing.assert_allclose(layers.get_activation("sigmoid")(x), 1 / (1 + np.exp(-np.array([-2., 0, 3]))), rtol=1e-6)
  np.testing.assert_allclose(layers.get_activation("tanh")(x), np.tanh([-2., 0, 3]), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown activation 'relu6x'"):
    layers.get_activation("relu6x")


def test_maxout():
  x = jnp.array([[1.0, 5.0, -1.0, -3.0, 2.0, 2.5]])
  np.testing.assert_array_equal(layers.maxout(x, 2), [[5.0, -1.0, 2.5]])
  np.testing.assert_array_equal(layers.maxout(x, 3), [[5.0, 2.5]])
  with pytest.raises(ValueError):
    layers.maxout(x, 4)
  m = layers.Maxout(features=3, pieces=4)
  v = m.init(jax.random.key(0), jnp.ones((2, 5)))
  assert m.apply(v, jnp.ones((2, 5))).shape == (2, 3)


def test_local_response_norm_against_loop():
  rng = np.random.RandomState(0)
  x = rng.randn(2, 3, 3, 7).astype(np.float32) * 3
  n, k, alpha, beta = 5, 2.0, 1e-4, 0.75
  ref = np.empty_like(x)
  for c in range(7):
    lo, hi = max(0, c - n // 2), min(7, c + n // 2 + 1)
    ref[..., c] = x[..., c] / (k + alpha * np.sum(x[..., lo:hi] ** 2, -1)) ** beta
  out = layers.LocalResponseNorm(size=n, alpha=alpha, beta=beta, k=k).apply({}, jnp.asarray(x))
  np.testing.assert_allclose(out, ref, rtol=1e-5)
  # PyTorch / Caffe scale alpha by 1/size.
  out_t = layers.LocalResponseNorm(n, alpha * n, beta, k, alpha_per_size=True).apply({}, jnp.asarray(x))
  np.testing.assert_allclose(out_t, ref, rtol=1e-5)


def test_dropout_train_flag():
  x = jnp.asarray(np.random.RandomState(0).uniform(1, 2, (64, 500)), jnp.float32)
  rate = 0.3
  d = layers.Dropout(rate)
  np.testing.assert_array_equal(d.apply({}, x, deterministic=True), x)
  y = np.asarray(d.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
  kept = y != 0
  # 32,000 Bernoulli(0.7) draws: the kept fraction is within 0.01 of 0.7 (4 sigma).
  assert abs(kept.mean() - (1 - rate)) < 0.01
  # Inverted dropout: kept units are scaled by 1 / (1 - rate), so the mean is unchanged.
  np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
  y2 = d.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert not np.array_equal(y, y2)  # a fresh mask per key


def test_batch_norm_train_flag():
  """layers.batch_norm: train=True normalizes with the batch and moves the running stats
  by torch's momentum 0.1; train=False normalizes with the running stats."""
  rs = np.random.RandomState(1)
  xb = jnp.asarray(rs.randn(64, 3) * 4 + 2, jnp.float32)
  v = layers.batch_norm(train=True).init(jax.random.key(0), xb)
  y, upd = layers.batch_norm(train=True).apply(v, xb, mutable=["batch_stats"])
  np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(y.std(0), 1, atol=1e-3)
  stats = upd["batch_stats"]
  np.testing.assert_allclose(stats["mean"], 0.1 * xb.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * xb.var(0), rtol=1e-5)
  # Inference: (x - running mean) / sqrt(running var + eps) * scale + bias.
  params = {"scale": jnp.array([1.0, 2.0, 0.5]), "bias": jnp.array([0.0, -1.0, 3.0])}
  xt = jnp.asarray(rs.randn(5, 3), jnp.float32)
  out = layers.batch_norm(train=False).apply({"params": params, "batch_stats": stats}, xt)
  want = ((np.asarray(xt) - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
          * np.asarray(params["scale"]) + np.asarray(params["bias"]))
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  # ... and leaves the running statistics alone.
  _, upd = layers.batch_norm(train=False).apply({"params": params, "batch_stats": stats}, xt,
                                                 mutable=["batch_stats"])
  for k in ("mean", "var"):
    np.testing.assert_array_equal(upd["batch_stats"][k], stats[k])


@pytest.mark.parametrize("size,window", [(12, 2), (13, 2), (9, 3), (7, 2)])
def test_max_pool_paths_agree(size, window):
  """The CPU fast path (max over a tile view) and reduce_window: same values, same grads."""
  x = jnp.asarray(np.random.RandomState(size).randn(2, size, size + 1, 3), jnp.float32)
  win = (window, window)
  tiled = lambda x: pooling._max_pool_tiled(x, win)  # noqa: E731
  rw = lambda x: pooling._max_pool_reduce_window(x, win, win, [(0, 0), (0, 0)])  # noqa: E731
  np.testing.assert_array_equal(tiled(x), rw(x))
  np.testing.assert_array_equal(rw(x), nn.max_pool(x, win, win))
  # Without ties both gradients route to the same (unique) maxima.
  w = jnp.asarray(np.random.RandomState(1).randn(*rw(x).shape), jnp.float32)
  g = jax.grad(lambda x: (tiled(x) * w).sum())(x)
  g_ref = jax.grad(lambda x: (rw(x) * w).sum())(x)
  np.testing.assert_array_equal(g, g_ref)
  np.testing.assert_allclose(layers.AvgPool(window).apply({}, x),
                             nn.avg_pool(x, win, win), rtol=1e-6)


def _primitives(fn, *args):
  return {e.primitive.name for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


def test_max_pool_tiles_only_on_cpu(monkeypatch):
  """select_and_scatter is slow only on XLA:CPU; elsewhere MaxPool keeps reduce_window."""
  x = jnp.asarray(np.random.RandomState(0).randn(1, 8, 8, 2), jnp.float32)
  pool = layers.MaxPool(2)
  assert jax.default_backend() == "cpu"
  on_cpu = _primitives(lambda x: pool.apply({}, x), x)
  assert "reduce_max" in on_cpu and "reduce_window_max" not in on_cpu
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  on_gpu = _primitives(lambda x: pool.apply({}, x), x)
  assert "reduce_window_max" in on_gpu and "reduce_max" not in on_gpu
  np.testing.assert_array_equal(pool.apply({}, x), nn.max_pool(x, (2, 2), (2, 2)))
  # Overlapping windows never tile.
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert "reduce_window_max" in _primitives(lambda x: layers.MaxPool(3, 2).apply({}, x), x)
