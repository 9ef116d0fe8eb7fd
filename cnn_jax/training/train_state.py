"""The train state: everything a run needs to continue, as one pytree."""
from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from flax.training import train_state


class TrainState(train_state.TrainState):
  """params, opt_state and step (from flax) plus batch-norm statistics and the RNG key.

  The per-step RNG is `fold_in(rng, step)`, so the key itself never changes and a
  resumed run draws exactly the dropout masks and augmentations it would have drawn.
  """
  batch_stats: Any = flax.struct.field(default_factory=dict)
  rng: jax.Array = None  # type: ignore[assignment]


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       input_shape: tuple[int, ...],
                       params_from_data: Optional[dict[tuple[str, ...], Any]] = None) -> TrainState:
  """Initialize variables on a dummy batch of one and wrap them in a TrainState.

  params_from_data: parameters by path that replace the random init (a model's
  `data_init`, e.g. airbench's whitened stem), before the optimizer state is built.
  """
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init({"params": init_rng, "dropout": init_rng},
                         jnp.zeros((1, *input_shape), jnp.float32), train=False)
  params = variables["params"]
  if params_from_data:
    flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
    for path, value in params_from_data.items():
      if path not in flat or flat[path].shape != value.shape:
        raise ValueError(f"data_init gives {'/'.join(path)} of shape {value.shape}; the model "
                         f"has {flat[path].shape if path in flat else 'no such parameter'}")
      flat[path] = jnp.asarray(value, flat[path].dtype)
    params = traverse_util.unflatten_dict(flat)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables.get("batch_stats", {}), rng=state_rng)


def variables_of(state: TrainState) -> dict[str, Any]:
  """The variables dict for `model.apply` (params and, if any, batch_stats)."""
  v = {"params": state.params}
  if state.batch_stats:
    v["batch_stats"] = state.batch_stats
  return v
