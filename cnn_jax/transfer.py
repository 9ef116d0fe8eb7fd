"""Transfer learning: new heads and frozen subtrees.

    model, variables = replace_head(model, variables, num_classes=10, rng=key)
    tx = freeze(optax.sgd(0.01, 0.9), variables["params"], ["conv1", "bn1", "layer1"])
    ... after each step: batch_stats = restore_frozen(new_stats, old_stats, prefixes)

Freezing has two halves. Gradients: `freeze` wraps an optimizer with
`optax.multi_transform`, sending frozen leaves to `optax.set_to_zero()`, so their
parameters stay bit-identical (and their optimizer state is empty). Batch-norm
statistics are not parameters: a train-mode forward pass still updates the running
averages of frozen BN layers (and normalizes with batch statistics). Either
`restore_frozen` the frozen subtrees of `batch_stats` after each step (what
`training.steps.train_step(..., frozen=prefixes)` does; `config.freeze` in a run), or run the frozen part in inference mode, as Keras does for
`trainable=False` BN layers (detection.Localizer(frozen_backbone=True)).

Paths are '/'-joined module names, e.g. 'layer1_0/bn1/scale'; a prefix matches whole
components, so 'layer1' freezes 'layer1' and everything below it but not 'layer10'.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from cnn_jax import models

PyTree = Any


# ------------------------------------------------------------------------ heads
def replace_head(model: nn.Module, variables: PyTree, num_classes: int, rng: jax.Array,
                 head_name: str = "head", input_shape: Optional[Sequence[int]] = None,
                 **model_kwargs: Any) -> tuple[nn.Module, PyTree]:
  """Clone `model` with `num_classes` outputs and re-initialize only its head.

  Every other variable (params and batch_stats) is copied unchanged. The new head's
  kernel is drawn with LeCun normal and its bias set to zero (flax's Dense/Conv default);
  shapes come from jax.eval_shape, so no full initialization is run. input_shape (H, W,
  C) defaults to the registered input shape of the model's class; pass it for others.
  """
  new_model = model.clone(num_classes=num_classes, **model_kwargs)
  if input_shape is None:
    input_shape = _guess_input_shape(model)
  shapes = models.abstract_variables(new_model, input_shape)
  flat_old = traverse_util.flatten_dict(_to_dict(variables))
  flat_new = traverse_util.flatten_dict(_to_dict(shapes))
  out = {}
  for path, sds in flat_new.items():
    in_head = len(path) > 1 and path[1] == head_name
    if not in_head and path in flat_old:
      if flat_old[path].shape != sds.shape:
        raise ValueError(f"{'/'.join(path)}: shape {flat_old[path].shape} in the old model, "
                         f"{sds.shape} in the new one; only the head may change")
      out[path] = flat_old[path]
    elif path[-1] == "kernel":
      rng, sub = jax.random.split(rng)
      out[path] = nn.initializers.lecun_normal()(sub, sds.shape, sds.dtype)
    elif path[-1] == "bias":
      out[path] = jnp.zeros(sds.shape, sds.dtype)
    else:
      raise ValueError(f"don't know how to initialize new variable {'/'.join(path)}")
  return new_model, traverse_util.unflatten_dict(out)


def _guess_input_shape(model: nn.Module) -> tuple[int, ...]:
  for name in models.names():
    spec = models.get_spec(name)
    try:
      if isinstance(model, type(spec.factory())):
        return spec.input_shape
    except TypeError:
      continue
  raise ValueError("pass input_shape=(H, W, C): the model is not a registered one")


def _to_dict(tree: PyTree) -> dict:
  return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree


# ------------------------------------------------------------------- freezing
def _is_frozen(path: tuple[str, ...], prefixes: Sequence[str]) -> bool:
  joined = "/".join(path)
  return any(joined == p or joined.startswith(p.rstrip("/") + "/") for p in prefixes)


def freeze_mask(params: PyTree, frozen_prefixes: Iterable[str]) -> PyTree:
  """A pytree like `params` with True on leaves under one of `frozen_prefixes`."""
  prefixes = list(frozen_prefixes)
  flat = traverse_util.flatten_dict(_to_dict(params))
  mask = {path: _is_frozen(path, prefixes) for path in flat}
  unused = [p for p in prefixes if not any(_is_frozen(path, [p]) for path in flat)]
  if unused:
    raise ValueError(f"frozen prefixes match no parameter: {unused}")
  return traverse_util.unflatten_dict(mask)


def all_but(params: PyTree, trainable_prefixes: Iterable[str]) -> list[str]:
  """Top-level module names not in `trainable_prefixes`: freeze everything but these."""
  keep = set(trainable_prefixes)
  return [k for k in params if k not in keep]


def freeze(tx: optax.GradientTransformation, params: PyTree,
           frozen_prefixes: Iterable[str]) -> optax.GradientTransformation:
  """`tx` for trainable leaves, zero updates (and no state) for frozen ones."""
  labels = jax.tree_util.tree_map(lambda f: "frozen" if f else "trainable",
                                  freeze_mask(params, frozen_prefixes))
  return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)


def restore_frozen(new: PyTree, old: PyTree, frozen_prefixes: Iterable[str]) -> PyTree:
  """`new` with every leaf under a frozen prefix taken from `old` (e.g. batch_stats)."""
  prefixes = list(frozen_prefixes)
  flat_new = traverse_util.flatten_dict(_to_dict(new))
  flat_old = traverse_util.flatten_dict(_to_dict(old))
  return traverse_util.unflatten_dict(
      {k: flat_old[k] if _is_frozen(k, prefixes) else v for k, v in flat_new.items()})
