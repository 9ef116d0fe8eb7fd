"""Pretrained-weight importers: Keras applications and torchvision state dicts.

Both produce a flax variables dict {'params': ..., 'batch_stats': ...} for the zoo
model of the same architecture (`resnet50_keras` / `vgg16` for Keras, `resnet50`,
`vgg16_bn`, `alexnet`, `googlenet`, ... for torchvision). `check_variables` compares
such a dict with what the model expects, leaf by leaf, before anything runs.

    from cnn_jax import models
    from cnn_jax.weights import torch_import
    variables = torch_import.load_torchvision_pth("googlenet-1378be20.pth", "googlenet")
    model = models.get_model("googlenet", **torch_import.model_kwargs("googlenet", variables))
    x = torch_import.torchvision_preprocess("googlenet")(images_uint8, rng, False)
    logits = model.apply(variables, x, train=False)

Neither TensorFlow nor torch is imported until an importer module is used.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util

from cnn_jax import models


def check_variables(model: nn.Module, variables: dict[str, Any],
                    input_shape: Sequence[int]) -> None:
  """Raise ValueError listing every missing, unexpected or mis-shaped variable."""
  want = traverse_util.flatten_dict(dict(models.abstract_variables(model, input_shape)), sep="/")
  got = traverse_util.flatten_dict(dict(variables), sep="/")
  problems = [f"missing {k} {v.shape}" for k, v in want.items() if k not in got]
  problems += [f"unexpected {k} {got[k].shape}" for k in got if k not in want]
  problems += [f"{k}: got {tuple(got[k].shape)}, model wants {tuple(v.shape)}"
               for k, v in want.items() if k in got and tuple(got[k].shape) != tuple(v.shape)]
  if problems:
    raise ValueError("weights do not fit the model:\n  " + "\n  ".join(problems[:50]))


def nest(flat: dict[str, Any], sep: str = "/") -> dict[str, Any]:
  """{'params/conv1/kernel': a, ...} -> nested dicts, as flax wants."""
  return traverse_util.unflatten_dict({tuple(k.split(sep)): jnp.asarray(v)
                                       for k, v in flat.items()})


def fc_from_chw(w: Any, channels: int, height: int, width: Optional[int] = None) -> Any:
  """Kernel (in, out) of a dense layer after an NCHW flatten -> after an NHWC flatten.

  torch flattens (C, H, W), we flatten (H, W, C): row c*H*W + h*W + w moves to
  h*W*C + w*C + c.
  """
  width = height if width is None else width
  out = w.shape[-1]
  return w.reshape(channels, height, width, out).transpose(1, 2, 0, 3).reshape(-1, out)


__all__ = ["check_variables", "nest", "fc_from_chw"]
