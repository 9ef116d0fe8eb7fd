"""Pure train / eval steps, shared by every parallel mode.

`axis_name` is None under `jit` (sharded or single device: XLA inserts the collectives
from the shardings) and the pmap axis name under `jax.pmap`, where gradients, metrics
and batch-norm statistics are averaged explicitly with `lax.pmean`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.training import losses
from cnn_jax.training.train_state import TrainState, variables_of

Batch = dict[str, jax.Array]
PreprocessFn = Callable[[jax.Array, jax.Array, bool], jax.Array]


def step_rngs(state: TrainState, axis_name: Optional[str] = None) -> tuple[jax.Array, jax.Array]:
  """(augmentation, dropout) keys for this step, from fold_in(rng, step).

  Under pmap the augmentation key is also folded with the device index (each device
  augments its own images); the dropout key is not: `layers.Dropout` slices each
  device's part of one global mask, so results do not depend on the device count.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  aug_rng, dropout_rng = jax.random.split(rng)
  if axis_name is not None:
    aug_rng = jax.random.fold_in(aug_rng, lax.axis_index(axis_name))
  return aug_rng, dropout_rng


def train_step(state: TrainState, batch: Batch, *, preprocess: PreprocessFn,
               label_smoothing: float = 0.0, axis_name: Optional[str] = None,
               skip_nonfinite: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on `batch` ({'image': uint8 NHWC, 'label': int}); returns new state, metrics.

  With skip_nonfinite, a step whose loss or gradients are not finite leaves the state
  unchanged (apart from the step counter) instead of poisoning the parameters.
  """
  aug_rng, dropout_rng = step_rngs(state, axis_name)
  images = preprocess(batch["image"], aug_rng, True)
  labels = batch["label"]
  has_bn = bool(state.batch_stats)

  def loss_fn(params):
    out = state.apply_fn({**variables_of(state), "params": params}, images, train=True, rngs={"dropout": dropout_rng},
                         mutable=["batch_stats"] if has_bn else False)
    logits, updates = out if has_bn else (out, {})
    loss = losses.cross_entropy(logits, labels, label_smoothing).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss,
             "accuracy": jnp.mean(losses.topk_correct(logits, labels, 1)),
             "top5_accuracy": jnp.mean(losses.topk_correct(logits, labels, 5))}
  new_stats = updates.get("batch_stats", state.batch_stats)
  if axis_name is not None:
    grads = lax.pmean(grads, axis_name)
    metrics = lax.pmean(metrics, axis_name)
    new_stats = lax.pmean(new_stats, axis_name)  # keep every replica's statistics equal
  new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  metrics["grad_norm"] = _global_norm(grads)
  if skip_nonfinite:
    finite = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
              & jnp.isfinite(_global_norm(new_state.params)))
    new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state,
                                       state.replace(step=state.step + 1))
    metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
  return new_state, metrics


def _global_norm(tree: Any) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def eval_step(state: TrainState, batch: Batch, *, preprocess: PreprocessFn,
              axis_name: Optional[str] = None) -> dict[str, jax.Array]:
  """Sums (not means) of loss / correct over the real examples of `batch` (its `mask`)."""
  images = preprocess(batch["image"], jax.random.key(0), False)
  logits = state.apply_fn(variables_of(state), images, train=False)
  mask = batch.get("mask", jnp.ones(logits.shape[0], jnp.float32))
  sums = {"loss": jnp.sum(losses.cross_entropy(logits, batch["label"]) * mask),
          "correct": jnp.sum(losses.topk_correct(logits, batch["label"], 1) * mask),
          "top5_correct": jnp.sum(losses.topk_correct(logits, batch["label"], 5) * mask),
          "count": jnp.sum(mask)}
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  return sums
