"""Normalization and regularization: local response norm, batch norm, dropout.

`batch_norm` is the one BatchNorm construction every zoo model uses (torch's momentum,
pmap-aware statistics); `Dropout` draws masks independent of the device count.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


class LocalResponseNorm(nn.Module):
  """Local response normalization across channels (Krizhevsky et al. 2012, sec. 3.3).

  b_c = a_c / (k + alpha * sum_{c' in window(c)} a_c'^2) ** beta, window of `size`
  channels centred on c. With `alpha_per_size=True` alpha is divided by `size`, as
  PyTorch and Caffe do; the paper's constants (k=2, n=5, alpha=1e-4, beta=0.75) use
  the paper's formula. The denominator is computed in at least float32 and the output
  has x's dtype: in bfloat16 (8 significant bits, a spacing of 1/64 at k=2) most of
  alpha * sum would be rounded away.
  """
  size: int = 5
  alpha: float = 1e-4
  beta: float = 0.75
  k: float = 2.0
  alpha_per_size: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    sq = jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32)))
    half = self.size // 2
    pads = [(0, 0)] * (x.ndim - 1) + [(half, self.size - 1 - half)]
    window = (1,) * (x.ndim - 1) + (self.size,)
    summed = lax.reduce_window(sq, 0.0, lax.add, window, (1,) * x.ndim, pads)
    alpha = self.alpha / self.size if self.alpha_per_size else self.alpha
    return x / jnp.power(self.k + alpha * summed, self.beta).astype(x.dtype)


class Dropout(nn.Module):
  """Inverted dropout whose masks do not depend on how the batch is split over devices.

  Under `jax.pmap` with `axis_name`, each device draws the mask of the *global* batch
  and keeps its own slice, so 8 devices drop exactly the units 1 device would (the
  jit / Mesh path gets this for free). Without axis_name it is `flax.linen.Dropout`.
  """
  rate: float
  deterministic: Optional[bool] = None
  axis_name: Optional[str] = None
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: Array, deterministic: Optional[bool] = None) -> Array:
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep = 1.0 - self.rate
    rng = self.make_rng(self.rng_collection)
    if self.axis_name is None:
      mask = jax.random.bernoulli(rng, keep, x.shape)
    else:
      n_dev = lax.psum(1, self.axis_name)
      idx = lax.axis_index(self.axis_name)
      full = jax.random.bernoulli(rng, keep, (n_dev * x.shape[0],) + x.shape[1:])
      mask = lax.dynamic_slice_in_dim(full, idx * x.shape[0], x.shape[0])
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def batch_norm(train: bool, axis_name: Optional[str] = None, epsilon: float = 1e-5,
               name: Optional[str] = None, momentum: float = 0.9, **kwargs: Any) -> nn.BatchNorm:
  """The zoo's batch norm, the one place a model builds one: batch statistics when
  training, running averages otherwise.

  Running averages move as torch's (momentum 0.1, i.e. flax's 0.9, unless `momentum`
  says otherwise); under pmap the batch statistics are averaged over `axis_name`, so every
  device normalizes by the moments of the global batch, as one device would. A model with
  batch norm therefore takes an `axis_name` field and passes it here: under
  parallel="pmap" `training.setup.build_model` refuses one whose batch norm has none.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                      axis_name=axis_name, name=name, **kwargs)


# flax's class, for isinstance checks (training.setup's pmap check); build with batch_norm.
BatchNorm = nn.BatchNorm
