"""The train state: everything a run needs to continue, as one pytree."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """params, opt_state and step (from flax) plus batch-norm statistics and the RNG key.

  The per-step RNG is `fold_in(rng, step)`, so the key itself never changes and a
  resumed run draws exactly the dropout masks and augmentations it would have drawn.
  """
  batch_stats: Any = flax.struct.field(default_factory=dict)
  rng: jax.Array = None  # type: ignore[assignment]


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       input_shape: tuple[int, ...]) -> TrainState:
  """Initialize variables on a dummy batch of one and wrap them in a TrainState."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init({"params": init_rng, "dropout": init_rng},
                         jnp.zeros((1, *input_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables.get("batch_stats", {}), rng=state_rng)


def variables_of(state: TrainState) -> dict[str, Any]:
  """The variables dict for `model.apply` (params and, if any, batch_stats)."""
  v = {"params": state.params}
  if state.batch_stats:
    v["batch_stats"] = state.batch_stats
  return v
