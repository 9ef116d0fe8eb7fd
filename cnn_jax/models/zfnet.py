"""ZFNet (Zeiler & Fergus 2013, "Visualizing and Understanding Convolutional Networks").

The paper's Figure 3 on 224x224x3, reproduced size for size:

    layer   op                                   output       params
    conv1   96 7x7/2, pad 1, relu                110x110x96       14,208
    pool1   3x3/2 max, ceil mode (pad 0/1)        55x55x96
    norm1   LRN across maps (n=5, k=2, 1e-4, .75) 55x55x96
    conv2   256 5x5/2, no pad, relu               26x26x256       614,656
    pool2   3x3/2 max, ceil mode (pad 0/1)        13x13x256
    norm2   LRN                                   13x13x256
    conv3   384 3x3/1, pad 1, relu                13x13x384       885,120
    conv4   384 3x3/1, pad 1, relu                13x13x384     1,327,488
    conv5   256 3x3/1, pad 1, relu                13x13x256       884,992
    pool5   3x3/2 max                              6x6x256
    fc6     4096, relu, dropout 0.5               4096         37,752,832
    fc7     4096, relu, dropout 0.5               4096         16,781,312
    head    num_classes                           1000          4,097,000
                                                         total 62,357,608

Padding is the paper's silent choice: conv1 needs a padding of 1 to give 110 from 224 at
stride 2, and the two 3x3/2 pools give 55 and 13 (not 54 and 12) only with Caffe's
ceil-mode rounding, i.e. one extra row/column at the bottom/right. The paper's
"contrast normalization across feature maps" is taken to be AlexNet's LRN.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register
from cnn_jax.models.alexnet import fc_classifier


@register("zfnet", (224, 224, 3), "ZFNet, Zeiler & Fergus 2013 (7x7/2 conv1)")
class ZFNet(nn.Module):
  num_classes: int = 1000
  axis_name: Optional[str] = None  # pmap axis: dropout masks independent of device count
  dropout_rate: float = 0.5
  include_top: bool = True
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype
    ceil = ((0, 1), (0, 1))  # Caffe ceil-mode rounding for the two 3x3/2 pools
    lrn = lambda name: layers.LocalResponseNorm(5, 1e-4, 0.75, 2.0, name=name)  # noqa: E731
    x = nn.relu(layers.Conv2D(96, 7, strides=2, padding=1, dtype=dt, name="conv1")(x))  # 110x110x96
    x = layers.MaxPool(3, 2, padding=ceil, name="pool1")(x)                             # 55x55x96
    x = lrn("norm1")(x)
    x = nn.relu(layers.Conv2D(256, 5, strides=2, dtype=dt, name="conv2")(x))            # 26x26x256
    x = layers.MaxPool(3, 2, padding=ceil, name="pool2")(x)                             # 13x13x256
    x = lrn("norm2")(x)
    x = nn.relu(layers.Conv2D(384, 3, padding=1, dtype=dt, name="conv3")(x))            # 13x13x384
    x = nn.relu(layers.Conv2D(384, 3, padding=1, dtype=dt, name="conv4")(x))            # 13x13x384
    x = nn.relu(layers.Conv2D(256, 3, padding=1, dtype=dt, name="conv5")(x))            # 13x13x256
    x = layers.MaxPool(3, 2, name="pool5")(x)                                           # 6x6x256
    if not self.include_top:
      return x
    x = layers.Flatten(name="flatten")(x)
    return fc_classifier(x, self.num_classes, train=train, dropout_rate=self.dropout_rate,
                         axis_name=self.axis_name, dtype=dt)
