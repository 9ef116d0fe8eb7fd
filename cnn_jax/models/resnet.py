"""ResNets (He et al. 2015): torchvision's ImageNet models and the paper's CIFAR models.

ImageNet `resnet18/34/50/101/152` follow torchvision exactly (11,689,512 /
21,797,672 / 25,557,032 / 44,549,160 / 60,192,808 parameters) including its "v1.5"
bottleneck, which strides on the 3x3 conv. The paper and Keras' `ResNet50` stride on
the first 1x1 conv, give every conv a bias and use BN epsilon 1.001e-5; those are the
attributes `stride_on_3x3`, `conv_bias` and `bn_epsilon`, and `resnet50_keras` sets them
so Keras' weights load exactly (25,636,712 variables, as Keras counts).

Names mirror torchvision (`conv1`, `bn1`, `layer2_0/conv1`, `layer2_0/downsample_conv`),
so state dicts map by replacing dots; the classifier is `head` as in every zoo model.

CIFAR `resnet20/32/44/56/110` are the paper's section 4.2 networks on 32x32x3: 16-32-64
filters, 6n+2 layers, "option A" parameter-free shortcuts (stride-2 subsampling plus
zero channels), 0.27M / 0.46M / 0.66M / 0.85M / 1.7M parameters at 10 classes.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register


class _BNMixin:
  """The conv and BN every ImageNet ResNet module builds: its bias / epsilon / dtype settings."""

  def bn(self, name: str, train: bool, scale_init=nn.initializers.ones) -> nn.BatchNorm:
    return layers.batch_norm(train, self.axis_name, self.bn_epsilon, name=name,
                             scale_init=scale_init, dtype=self.dtype)

  def conv(self, features: int, kernel: int, strides: int = 1, padding: int = 0, *,
           name: str) -> layers.Conv2D:
    return layers.Conv2D(features, kernel, strides, padding=padding, use_bias=self.conv_bias,
                         dtype=self.dtype, name=name)


class BasicBlock(_BNMixin, nn.Module):
  """Two 3x3 convs; projection shortcut (1x1 conv + BN) when the shape changes."""
  planes: int
  strides: int = 1
  conv_bias: bool = False
  bn_epsilon: float = 1e-5
  zero_init_residual: bool = False
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = self.conv(self.planes, 3, self.strides, padding=1, name="conv1")(x)
    y = nn.relu(self.bn("bn1", train)(y))
    y = self.conv(self.planes, 3, padding=1, name="conv2")(y)
    y = self.bn("bn2", train, last_init)(y)
    if self.strides != 1 or x.shape[-1] != self.planes:
      x = self.conv(self.planes, 1, self.strides, name="downsample_conv")(x)
      x = self.bn("downsample_bn", train)(x)
    return nn.relu(x + y)


class Bottleneck(_BNMixin, nn.Module):
  """1x1 reduce, 3x3, 1x1 expand (x4); the stride sits on the 3x3 (v1.5) or the first 1x1."""
  planes: int
  strides: int = 1
  stride_on_3x3: bool = True
  conv_bias: bool = False
  bn_epsilon: float = 1e-5
  zero_init_residual: bool = False
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    s1, s3 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
    last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    out = self.planes * self.expansion
    y = self.conv(self.planes, 1, s1, name="conv1")(x)
    y = nn.relu(self.bn("bn1", train)(y))
    y = self.conv(self.planes, 3, s3, padding=1, name="conv2")(y)
    y = nn.relu(self.bn("bn2", train)(y))
    y = self.conv(out, 1, name="conv3")(y)
    y = self.bn("bn3", train, last_init)(y)
    if self.strides != 1 or x.shape[-1] != out:
      x = self.conv(out, 1, self.strides, name="downsample_conv")(x)
      x = self.bn("downsample_bn", train)(x)
    return nn.relu(x + y)


class ResNet(_BNMixin, nn.Module):
  """ImageNet ResNet: 7x7/2 stem, 3x3/2 max pool, four stages (64-128-256-512 planes)."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False
  num_classes: int = 1000
  stride_on_3x3: bool = True
  conv_bias: bool = False
  bn_epsilon: float = 1e-5
  zero_init_residual: bool = False
  include_top: bool = True
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = jnp.asarray(x, self.dtype)
    x = self.conv(64, 7, 2, padding=3, name="conv1")(x)
    x = nn.relu(self.bn("bn1", train)(x))
    # Max pooling after a relu: -inf padding (torch) and zero padding (Keras) agree.
    x = layers.MaxPool(3, 2, padding=1, name="maxpool")(x)
    common = dict(conv_bias=self.conv_bias, bn_epsilon=self.bn_epsilon,
                  zero_init_residual=self.zero_init_residual, axis_name=self.axis_name,
                  dtype=self.dtype)
    if self.bottleneck:
      block = functools.partial(Bottleneck, stride_on_3x3=self.stride_on_3x3, **common)
    else:
      block = functools.partial(BasicBlock, **common)
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = block(64 * 2**i, strides, name=f"layer{i + 1}_{j}")(x, train)
    if not self.include_top:
      return x
    x = jnp.mean(x, axis=(1, 2))
    return jnp.asarray(nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x), jnp.float32)


