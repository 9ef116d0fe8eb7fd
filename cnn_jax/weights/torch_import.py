"""Load torchvision state dicts (resnet*, vgg*, vgg*_bn, alexnet, googlenet) into zoo models.

    variables = torch_import.load_torchvision_pth("vgg16-397923af.pth", "vgg16")
    logits = models.get_model("vgg16").apply(variables, x_nhwc, train=False)

Conversions: conv weights OIHW -> HWIO; Linear (out, in) -> (in, out); BN weight,
bias, running_mean, running_var -> params scale, bias and batch_stats mean, var
(num_batches_tracked is dropped). The first FC layer after a flatten (VGG fc1,
AlexNet fc6, GoogLeNet's aux fc1) has its input rows permuted from torch's (C, H, W)
order to our (H, W, C); GoogLeNet's aux1 / aux2 heads map onto the model's aux1 / aux2
(build it with `model_kwargs`). Inputs must be NHWC and prepared as the weights expect:
`torchvision_preprocess(arch)` does it (RGB in [0, 1], ImageNet mean and std, and
GoogLeNet's transform_input).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Union

import numpy as np

from cnn_jax.data import augment
from cnn_jax.data.input_pipeline import IMAGENET_MEAN_STD
from cnn_jax.models.vgg import VGG_CONFIGS
from cnn_jax.weights import fc_from_chw, nest

_ALEXNET = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3",
            "features.8": "conv4", "features.10": "conv5", "classifier.1": "fc6",
            "classifier.4": "fc7", "classifier.6": "head"}


def _numpy(v: Any) -> np.ndarray:
  if hasattr(v, "detach"):
    v = v.detach().cpu().numpy()
  return np.asarray(v, np.float32)


def _vgg_names(arch: str) -> dict[str, str]:
  """torchvision's `features.N` / `classifier.N` indices -> our layer names."""
  m = re.fullmatch(r"vgg(\d+)(_bn)?", arch)
  depth, bn = int(m.group(1)), bool(m.group(2))
  names, idx = {}, 0
  for b, widths in enumerate(VGG_CONFIGS[depth], start=1):
    for i in range(1, len(widths) + 1):
      names[f"features.{idx}"] = f"block{b}_conv{i}"
      idx += 1
      if bn:
        names[f"features.{idx}"] = f"block{b}_bn{i}"
        idx += 1
      idx += 1  # relu
    idx += 1  # max pool
  names.update({"classifier.0": "fc1", "classifier.3": "fc2", "classifier.6": "head"})
  return names


def _module_path(arch: str, module: str) -> str:
  """torch module path (without the tensor name) -> our '/'-joined module path."""
  if arch.startswith("vgg"):
    return _vgg_names(arch)[module]
  if arch == "alexnet":
    return _ALEXNET[module]
  if module == "fc":
    return "head"
  module = re.sub(r"downsample\.0$", "downsample_conv", module)
  module = re.sub(r"downsample\.1$", "downsample_bn", module)
  module = re.sub(r"(layer\d+|branch\d+)\.(\d+)", r"\1_\2", module)  # Sequential indices
  return module.replace(".", "/")


# First dense layer after a flatten: (channels, height, width) of the flattened map.
_FLATTEN_FC = {"fc1": (512, 7, 7), "fc6": (256, 6, 6), "aux1/fc1": (128, 4, 4),
               "aux2/fc1": (128, 4, 4)}


def convert_state_dict(state_dict: Mapping[str, Any], arch: str) -> dict[str, Any]:
  """torchvision state dict of `arch` -> flax variables for the zoo model `arch`."""
  if not (re.fullmatch(r"resnet(18|34|50|101|152)|vgg(11|13|16|19)(_bn)?", arch)
          or arch in ("alexnet", "googlenet")):
    raise ValueError(f"no torchvision mapping for {arch!r}")
  flat: dict[str, np.ndarray] = {}
  for key, value in state_dict.items():
    module, _, tensor = key.rpartition(".")
    if tensor == "num_batches_tracked":
      continue
    try:
      ours = _module_path(arch, module)
    except KeyError:
      raise ValueError(f"{arch}: unexpected state dict key {key!r}") from None
    v = _numpy(value)
    if tensor == "weight" and v.ndim == 4:
      flat[f"params/{ours}/kernel"] = v.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif tensor == "weight" and v.ndim == 2:
      v = v.T
      if ours in _FLATTEN_FC:
        v = fc_from_chw(v, *_FLATTEN_FC[ours])
      flat[f"params/{ours}/kernel"] = v
    elif tensor == "weight":  # batch norm
      flat[f"params/{ours}/scale"] = v
    elif tensor == "bias":
      flat[f"params/{ours}/bias"] = v
    elif tensor == "running_mean":
      flat[f"batch_stats/{ours}/mean"] = v
    elif tensor == "running_var":
      flat[f"batch_stats/{ours}/var"] = v
    else:
      raise ValueError(f"{arch}: unexpected state dict key {key!r}")
  return nest(flat)


def model_kwargs(arch: str, variables: Mapping[str, Any]) -> dict[str, Any]:
  """Constructor arguments the zoo model `arch` needs to take all of `variables`.

  The class count of their head, and for GoogLeNet the auxiliary classifiers when the
  state dict has them (torchvision's ImageNet checkpoint does): every weight loads, and
  a fine-tuned aux head is not silently dropped.
  """
  params = variables["params"]
  kwargs: dict[str, Any] = {"num_classes": int(params["head"]["kernel"].shape[-1])}
  if arch == "googlenet" and "aux1" in params:
    kwargs["aux_logits"] = True
  return kwargs


def load_torchvision_pth(path: str, arch: str) -> dict[str, Any]:
  """torch.load a torchvision .pth (a state dict) on CPU and convert it for `arch`."""
  import torch  # only needed here
  state = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(state, Mapping) and "state_dict" in state:
    state = state["state_dict"]
  return convert_state_dict(state, arch)


def googlenet_transform_input(x: Union[np.ndarray, Any]) -> Any:
  """torchvision GoogLeNet's `transform_input`, needed with its ImageNet weights.

  Maps ImageNet-normalized NHWC input to the (x - 0.5) / 0.5 normalization the
  original Inception weights expect; torchvision does this inside the model.
  """
  mean, std = (np.array(v) for v in IMAGENET_MEAN_STD)
  return x * (std / 0.5).astype(np.float32) + ((mean - 0.5) / 0.5).astype(np.float32)


def torchvision_preprocess(arch: str) -> augment.PreprocessFn:
  """uint8 RGB NHWC images (at the model's input size) -> what torchvision's `arch` expects.

  ImageNet normalization, then for GoogLeNet the `transform_input` that torchvision
  applies inside its model (its ImageNet weights come with transform_input=True).
  """
  normalize = augment.make_preprocess_fn(None, *IMAGENET_MEAN_STD)
  if arch != "googlenet":
    return normalize

  def preprocess(images: Any, rng: Any, train: bool) -> Any:
    return googlenet_transform_input(normalize(images, rng, train))

  return preprocess
