"""Activations by name, and maxout.

Models and configs name their activation as a string ("relu", "tanh", ...), so the
lookup lives in one place with an error that lists the known names.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def maxout(x: Array, pieces: int, axis: int = -1) -> Array:
  """Maxout (Goodfellow et al. 2013): max over `pieces` consecutive channels."""
  c = x.shape[axis]
  if c % pieces:
    raise ValueError(f"maxout: {c} channels are not divisible into {pieces} pieces")
  axis = axis % x.ndim
  shape = x.shape[:axis] + (c // pieces, pieces) + x.shape[axis + 1:]
  return jnp.max(x.reshape(shape), axis=axis + 1)


class Maxout(nn.Module):
  """Dense maxout unit: `features` outputs, each the max of `pieces` affine maps."""
  features: int
  pieces: int = 2
  dtype: Any = None  # computation dtype (None: from the input and the float32 parameters)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return maxout(nn.Dense(self.features * self.pieces, dtype=self.dtype, name="linear")(x),
                  self.pieces)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,  # negative slope 0.01
    "elu": nn.elu,
    "gelu": nn.gelu,
    "softplus": nn.softplus,
    "linear": lambda x: x,
}


def get_activation(name: str) -> Callable[[Array], Array]:
  """Look an activation up by name, with a clear error listing the known ones."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None

