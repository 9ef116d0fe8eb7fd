"""The test suite's XLA settings compute what a fully optimised XLA computes.

tests/conftest.py trades optimisation for compile time. `jax_disable_most_optimizations`
(xla_backend_optimization_level=0) was that trade until it turned out to miscompile the
gradient of conv -> batch norm -> relu -> max pool on XLA:CPU: kernel gradients 2-6% off
torch's and a float64 reference, so every in-process test that trained such a net trained
on wrong gradients. This test runs under whatever conftest sets and fails on that setting.
"""
import numpy as np
import pytest

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers


class ConvBnReluPool(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(4, (3, 3), padding="VALID", name="conv")(x)
    x = layers.batch_norm(train, name="bn")(x)
    return layers.MaxPool(2)(nn.relu(x))


def test_conv_bn_relu_maxpool_gradient_equals_torchs():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  x = np.asarray(jax.random.normal(jax.random.key(0), (8, 28, 28, 1)), np.float32)
  model = ConvBnReluPool()
  variables = model.init(jax.random.key(1), x, train=False)

  def loss(params):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.sum(out, axis=(1, 2)) ** 2)

  grads = jax.jit(jax.grad(loss))(variables["params"])

  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  kernel = torch.tensor(p["conv"]["kernel"].transpose(3, 2, 0, 1), requires_grad=True)
  bias = torch.tensor(p["conv"]["bias"], requires_grad=True)
  scale = torch.tensor(p["bn"]["scale"], requires_grad=True)
  shift = torch.tensor(p["bn"]["bias"], requires_grad=True)
  y = F.conv2d(torch.tensor(x.transpose(0, 3, 1, 2)), kernel, bias)
  y = F.batch_norm(y, None, None, scale, shift, training=True, eps=1e-5)
  y = F.max_pool2d(F.relu(y), 2)
  (y.sum(dim=(2, 3)) ** 2).sum().backward()

  # float32 summation order over 8x26x26 positions: ~1e-5 of the largest gradient; the
  # level-0 miscompile was 0.13 of it (6997 of 55112).
  for ours, torchs in [(grads["conv"]["kernel"], kernel.grad.numpy().transpose(2, 3, 1, 0)),
                       (grads["bn"]["scale"], scale.grad.numpy()),
                       (grads["bn"]["bias"], shift.grad.numpy())]:
    np.testing.assert_allclose(np.asarray(ours), torchs, rtol=0,
                               atol=2e-5 * np.abs(torchs).max())
