"""VGG-11/13/16/19 (Simonyan & Zisserman 2014), with and without batch norm.

torchvision layout: 3x3 pad-1 convs in five blocks separated by 2x2 max pools, an
adaptive average pool to 7x7 (the identity at 224x224) and 4096-4096-num_classes FC
layers with dropout. VGG-16 has 138,357,544 parameters and VGG-19 143,667,240.

Layer names follow Keras (`block{b}_conv{i}`, `fc1`, `fc2`), so Keras' VGG16/VGG19
weights copy over by name; torchvision's `features.N` indices are mapped in
cnn_jax.weights.torch_import. `avgpool_size=None` drops the adaptive pool, which is
Keras' layout (its first FC layer then depends on the input size).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import register
from cnn_jax.models.alexnet import fc_classifier

# Filters per conv, one tuple per block (configurations A, B, D, E of the paper).
VGG_CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
  """VGG with configurable blocks; `batch_norm` inserts BN after every conv."""
  blocks: Sequence[Sequence[int]] = VGG_CONFIGS[16]
  num_classes: int = 1000
  batch_norm: bool = False
  dropout_rate: float = 0.5
  avgpool_size: Optional[int] = 7
  include_top: bool = True
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params stay float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, dt = jnp.asarray(x, self.dtype), self.dtype
    for b, widths in enumerate(self.blocks, start=1):
      for i, width in enumerate(widths, start=1):
        x = layers.Conv2D(width, 3, padding=1, dtype=dt, name=f"block{b}_conv{i}")(x)
        if self.batch_norm:
          x = layers.batch_norm(train, self.axis_name, dtype=dt, name=f"block{b}_bn{i}")(x)
        x = nn.relu(x)
      x = layers.MaxPool(2, name=f"block{b}_pool")(x)
    if self.avgpool_size is not None:
      x = layers.AdaptiveAvgPool(self.avgpool_size, name="avgpool")(x)
    if not self.include_top:
      return x
    x = layers.Flatten(name="flatten")(x)                          # 25088 (HWC order)
    return fc_classifier(x, self.num_classes, train=train, dropout_rate=self.dropout_rate,
                         axis_name=self.axis_name, names=("fc1", "fc2"),
                         dropout_names=("dropout1", "dropout2"), dtype=dt)


def _variant(depth: int, bn: bool):
  name = f"vgg{depth}" + ("_bn" if bn else "")
  factory = functools.partial(VGG, blocks=VGG_CONFIGS[depth], batch_norm=bn)
  return register(name, (224, 224, 3),
                  f"VGG-{depth}{' with batch norm' if bn else ''}, torchvision layout")(factory)


vgg11, vgg11_bn = _variant(11, False), _variant(11, True)
vgg13, vgg13_bn = _variant(13, False), _variant(13, True)
vgg16, vgg16_bn = _variant(16, False), _variant(16, True)
vgg19, vgg19_bn = _variant(19, False), _variant(19, True)
