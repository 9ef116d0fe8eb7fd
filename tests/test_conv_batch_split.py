"""Conv2D's batch split: the same convolution as lax's, to float32 rounding, and used where measured.

The split (two convolutions of the batch's halves, which XLA:CPU runs on two threads) is
a reformulation for speed, so it must not change what a network computes: outputs and
both gradients are checked against one `lax.conv_general_dilated` over every padding,
stride, dilation and group the layer offers; the rule that turns it on is checked shape
by shape; and the traced program shows whether it was used.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_jax import layers, models
from cnn_jax.layers import conv as conv_module


def _reference(x, k, strides, padding, dilation, groups):
  return lax.conv_general_dilated(x, k, strides, padding, rhs_dilation=dilation,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=groups, precision=lax.Precision.HIGHEST)


def _conv_count(fn, *args):
  return sum(e.primitive.name == "conv_general_dilated" for e in jax.make_jaxpr(fn)(*args).eqns)


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups", [
    (3, 1, "SAME", 1, 1), (3, 2, "SAME", 1, 1), (1, 1, "VALID", 1, 1), (3, 1, "FULL", 2, 1),
    (5, 2, 2, 1, 1), (3, 1, ((0, 2), (1, 0)), 1, 2), (3, 1, "SAME", 1, 8)])
def test_split_equals_one_convolution_with_gradients(kernel, stride, padding, dilation, groups):
  rng = np.random.RandomState(kernel * 10 + stride)
  x = jnp.asarray(rng.randn(6, 9, 8, 8), jnp.float32)
  k = jnp.asarray(rng.randn(kernel, kernel, 8 // groups, 16), jnp.float32)

  def loss(module):
    def f(x, k):
      y = module.apply({"params": {"kernel": k}}, x)
      return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)))
    return f

  split = layers.Conv2D(16, kernel, stride, padding, dilation, groups, use_bias=False,
                        precision=lax.Precision.HIGHEST, batch_split=True)
  pads = layers.resolve_padding(padding, (9, 8), (kernel, kernel), (stride, stride),
                                (dilation, dilation))
  want = _reference(x, k, (stride, stride), pads, (dilation, dilation), groups)
  got = split.apply({"params": {"kernel": k}}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def ref_loss(x, k):
    y = _reference(x, k, (stride, stride), pads, (dilation, dilation), groups)
    return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)))

  gx, gk = jax.grad(loss(split), argnums=(0, 1))(x, k)
  rx, rk = jax.grad(ref_loss, argnums=(0, 1))(x, k)
  np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gk, rk, rtol=1e-4, atol=1e-4)
  assert _conv_count(split.apply, {"params": {"kernel": k}}, x) == 2


def test_rule_splits_small_maps_on_one_cpu_device(monkeypatch):
  monkeypatch.delenv("CNN_JAX_CONV_SPLIT", raising=False)
  want = conv_module.split_batch_wanted
  assert jax.default_backend() == "cpu"
  assert want((128, 16, 16, 32)) and want((128, 8, 8, 64)) and want((2, 4, 4, 32))
  assert not want((128, 12, 12, 16))    # mnist_cnn's second conv: thin, slower split
  assert want((128, 16, 15, 32))        # 240 pixels
  assert not want((128, 32, 32, 16))    # the kernel scales by itself there
  assert not want((128, 17, 16, 32))    # 272 pixels: one over
  assert not want((127, 8, 8, 64))      # odd batch
  assert not want((1, 8, 8, 64))        # inference on one image
  assert not want((128, 8, 8, 64), batch_split=False)
  assert want((128, 32, 32, 16), batch_split=True)
  assert not want((3, 32, 32, 16), batch_split=True)
  monkeypatch.setenv("CNN_JAX_CONV_SPLIT", "0")
  assert not want((128, 8, 8, 64))
  assert want((128, 8, 8, 64), batch_split=True)  # an explicit attribute wins
  monkeypatch.delenv("CNN_JAX_CONV_SPLIT")
  # A symbolic batch (jax.export with a polymorphic batch) is one convolution, not an error.
  b, = jax.export.symbolic_shape("b")
  assert not want((b, 8, 8, 64)) and not want((b, 8, 8, 64), batch_split=True)
  # With several local devices the batch axis is the sharded one: no split.
  monkeypatch.setattr(jax, "local_device_count", lambda: 8)
  assert not want((128, 8, 8, 64))


def test_conv2d_traces_the_rule(monkeypatch):
  monkeypatch.delenv("CNN_JAX_CONV_SPLIT", raising=False)
  for shape, convs in [((4, 8, 8, 32), 2), ((4, 32, 32, 32), 1), ((3, 8, 8, 32), 1),
                       ((4, 8, 8, 31), 1)]:
    x = jnp.zeros(shape)
    m = layers.Conv2D(4, 3, padding="SAME")
    params = m.init(jax.random.key(0), x)
    assert _conv_count(m.apply, params, x) == convs, shape
  monkeypatch.setenv("CNN_JAX_CONV_SPLIT", "0")
  x = jnp.zeros((4, 8, 8, 32))
  assert _conv_count(m.apply, m.init(jax.random.key(0), x), x) == 1


def _resnet20(batch):
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(batch, 32, 32, 3), jnp.float32)
  model = models.get_model("resnet20", num_classes=10)
  return model, x, jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def test_resnet20_splits_its_small_map_stages(monkeypatch):
  """ResNet-20 has 19 convolutions; 11 read maps of at most 16x16 (stage 2 after its
  first, strided one, and all of stage 3), so its forward pass traces 19 + 11 = 30."""
  model, x, variables = _resnet20(8)
  for setting, want in (("1", 30), ("0", 19)):
    monkeypatch.setenv("CNN_JAX_CONV_SPLIT", setting)
    assert _conv_count(lambda v: model.apply(v, x, train=False), variables) == want, setting


@pytest.mark.slow
def test_resnet20_step_same_with_and_without_split(monkeypatch):
  """A whole network's training loss and gradients are the same with the split and without."""
  model, x, _ = _resnet20(8)
  variables = model.init(jax.random.key(0), x, train=False)
  labels = jnp.asarray(np.random.RandomState(1).randint(0, 10, 8))

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])

  results = {}
  for setting in ("1", "0"):
    monkeypatch.setenv("CNN_JAX_CONV_SPLIT", setting)
    results[setting] = jax.value_and_grad(loss)(variables["params"])
  (l1, g1), (l0, g0) = results["1"], results["0"]
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
