"""Optimizers and learning-rate schedules from optax, chosen by config."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import optax
from ml_collections import ConfigDict

from cnn_jax import transfer

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "piecewise", "onecycle", "exponential")


def make_schedule(cfg: ConfigDict, steps_per_epoch: float, num_epochs: int) -> optax.Schedule:
  """Learning-rate schedule over the whole run, counted in optimizer updates.

  Epochs in the config become updates (`steps_per_epoch` may be fractional: with
  gradient accumulation an epoch of 10 micro-batches is 2.5 updates of 4).
  """
  lr = cfg.learning_rate
  total = max(1, int(steps_per_epoch * num_epochs))
  warmup = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
  name = cfg.get("schedule", "constant")
  if name in ("cosine", "warmup_cosine") and warmup >= total:
    raise ValueError(f"optimizer.warmup_epochs={cfg.get('warmup_epochs')} leaves no steps to decay "
                     f"over in num_epochs={num_epochs} ({warmup} warmup of {total} steps): lower "
                     "warmup_epochs or train longer")
  if name == "constant":
    sched = optax.constant_schedule(lr)
    if warmup:
      sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), sched], [warmup])
    return sched
  if name in ("cosine", "warmup_cosine"):
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, total,
                                              end_value=cfg.get("end_learning_rate", 0.0))
  if name == "piecewise":
    boundaries = {int(e * steps_per_epoch): s for e, s in
                  zip(cfg.get("decay_epochs", (num_epochs // 2, 3 * num_epochs // 4)),
                      cfg.get("decay_factors", (0.1, 0.1)))}
    return optax.piecewise_constant_schedule(lr, boundaries)
  if name == "onecycle":
    return optax.cosine_onecycle_schedule(total, lr)
  if name == "exponential":
    return optax.exponential_decay(lr, max(1, round(steps_per_epoch)), cfg.get("decay_rate", 0.95))
  raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


def _decay_mask(params: Any) -> Any:
  """Weight decay on kernels only, not on biases or batch-norm scales (ndim > 1)."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg: ConfigDict, steps_per_epoch: int, num_epochs: int, *,
                   skip_nonfinite: bool = False, frozen: Sequence[str] = (),
                   params: Any = None) -> tuple[optax.GradientTransformation, Callable[[int], float]]:
  """The optax transformation described by `cfg` (config.optimizer).

  steps_per_epoch counts train steps (micro-batches). With `accumulate_steps` k,
  `optax.MultiSteps` applies one update every k steps and the wrapped schedule advances
  once per *update*, so the schedule is built over steps_per_epoch / k updates per epoch
  (built over micro-steps, a cosine would end at 0.92 of its peak instead of 0 for k=4).

  Returns (tx, learning_rate): learning_rate(step) is the rate the update made at train
  step `step` (0-based) applies, what the loop logs.
  skip_nonfinite: `optax.apply_if_finite` drops updates with a NaN / inf gradient.
  frozen: parameter path prefixes (needs `params`, a pytree of arrays or shapes) that
  get zero updates (`transfer.freeze`).
  """
  k = max(1, int(cfg.get("accumulate_steps", 1)))
  sched = make_schedule(cfg, steps_per_epoch / k, num_epochs)
  name = cfg.name
  wd = cfg.get("weight_decay", 0.0)
  if name == "adamw":
    tx = optax.adamw(sched, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                     weight_decay=wd, mask=_decay_mask)
  else:
    if name == "sgd":
      base = optax.sgd(sched)
    elif name in ("momentum", "nesterov"):
      base = optax.sgd(sched, momentum=cfg.get("momentum", 0.9),
                       nesterov=name == "nesterov" or cfg.get("nesterov", False))
    elif name == "adam":
      base = optax.adam(sched, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999))
    elif name == "rmsprop":
      base = optax.rmsprop(sched, decay=cfg.get("decay", 0.9), momentum=cfg.get("momentum", 0.0))
    else:
      raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    # Classic L2 weight decay: added to the gradient before the update rule.
    tx = optax.chain(optax.add_decayed_weights(wd, _decay_mask), base) if wd else base
  if cfg.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  if frozen:
    tx = transfer.freeze(tx, params, frozen)
  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k)
  if skip_nonfinite:  # outermost: a non-finite micro-batch never reaches the accumulator
    tx = optax.apply_if_finite(tx, max_consecutive_errors=2**30)
  return tx, lambda step: float(sched(int(step) // k))
