"""The one train step and the one eval step, shared by every parallel mode and task.

`axis_name` is None under `jit` (sharded or single device: XLA inserts the collectives
from the shardings) and the pmap axis name under `jax.pmap`, where gradients, metrics
and batch-norm statistics are averaged explicitly with `lax.pmean`.

The same `train_step` trains a classifier (the default loss), a localizer or detector
(pass `loss_fn`), and a partly frozen network (`frozen`: the optimizer gives frozen
parameters zero updates, see `transfer.freeze`; the step puts back the batch-norm
statistics a train-mode pass would have moved in frozen layers).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
from jax import lax

from cnn_jax import transfer
from cnn_jax.data.augment import MixFn, PreprocessFn
from cnn_jax.training import losses
from cnn_jax.training.train_state import TrainState, variables_of

Batch = dict[str, jax.Array]
LossFn = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]

# GoogLeNet (Szegedy et al. 2015, section 5): "the loss of the auxiliary classifiers was
# weighted by 0.3" and added to the main loss during training.
AUX_LOSS_WEIGHT = 0.3
# The mix key is fold_in(augmentation key, MIX_STREAM): preprocess keeps the augmentation
# key (and so the draws) it had before mixes existed.
MIX_STREAM = 0x6D6978


def fused_pmean(tree: Any, axis_name: str) -> Any:
  """`lax.pmean` of every leaf of `tree`, as one all-reduce per dtype instead of one per leaf.

  XLA:CPU does not combine all-reduces, and across processes (Gloo) each one costs
  milliseconds whatever its size: resnet20's ~130 gradient / statistic arrays took ~0.25 s
  a step, one buffer of the same numbers ~4 ms (PyTorch DDP buckets for the same reason).
  Each element is averaged over the same devices as before, so the result is the same.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  by_dtype: dict[Any, list[int]] = {}
  for i, leaf in enumerate(leaves):
    by_dtype.setdefault(jnp.result_type(leaf), []).append(i)
  out = list(leaves)
  for index in by_dtype.values():
    flat = jnp.concatenate([jnp.ravel(leaves[i]) for i in index])
    reduced = lax.pmean(flat, axis_name)
    start = 0
    for i in index:
      size = math.prod(jnp.shape(leaves[i]))
      out[i] = reduced[start:start + size].reshape(jnp.shape(leaves[i]))
      start += size
  return jax.tree_util.tree_unflatten(treedef, out)


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


