"""AlexNet: torchvision's single-tower layout and the 2012 paper's original network.

`alexnet` is torchvision's `alexnet` (from "One weird trick", Krizhevsky 2014): 64-192-
384-256-256 filters, no LRN, an adaptive average pool to 6x6 and dropout-4096-4096-1000,
61,100,840 parameters at 224x224x3, so torchvision's ImageNet weights load into it
(cnn_jax.weights.torch_import).

`alexnet_original` is the network of Krizhevsky, Sutskever & Hinton (2012) on 227x227x3
(the size that makes 11x11/4 give the paper's 55x55): 96-256-384-384-256 filters, local
response normalization (k=2, n=5, alpha=1e-4, beta=0.75) after conv1 and conv2,
overlapping 3x3/2 max pools and dropout 0.5 in the first two FC layers. The paper splits
conv2/4/5 over two GPUs; here every conv sees all input channels (one tower), so conv2
has 5*5*96*256 + 256 = 614,656 parameters rather than half that.

`fc_classifier`, the 4096-4096 head, is shared with ZFNet and VGG.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register


def fc_classifier(x: jax.Array, num_classes: int, *, train: bool, dropout_rate: float,
                  axis_name: Optional[str], names: Sequence[str] = ("fc6", "fc7"),
                  dropout_names: Sequence[str] = ("dropout6", "dropout7"),
                  dropout_first: bool = False, width: int = 4096,
                  dtype: Any = jnp.float32) -> jax.Array:
  """The 4096-4096-classes head of AlexNet, ZFNet and VGG, called inside a compact method.

  Each hidden layer is Dense -> ReLU -> Dropout (the papers, Keras), or Dropout -> Dense ->
  ReLU with `dropout_first` (torchvision's AlexNet); the last Dense is always `head`. The
  layers compute in `dtype`; the logits come out float32, so the loss is float32 too.
  Layer names are the importers' (cnn_jax.weights): keep them.
  """
  for name, drop_name in zip(names, dropout_names):
    drop = layers.Dropout(dropout_rate, deterministic=not train, axis_name=axis_name,
                          name=drop_name)
    if dropout_first:
      x = drop(x)
    x = nn.relu(nn.Dense(width, dtype=dtype, name=name)(x))
    if not dropout_first:
      x = drop(x)
  return jnp.asarray(nn.Dense(num_classes, dtype=dtype, name="head")(x), jnp.float32)


@register("alexnet", (224, 224, 3), "AlexNet, torchvision layout (61,100,840 parameters)")
class AlexNet(nn.Module):
  """torchvision AlexNet; with include_top=False returns the 6x6x256 pooled features."""
  num_classes: int = 1000
  axis_name: Optional[str] = None  # pmap axis: dropout masks independent of device count
  dropout_rate: float = 0.5
  include_top: bool = True
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype
    x = nn.relu(layers.Conv2D(64, 11, strides=4, padding=2, dtype=dt, name="conv1")(x))  # 55x55x64
    x = layers.MaxPool(3, 2, name="pool1")(x)                                            # 27x27
    x = nn.relu(layers.Conv2D(192, 5, padding=2, dtype=dt, name="conv2")(x))             # 27x27x192
    x = layers.MaxPool(3, 2, name="pool2")(x)                                            # 13x13
    x = nn.relu(layers.Conv2D(384, 3, padding=1, dtype=dt, name="conv3")(x))             # 13x13x384
    x = nn.relu(layers.Conv2D(256, 3, padding=1, dtype=dt, name="conv4")(x))
    x = nn.relu(layers.Conv2D(256, 3, padding=1, dtype=dt, name="conv5")(x))
    x = layers.MaxPool(3, 2, name="pool5")(x)                                     # 6x6x256
    x = layers.AdaptiveAvgPool(6, name="avgpool")(x)
    if not self.include_top:
      return x
    x = layers.Flatten(name="flatten")(x)                                         # 9216 (HWC)
    return fc_classifier(x, self.num_classes, train=train, dropout_rate=self.dropout_rate,
                         axis_name=self.axis_name, dropout_first=True, dtype=dt)


@register("alexnet_original", (227, 227, 3),
          "AlexNet as in Krizhevsky et al. 2012: LRN, overlapping pools, one tower")
class AlexNetOriginal(nn.Module):
  """The 2012 paper's network, 62,378,344 parameters at 1000 classes."""
  num_classes: int = 1000
  axis_name: Optional[str] = None  # pmap axis: dropout masks independent of device count
  dropout_rate: float = 0.5
  include_top: bool = True
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype

    def lrn(name):
      return layers.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0, name=name)

    x = nn.relu(layers.Conv2D(96, 11, strides=4, dtype=dt, name="conv1")(x))   # 55x55x96
    x = lrn("norm1")(x)
    x = layers.MaxPool(3, 2, name="pool1")(x)                                   # 27x27x96
    x = nn.relu(layers.Conv2D(256, 5, padding=2, dtype=dt, name="conv2")(x))    # 27x27x256
    x = lrn("norm2")(x)
    x = layers.MaxPool(3, 2, name="pool2")(x)                                   # 13x13x256
    x = nn.relu(layers.Conv2D(384, 3, padding=1, dtype=dt, name="conv3")(x))    # 13x13x384
    x = nn.relu(layers.Conv2D(384, 3, padding=1, dtype=dt, name="conv4")(x))    # 13x13x384
    x = nn.relu(layers.Conv2D(256, 3, padding=1, dtype=dt, name="conv5")(x))    # 13x13x256
    x = layers.MaxPool(3, 2, name="pool5")(x)                                   # 6x6x256
    if not self.include_top:
      return x
    x = layers.Flatten(name="flatten")(x)                                         # 9216
    return fc_classifier(x, self.num_classes, train=train, dropout_rate=self.dropout_rate,
                         axis_name=self.axis_name, dtype=dt)
