"""A fast CIFAR-10 network in the style of Keller Jordan's airbench (2024).

airbench94 (94.01% on CIFAR-10 in ~10 epochs on one A100) is a plain VGG-like net: a
2x2 stem convolution, three conv groups (conv - max-pool - BN - GELU - conv - BN - GELU)
of widths 64 / 256 / 256, a global max-pool and a bias-free linear head whose logits are
scaled by 1/9. Its initialisation is half of what makes it fast (Jordan's ablations:
94% in 35 epochs without it, 18 with it), and each part is a switch here:

* `whitened_stem`: the stem's 24 filters are the 12 eigenvectors of the training images'
  2x2-patch second moments, each scaled by 1 / sqrt(eigenvalue + 5e-4), and their
  negatives (so the GELU after it keeps both signs). They need data, so `data_init`
  computes them from training images and the trainer puts them in place at
  initialisation (training/setup.py); the experiment freezes them (`config.freeze`).
* `dirac`: each conv's first `in` filters start as the identity (an implicit residual),
  the rest from torch's default uniform init, the scale airbench's learning rate is
  tuned for.
* `bn_scale=False`: batch norm without a learned scale, as airbench (its biases learn).
* `bn_momentum`: the running averages' decay per step (flax's convention, torch's
  1 - momentum). airbench94's BatchNorm(momentum=0.6) passes 1 - 0.6 to torch, i.e. a
  decay of 0.6; its ablations without lookahead use 0.9.

The switches default off and the decay to airbench94's 0.6, so `airbench` alone is the
plain trained network; experiments/cifar10_fast.py turns them on. `widths` trades accuracy for speed.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import layers
from cnn_jax.layers.conv import default_kernel_init
from cnn_jax.models import register

# torch.nn.Conv2d's default init (kaiming_uniform with a = sqrt(5)): U(+-1 / sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def dirac_init(base: Callable[..., jax.Array] = torch_default_init) -> Callable[..., jax.Array]:
  """HWIO init: `base`, then filters 0..min(in, out)-1 set to the identity (torch.nn.init.dirac_)."""
  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    kh, kw, cin, cout = shape
    n = min(cin, cout)
    kernel = base(key, shape, dtype).at[:, :, :, :n].set(0)
    return kernel.at[kh // 2, kw // 2, jnp.arange(n), jnp.arange(n)].set(1)
  return init


def whitening_kernel(images: np.ndarray, patch: int = 2, eps: float = 5e-4) -> np.ndarray:
  """airbench's patch-whitening filters, HWIO (patch, patch, C, 2 * patch * patch * C).

  The eigenvectors of the (uncentred) second-moment matrix of every patch x patch window
  of `images` (NHWC, already normalised), largest eigenvalue first, each divided by
  sqrt(eigenvalue + eps); then the same filters negated. Convolved with the images, the
  first half gives channels with unit second moments (less eps) and none between them.
  """
  x = np.asarray(images, np.float64)
  c = x.shape[-1]
  windows = np.lib.stride_tricks.sliding_window_view(x, (patch, patch), axis=(1, 2))
  flat = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, patch * patch * c)  # (kh, kw, c)
  eigenvalues, eigenvectors = np.linalg.eigh(flat.T @ flat / len(flat))
  filters = eigenvectors[:, ::-1] / np.sqrt(eigenvalues[::-1] + eps)
  kernel = np.concatenate([filters, -filters], axis=1)
  return kernel.reshape(patch, patch, c, 2 * patch * patch * c).astype(np.float32)


class ConvGroup(nn.Module):
  features: int
  bn_momentum: float = 0.6
  bn_scale: bool = True
  dirac: bool = False
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32  # computation dtype; parameters, BN statistics stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dt = self.dtype
    init = dirac_init() if self.dirac else default_kernel_init
    for i, pool in ((1, True), (2, False)):
      x = layers.Conv2D(self.features, 3, padding="SAME", use_bias=False, dtype=dt,
                        kernel_init=init, name=f"conv{i}")(x)
      if pool:
        x = layers.MaxPool(2, name="pool")(x)
      x = layers.batch_norm(train, self.axis_name, epsilon=1e-12, momentum=self.bn_momentum,
                            use_scale=self.bn_scale, dtype=dt, name=f"bn{i}")(x)
      x = nn.gelu(x, approximate=False)
    return x


@register("airbench", (32, 32, 3), "airbench94-style: 2x2 stem, 3 conv groups 64/256/256, max-pool head")
class Airbench(nn.Module):
  num_classes: int = 10
  widths: Sequence[int] = (64, 256, 256)
  stem_width: int = 24
  logit_scale: float = 1 / 9
  whitened_stem: bool = False
  dirac: bool = False
  bn_scale: bool = True
  bn_momentum: float = 0.6
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  def data_init(self, images: np.ndarray) -> dict[tuple[str, ...], np.ndarray]:
    """Parameters computed from normalised training images (NHWC), by path: the
    whitened stem's kernel, or nothing."""
    if not self.whitened_stem:
      return {}
    kernel = whitening_kernel(images, patch=2)
    if kernel.shape[-1] != self.stem_width:
      raise ValueError(f"airbench: a whitened 2x2 stem over {images.shape[-1]} channels has "
                       f"{kernel.shape[-1]} filters; set model_kwargs.stem_width="
                       f"{kernel.shape[-1]} (got {self.stem_width})")
    return {("stem", "kernel"): kernel}

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype
    x = nn.gelu(layers.Conv2D(self.stem_width, 2, padding="VALID", dtype=dt, name="stem")(x),
                approximate=False)
    for i, w in enumerate(self.widths):
      x = ConvGroup(w, self.bn_momentum, self.bn_scale, self.dirac, axis_name=self.axis_name,
                    dtype=dt, name=f"group{i + 1}")(x, train)
    x = x.max(axis=(1, 2))  # global max-pool
    logits = nn.Dense(self.num_classes, use_bias=False, dtype=dt, name="head")(x)
    return jnp.asarray(logits, jnp.float32) * self.logit_scale
