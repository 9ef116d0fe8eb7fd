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


def compare_variables(want: Any, got: Any
                      ) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
  """Leaf by leaf ('params/conv1/kernel'): the paths missing from `got`, the paths in `got`
  that are not wanted, and (path, got shape, wanted shape) where shapes differ. Pytrees of
  arrays or ShapeDtypeStructs: the one comparison behind imported weights and restore_from."""
  want = traverse_util.flatten_dict(dict(want), sep="/")
  got = traverse_util.flatten_dict(dict(got), sep="/")
  missing = [k for k in want if k not in got]
  unexpected = [k for k in got if k not in want]
  reshaped = [(k, tuple(got[k].shape), tuple(v.shape)) for k, v in want.items()
              if k in got and tuple(got[k].shape) != tuple(v.shape)]
  return missing, unexpected, reshaped


def check_variables(model: nn.Module, variables: dict[str, Any],
                    input_shape: Sequence[int]) -> None:
  """Raise ValueError listing every missing, unexpected or mis-shaped variable."""
  want = models.abstract_variables(model, input_shape)
  missing, unexpected, reshaped = compare_variables(want, variables)
  flat_want = traverse_util.flatten_dict(dict(want), sep="/")
  flat_got = traverse_util.flatten_dict(dict(variables), sep="/")
  problems = [f"missing {k} {flat_want[k].shape}" for k in missing]
  problems += [f"unexpected {k} {flat_got[k].shape}" for k in unexpected]
  problems += [f"{k}: got {g}, model wants {w}" for k, g, w in reshaped]
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


__all__ = ["check_variables", "compare_variables", "nest", "fc_from_chw"]