def classification_loss(outputs: Any, batch: Batch, label_smoothing: float = 0.0
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross entropy, top-1 / top-5 accuracy of the main logits.

  outputs may be (logits, aux1, aux2, ...) — GoogLeNet with aux_logits in train mode —
  in which case each auxiliary cross entropy is added with weight 0.3, as in the paper.
  With batch['label_probs'] (mixup / cutmix) the cross entropy is against those soft
  labels (smoothed by label_smoothing); accuracies always count the hard batch['label'].
  """
  labels = batch["label"]
  probs = batch.get("label_probs")
  if probs is None:
    ce = lambda lg: losses.cross_entropy(lg, labels, label_smoothing).mean()
  else:
    ce = lambda lg: losses.soft_cross_entropy(lg, probs, label_smoothing).mean()
  logits, aux = (outputs[0], outputs[1:]) if isinstance(outputs, (tuple, list)) else (outputs, ())
  loss = ce(logits)
  metrics = {"accuracy": jnp.mean(losses.topk_correct(logits, labels, 1)),
             "top5_accuracy": jnp.mean(losses.topk_correct(logits, labels, 5))}
  if aux:
    metrics["main_loss"] = loss
    loss = loss + AUX_LOSS_WEIGHT * sum(ce(a) for a in aux)
  return loss, metrics


def train_step(state: TrainState, batch: Batch, *, preprocess: Optional[PreprocessFn] = None,
               mix: Optional[MixFn] = None,
               loss_fn: Optional[LossFn] = None, label_smoothing: float = 0.0,
               axis_name: Optional[str] = None, frozen: Sequence[str] = (),
               matmul_precision: str = "default") -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on `batch` ({'image': uint8 NHWC, 'label': int, ...}).

  preprocess(images, rng, train) turns stored images into model input (None: as is).
  mix(images, labels, rng) -> (images, label_probs) (mixup / cutmix, `augment.make_mix_fn`)
  then mixes the preprocessed batch; the classification loss uses the soft labels, the
  accuracies the original ones. Its key is folded from the augmentation key.
  loss_fn(model outputs, batch) -> (loss, metrics); default `classification_loss`.
  A step whose gradient is not finite is dropped by the optimizer when it is wrapped in
  `optax.apply_if_finite` (config.skip_nonfinite_steps); its batch statistics are then
  dropped too, and metrics['skipped'] says so.
  """
  if mix is not None and loss_fn is not None:
    raise ValueError("mixup / cutmix (config.augment) give soft labels for the classification "
                     "loss; a custom loss_fn cannot use them")
  loss_fn = loss_fn or (lambda out, b: classification_loss(out, b, label_smoothing))
  aug_rng, dropout_rng = step_rngs(state, axis_name)
  images = batch["image"] if preprocess is None else preprocess(batch["image"], aug_rng, True)
  if mix is not None:
    images, probs = mix(images, batch["label"], jax.random.fold_in(aug_rng, MIX_STREAM))
    batch = {**batch, "label_probs": probs}
  has_bn = bool(state.batch_stats)

  def total_loss(params):
    out = state.apply_fn({**variables_of(state), "params": params}, images, train=True,
                         rngs={"dropout": dropout_rng},
                         mutable=["batch_stats"] if has_bn else False)
    outputs, updates = out if has_bn else (out, {})
    loss, metrics = loss_fn(outputs, batch)
    return loss, (metrics, updates)

  with jax.default_matmul_precision(matmul_precision):
    (loss, (metrics, updates)), grads = jax.value_and_grad(total_loss, has_aux=True)(state.params)
  metrics = {"loss": loss, **metrics}
  new_stats = updates.get("batch_stats", state.batch_stats)
  if axis_name is not None:  # new_stats too: every replica's statistics stay equal
    grads, metrics, new_stats = fused_pmean((grads, metrics, new_stats), axis_name)
  if frozen and has_bn:
    new_stats = transfer.restore_frozen(new_stats, state.batch_stats, frozen)
  new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  metrics["grad_norm"] = optax.tree.norm(grads)
  if isinstance(new_state.opt_state, optax.ApplyIfFiniteState):
    finite = new_state.opt_state.last_finite
    new_state = new_state.replace(batch_stats=jax.tree_util.tree_map(
        lambda n, o: jnp.where(finite, n, o), new_state.batch_stats, state.batch_stats))
    metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
  return new_state, metrics


def eval_logits(apply_fn: Callable[..., Any], variables: Any, images: jax.Array, *,
                preprocess: Optional[PreprocessFn] = None, matmul_precision: str = "default",
                flip: bool = False) -> jax.Array:
  """The logits evaluation scores for stored (uint8) `images`: one place, so that the
  sample predictions sent to TensorBoard (`eval_pictures`) are the evaluation's own.

  flip: test-time augmentation, the mean of the logits of each image and its mirror image.
  """
  x = images if preprocess is None else preprocess(images, jax.random.key(0), False)
  with jax.default_matmul_precision(matmul_precision):
    logits = apply_fn(variables, x, train=False)
    if flip:
      logits = 0.5 * (logits + apply_fn(variables, x[:, :, ::-1], train=False))
  return logits


def eval_step(state: TrainState, batch: Batch, *, preprocess: Optional[PreprocessFn] = None,
              axis_name: Optional[str] = None, matmul_precision: str = "default",
              flip: bool = False) -> dict[str, jax.Array]:
  """Sums (not means) of loss / correct over the real examples of `batch` (its `mask`),
  from `eval_logits` (flip: its mirror-image test-time augmentation)."""
  logits = eval_logits(state.apply_fn, variables_of(state), batch["image"], preprocess=preprocess,
                       matmul_precision=matmul_precision, flip=flip)
  mask = batch.get("mask", jnp.ones(logits.shape[0], jnp.float32))
  sums = {"loss": jnp.sum(losses.cross_entropy(logits, batch["label"]) * mask),
          "correct": jnp.sum(losses.topk_correct(logits, batch["label"], 1) * mask),
          "top5_correct": jnp.sum(losses.topk_correct(logits, batch["label"], 5) * mask),
          "count": jnp.sum(mask)}
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  return sums
