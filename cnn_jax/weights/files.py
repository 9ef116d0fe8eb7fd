"""Downloaded weights as a run's starting point: `--config.restore_from=resnet18-f37072fd.pth`.

`config.restore_from` takes a cnn_jax work directory, or one of these files:
  *.pth / *.pt     a torchvision state dict (torch_import), for the zoo's torchvision models
  *.h5 / *.keras   a saved keras.applications model (keras_import: resnet50_keras, vgg16/19)
The file is converted for `config.model`; `training.evaluation.restore_weights` then checks
every backbone variable's fit and gives a head of another class count its fresh init.
"""
from __future__ import annotations

import os
from typing import Any

from cnn_jax.weights import keras_import, torch_import

TORCH_SUFFIXES = (".pth", ".pt")
KERAS_SUFFIXES = (".h5", ".keras")


def is_weights_file(path: str) -> bool:
  """True for a torchvision or Keras weights file (by its suffix), False for a work directory."""
  return str(path).lower().endswith(TORCH_SUFFIXES + KERAS_SUFFIXES)


def load_weights_file(path: str, arch: str) -> dict[str, Any]:
  """The flax variables of weights file `path`, converted for zoo model `arch`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.restore_from={path} does not exist")
  if path.lower().endswith(TORCH_SUFFIXES):
    return torch_import.load_torchvision_pth(path, arch)
  try:
    import keras  # noqa: PLC0415 - TensorFlow / Keras (seconds, GBs): only for a Keras file
  except ImportError as e:
    raise ValueError(f"config.restore_from={path} is a Keras file: pip install tensorflow-cpu "
                     "(or keras) to read it") from e
  return keras_import.from_keras(keras.models.load_model(path, compile=False), arch)
