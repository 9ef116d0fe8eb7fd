"""Copy `keras.applications` weights into zoo models.

    keras_model = keras.applications.ResNet50(weights="imagenet")   # or weights=None
    variables = keras_import.resnet50_from_keras(keras_model)
    logits = models.get_model("resnet50_keras").apply(variables, x, train=False)

Keras' ResNet50 is the original v1 (stride on the first 1x1 conv, conv biases, BN
epsilon 1.001e-5): it matches `resnet50_keras`, not torchvision's `resnet50`. Keras VGG16
and VGG19 match `vgg16` / `vgg19` directly (Keras flattens NHWC, as we do); at 224x224
our adaptive 7x7 pool is the identity, at other sizes build ours with
`avgpool_size=None` as Keras has no such pool. Keras' classifier applies a softmax
unless built with `classifier_activation=None`; ours returns logits. Only the layer
names and weight order of keras.applications are assumed, not a Keras version.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cnn_jax.weights import nest

_RESNET_STAGES = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3),
                  "resnet152": (3, 8, 36, 3)}


def _weights(keras_model: Any) -> dict[str, list[np.ndarray]]:
  return {layer.name: [np.asarray(w) for w in layer.get_weights()]
          for layer in keras_model.layers if layer.get_weights()}


def _conv(flat: dict, ours: str, w: list[np.ndarray]) -> None:
  flat[f"params/{ours}/kernel"] = w[0]  # Keras conv kernels are already HWIO
  if len(w) > 1:
    flat[f"params/{ours}/bias"] = w[1]


def _bn(flat: dict, ours: str, w: list[np.ndarray]) -> None:
  gamma, beta, mean, var = w
  flat[f"params/{ours}/scale"], flat[f"params/{ours}/bias"] = gamma, beta
  flat[f"batch_stats/{ours}/mean"], flat[f"batch_stats/{ours}/var"] = mean, var


def resnet_from_keras(keras_model: Any, depth: int = 50) -> dict[str, Any]:
  """keras.applications.ResNet50/101/152 -> variables for ResNet(stride_on_3x3=False,
  conv_bias=True, bn_epsilon=1.001e-5) (registered as `resnet50_keras`)."""
  w = _weights(keras_model)
  flat: dict[str, np.ndarray] = {}
  _conv(flat, "conv1", w.pop("conv1_conv"))
  _bn(flat, "bn1", w.pop("conv1_bn"))
  for s, n in enumerate(_RESNET_STAGES[f"resnet{depth}"]):
    for b in range(n):
      k, ours = f"conv{s + 2}_block{b + 1}", f"layer{s + 1}_{b}"
      if b == 0:
        _conv(flat, f"{ours}/downsample_conv", w.pop(f"{k}_0_conv"))
        _bn(flat, f"{ours}/downsample_bn", w.pop(f"{k}_0_bn"))
      for i in (1, 2, 3):
        _conv(flat, f"{ours}/conv{i}", w.pop(f"{k}_{i}_conv"))
        _bn(flat, f"{ours}/bn{i}", w.pop(f"{k}_{i}_bn"))
  if "predictions" in w:
    _conv(flat, "head", w.pop("predictions"))
  if w:
    raise ValueError(f"Keras layers left unmapped: {sorted(w)}")
  return nest(flat)


def resnet50_from_keras(keras_model: Any) -> dict[str, Any]:
  """keras.applications.ResNet50 -> variables for the `resnet50_keras` zoo model."""
  return resnet_from_keras(keras_model, 50)


def vgg_from_keras(keras_model: Any) -> dict[str, Any]:
  """keras.applications.VGG16 / VGG19 -> variables for `vgg16` / `vgg19` (same names)."""
  w = _weights(keras_model)
  flat: dict[str, np.ndarray] = {}
  for name in list(w):
    if name.startswith("block"):
      _conv(flat, name, w.pop(name))
  for keras_name, ours in (("fc1", "fc1"), ("fc2", "fc2"), ("predictions", "head")):
    if keras_name in w:
      _conv(flat, ours, w.pop(keras_name))  # Keras Dense kernels are (in, out) already
  if w:
    raise ValueError(f"Keras layers left unmapped: {sorted(w)}")
  return nest(flat)


def from_keras(keras_model: Any, arch: str) -> dict[str, Any]:
  """Dispatch on our architecture name: resnet50_keras, vgg16, vgg19."""
  if arch == "resnet50_keras":
    return resnet_from_keras(keras_model, 50)
  if arch.startswith("vgg") and not arch.endswith("_bn"):
    return vgg_from_keras(keras_model)
  raise ValueError(f"no Keras importer for {arch!r}; known: resnet50_keras, vgg16, vgg19")
