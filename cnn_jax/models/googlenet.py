"""GoogLeNet / Inception v1 (Szegedy et al. 2014), torchvision's layout.

Every conv is torchvision's BasicConv2d: conv without bias, batch norm (eps 0.001),
relu. As in torchvision, the "5x5" branch of each inception block uses a 3x3 kernel (a
known quirk of the weights torchvision ported), and the max pools round up (ceil_mode).
6,624,904 parameters without the auxiliary heads, 13,004,888 with them.

torchvision's `transform_input` (re-normalizing ImageNet-normalized input to the
original Inception preprocessing) is not part of the model: feed whatever
normalization the weights were trained with.

With `aux_logits=True` the two auxiliary classifiers (after inception4a and 4d) are
built, and in training mode the model returns (logits, aux1_logits, aux2_logits).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register


class BasicConv(nn.Module):
  """conv (no bias) -> BN(eps=1e-3) -> relu, named conv / bn like torchvision."""
  features: int
  kernel_size: int = 1
  strides: int = 1
  padding: int = 0
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = layers.Conv2D(self.features, self.kernel_size, strides=self.strides,
                      padding=self.padding, use_bias=False, dtype=self.dtype, name="conv")(x)
    x = layers.batch_norm(train, self.axis_name, epsilon=1e-3, dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


def _ceil_max_pool(x: jax.Array, window: int, stride: int, pad: int = 0) -> jax.Array:
  pads = [layers.ceil_mode_padding(s, window, stride, pad) for s in x.shape[1:3]]
  return nn.max_pool(x, (window, window), (stride, stride), pads)


class Inception(nn.Module):
  """Four parallel branches concatenated on channels: 1x1 | 1x1-3x3 | 1x1-3x3 | pool-1x1."""
  ch1x1: int
  ch3x3red: int
  ch3x3: int
  ch5x5red: int
  ch5x5: int
  pool_proj: int
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    def conv(features: int, k: int, name: str) -> BasicConv:
      return BasicConv(features, k, padding=k // 2, axis_name=self.axis_name, dtype=self.dtype,
                       name=name)

    b1 = conv(self.ch1x1, 1, "branch1")(x, train)
    b2 = conv(self.ch3x3red, 1, "branch2_0")(x, train)
    b2 = conv(self.ch3x3, 3, "branch2_1")(b2, train)
    b3 = conv(self.ch5x5red, 1, "branch3_0")(x, train)
    b3 = conv(self.ch5x5, 3, "branch3_1")(b3, train)  # 3x3, as torchvision
    b4 = _ceil_max_pool(x, 3, 1, 1)
    b4 = conv(self.pool_proj, 1, "branch4_1")(b4, train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
  """Auxiliary classifier: 4x4 avg pool, 1x1 conv 128, FC 1024, dropout 0.7, FC."""
  num_classes: int
  dropout_rate: float = 0.7
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = layers.AdaptiveAvgPool(4)(x)
    x = BasicConv(128, 1, axis_name=self.axis_name, dtype=self.dtype, name="conv")(x, train)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(1024, dtype=self.dtype, name="fc1")(x))
    x = layers.Dropout(self.dropout_rate, deterministic=not train, axis_name=self.axis_name)(x)
    return jnp.asarray(nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x), jnp.float32)


# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) per block, from the paper's Table 1.
INCEPTION_CONFIG = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}


@register("googlenet", (224, 224, 3), "GoogLeNet / Inception v1, torchvision layout (BN)")
class GoogLeNet(nn.Module):
  num_classes: int = 1000
  aux_logits: bool = False
  dropout_rate: float = 0.2
  include_top: bool = True
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> Union[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    ax, dt = self.axis_name, self.dtype
    x = jnp.asarray(x, dt)
    conv = functools.partial(BasicConv, axis_name=ax, dtype=dt)

    def inception(name: str) -> Inception:
      return Inception(*INCEPTION_CONFIG[name], axis_name=ax, dtype=dt, name=name)

    def aux(name: str, x: jax.Array) -> jax.Array:
      return InceptionAux(self.num_classes, axis_name=ax, dtype=dt, name=name)(x, train)

    x = conv(64, 7, strides=2, padding=3, name="conv1")(x, train)                       # 112
    x = _ceil_max_pool(x, 3, 2)                                                         # 56
    x = conv(64, 1, name="conv2")(x, train)
    x = conv(192, 3, padding=1, name="conv3")(x, train)
    x = _ceil_max_pool(x, 3, 2)                                                         # 28
    x = inception("inception3a")(x, train)                                              # 256
    x = inception("inception3b")(x, train)                                              # 480
    x = _ceil_max_pool(x, 3, 2)                                                         # 14
    x = inception("inception4a")(x, train)                                              # 512
    want_aux = self.aux_logits and (train or self.is_initializing())
    aux1 = aux("aux1", x) if want_aux else None
    x = inception("inception4b")(x, train)
    x = inception("inception4c")(x, train)
    x = inception("inception4d")(x, train)                                              # 528
    aux2 = aux("aux2", x) if want_aux else None
    x = inception("inception4e")(x, train)                                              # 832
    x = _ceil_max_pool(x, 2, 2)                                                         # 7
    x = inception("inception5a")(x, train)
    x = inception("inception5b")(x, train)                                              # 7x7x1024
    if not self.include_top:
      return x
    x = jnp.mean(x, axis=(1, 2))
    x = layers.Dropout(self.dropout_rate, deterministic=not train, axis_name=self.axis_name,
                       name="dropout")(x)
    logits = jnp.asarray(nn.Dense(self.num_classes, dtype=dt, name="head")(x), jnp.float32)
    if self.aux_logits and train:
      return logits, aux1, aux2
    return logits
