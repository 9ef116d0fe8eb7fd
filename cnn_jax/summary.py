"""Keras-style model summary: layer, type, output shape, parameters, totals.

Shapes are found with `jax.eval_shape` (nothing is computed), and each submodule's
output is recorded by intercepting its `__call__`, so the table lists layers in the
order the forward pass calls them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import models


@dataclass
class Row:
  path: str
  type: str
  output_shape: tuple
  params: int  # trainable ("params" collection)
  non_trainable: int  # e.g. batch-norm statistics


@dataclass
class Summary:
  model_name: str
  input_shape: tuple
  rows: list[Row]
  total_params: int
  trainable_params: int
  non_trainable_params: int
  output_shape: tuple

  def table(self) -> str:
    header = ("Layer", "Type", "Output shape", "Param #")
    body = [(r.path, r.type, "x".join(str(d) for d in r.output_shape), f"{r.params + r.non_trainable:,}")
            for r in self.rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    sep = "=" * len(line)
    out = [f'Model: "{self.model_name}"  input {"x".join(map(str, self.input_shape))}', sep, line, sep]
    for b in body:
      out.append("  ".join([b[0].ljust(widths[0]), b[1].ljust(widths[1]), b[2].ljust(widths[2]),
                            b[3].rjust(widths[3])]))
    out += [sep, f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}"]
    return "\n".join(out)


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def _subtree(tree: Any, path: Sequence[str]) -> Any:
  for p in path:
    if not isinstance(tree, dict) or p not in tree:
      return {}
    tree = tree[p]
  return tree


def summarize(model: nn.Module, input_shape: Sequence[int], model_name: str = "",
              depth: int = 1) -> Summary:
  """Summarize `model` on a batch of one input of shape (H, W, C).

  depth: how deep in the module tree to list rows (1 = the model's direct children).
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  variables = models.abstract_variables(model, input_shape)
  params = variables.get("params", {})
  other = {k: v for k, v in variables.items() if k != "params"}

  calls: list[tuple[tuple[str, ...], str, Any]] = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      path = tuple(context.module.path)
      if 1 <= len(path) <= depth:
        calls.append((path, type(context.module).__name__, out))
    return out

  def forward(v, x):
    with nn.intercept_methods(interceptor):
      return model.apply(v, x, train=False)

  out = jax.eval_shape(forward, variables, x)
  rows, seen = [], set()
  for path, typ, o in calls:
    if path in seen:  # a shared module called twice is listed once
      continue
    seen.add(path)
    shape = tuple(o.shape[1:]) if hasattr(o, "shape") else ()
    rows.append(Row("/".join(path), typ, shape, count_params(_subtree(params, path)),
                    sum(count_params(_subtree(c, path)) for c in other.values())))
  trainable = count_params(params)
  non_trainable = count_params(other)
  out_shape = tuple(out.shape[1:]) if hasattr(out, "shape") else ()
  return Summary(model_name or type(model).__name__, tuple(input_shape), rows,
                 trainable + non_trainable, trainable, non_trainable, out_shape)


def summarize_by_name(name: str, input_shape: Optional[Sequence[int]] = None, depth: int = 1,
                      **model_kwargs: Any) -> Summary:
  """Summary of a registered model, on its default input shape unless one is given."""
  model = models.get_model(name, **model_kwargs)
  return summarize(model, input_shape or models.input_shape(name), name, depth)