def _resnet(name: str, stages: Sequence[int], bottleneck: bool, description: str, **kw):
  factory = functools.partial(ResNet, stage_sizes=tuple(stages), bottleneck=bottleneck, **kw)
  return register(name, (224, 224, 3), description)(factory)


resnet18 = _resnet("resnet18", (2, 2, 2, 2), False, "ResNet-18, torchvision layout")
resnet34 = _resnet("resnet34", (3, 4, 6, 3), False, "ResNet-34, torchvision layout")
resnet50 = _resnet("resnet50", (3, 4, 6, 3), True, "ResNet-50 v1.5, torchvision layout")
resnet101 = _resnet("resnet101", (3, 4, 23, 3), True, "ResNet-101 v1.5, torchvision layout")
resnet152 = _resnet("resnet152", (3, 8, 36, 3), True, "ResNet-152 v1.5, torchvision layout")
resnet50_keras = _resnet(
    "resnet50_keras", (3, 4, 6, 3), True,
    "ResNet-50 v1 as keras.applications.ResNet50 (stride on 1x1, conv biases)",
    stride_on_3x3=False, conv_bias=True, bn_epsilon=1.001e-5)


# ----------------------------------------------------------------- CIFAR ResNets
class CifarBlock(nn.Module):
  """Basic block with the paper's option A shortcut: subsample and zero-pad channels."""
  planes: int
  strides: int = 1
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dt = self.dtype
    y = layers.Conv2D(self.planes, 3, self.strides, padding=1, use_bias=False, dtype=dt,
                      name="conv1")(x)
    y = nn.relu(layers.batch_norm(train, self.axis_name, dtype=dt, name="bn1")(y))
    y = layers.Conv2D(self.planes, 3, padding=1, use_bias=False, dtype=dt, name="conv2")(y)
    y = layers.batch_norm(train, self.axis_name, dtype=dt, name="bn2")(y)
    if self.strides != 1 or x.shape[-1] != self.planes:
      x = x[:, ::self.strides, ::self.strides, :]
      extra = self.planes - x.shape[-1]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """6n+2 layers: 3x3 conv 16, then n blocks each of 16, 32, 64 filters, pool, FC."""
  depth: int = 20
  num_classes: int = 10
  include_top: bool = True
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 2) % 6:
      raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}")
    n = (self.depth - 2) // 6
    x, dt = jnp.asarray(x, self.dtype), self.dtype
    x = layers.Conv2D(16, 3, padding=1, use_bias=False, dtype=dt, name="conv1")(x)
    x = nn.relu(layers.batch_norm(train, self.axis_name, dtype=dt, name="bn1")(x))
    for i, planes in enumerate((16, 32, 64)):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = CifarBlock(planes, strides, self.axis_name, dt, name=f"layer{i + 1}_{j}")(x, train)
    if not self.include_top:
      return x
    x = jnp.mean(x, axis=(1, 2))
    return jnp.asarray(nn.Dense(self.num_classes, dtype=dt, name="head")(x), jnp.float32)


def _cifar(depth: int):
  return register(f"resnet{depth}", (32, 32, 3),
                  f"CIFAR ResNet-{depth} (He et al. 2015, option A shortcuts)")(
                      functools.partial(CifarResNet, depth=depth))


resnet20, resnet32, resnet44, resnet56, resnet110 = (_cifar(d) for d in (20, 32, 44, 56, 110))
