"""Optimizers and learning-rate schedules from optax, chosen by config."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import optax
from flax import traverse_util
from ml_collections import ConfigDict

from cnn_jax import transfer

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "piecewise", "onecycle", "exponential",
             "triangular")


WARMUP_SCHEDULES = ("constant", "cosine", "warmup_cosine", "triangular")  # the ones warmup_epochs applies to
END_SCHEDULES = ("cosine", "warmup_cosine", "triangular")  # the ones end_learning_rate applies to


def piecewise_decays(cfg: ConfigDict, num_epochs: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(decay epochs, factors) of the piecewise schedule, checked: one factor per epoch,
  epochs increasing and inside (0, num_epochs). `zip` would drop an epoch without a
  factor, and an epoch at or past num_epochs never applies: both silently.

  decay_epochs None: 1/2 and 3/4 of num_epochs (fractions, so a 1-epoch run decays too);
  decay_factors None: 0.1 at each decay epoch."""
  epochs = cfg.get("decay_epochs")
  epochs = (num_epochs / 2, 3 * num_epochs / 4) if epochs is None else tuple(epochs)
  factors = cfg.get("decay_factors")
  factors = (0.1,) * len(epochs) if factors is None else tuple(factors)
  numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in epochs + factors)
  problem = (
      "they must be numbers" if not numbers else
      f"{len(epochs)} decay epoch(s) but {len(factors)} factor(s): give one factor per epoch"
      if len(epochs) != len(factors) else
      "decay_epochs must increase" if any(b <= a for a, b in zip(epochs, epochs[1:])) else
      f"every decay epoch must lie inside (0, num_epochs={num_epochs}) (later ones never apply; "
      "scale learning_rate instead of decaying at 0)" if not all(0 < e < num_epochs for e in epochs)
      else "decay_factors must be positive" if not all(f > 0 for f in factors) else None)
  if problem:
    raise ValueError(f"optimizer.decay_epochs={cfg.get('decay_epochs')} / decay_factors="
                     f"{cfg.get('decay_factors')} for the piecewise schedule: {problem}")
  return epochs, factors


def check_schedule(cfg: ConfigDict, steps_per_epoch: float, num_epochs: int) -> None:
  """One-line errors for schedule settings that would be wrong or silently unused, before
  anything compiles (`setup` builds the optimizer first)."""
  name = cfg.get("schedule", "constant")
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
  warmup_epochs = cfg.get("warmup_epochs", 0) or 0
  if warmup_epochs < 0:
    raise ValueError(f"optimizer.warmup_epochs must be >= 0, got {warmup_epochs}")
  if warmup_epochs and name not in WARMUP_SCHEDULES:
    raise ValueError(f"optimizer.warmup_epochs={warmup_epochs} is not used by the {name!r} "
                     f"schedule (only by {', '.join(WARMUP_SCHEDULES)}); set it to 0")
  if cfg.get("end_learning_rate", 0.0) and name not in END_SCHEDULES:
    raise ValueError(f"optimizer.end_learning_rate={cfg.end_learning_rate} is used only by the "
                     f"{', '.join(END_SCHEDULES)} schedules, not {name!r}; set it to 0")
  total = max(1, int(steps_per_epoch * num_epochs))
  warmup = int(warmup_epochs * steps_per_epoch)
  if warmup and warmup >= total:
    raise ValueError(f"optimizer.warmup_epochs={warmup_epochs} leaves no steps to decay "
                     f"over in num_epochs={num_epochs} ({warmup} warmup of {total} steps): lower "
                     "warmup_epochs or train longer")
  if name == "piecewise":
    piecewise_decays(cfg, num_epochs)
  rate = cfg.get("decay_rate", 0.95)
  if name == "exponential" and not (isinstance(rate, (int, float)) and rate > 0):
    raise ValueError(f"optimizer.decay_rate must be > 0 (the rate's factor per epoch), got {rate!r}")


def make_schedule(cfg: ConfigDict, steps_per_epoch: float, num_epochs: int) -> optax.Schedule:
  """Learning-rate schedule over the whole run, counted in optimizer updates.

  Epochs in the config become updates (`steps_per_epoch` may be fractional: with
  gradient accumulation an epoch of 10 micro-batches is 2.5 updates of 4).
  """
  check_schedule(cfg, steps_per_epoch, num_epochs)
  lr = cfg.learning_rate
  total = max(1, int(steps_per_epoch * num_epochs))
  warmup = int((cfg.get("warmup_epochs", 0) or 0) * steps_per_epoch)
  name = cfg.get("schedule", "constant")
  if name == "constant":
    sched = optax.constant_schedule(lr)
    if warmup:
      sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), sched], [warmup])
    return sched
  if name in ("cosine", "warmup_cosine"):
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, total,
                                              end_value=cfg.get("end_learning_rate", 0.0))
  if name == "piecewise":
    boundaries: dict[int, float] = {}
    for epoch, factor in zip(*piecewise_decays(cfg, num_epochs)):  # checked: equal lengths
      step = int(epoch * steps_per_epoch)  # two epochs in one update: both factors apply
      boundaries[step] = boundaries.get(step, 1.0) * factor
    return optax.piecewise_constant_schedule(lr, boundaries)
  if name == "onecycle":
    return optax.cosine_onecycle_schedule(total, lr)
  if name == "triangular":  # airbench's: 0.2 lr up to lr (warmup_epochs, else a fifth of
    rise = warmup or max(1, int(0.2 * total))  # the run), then straight down to the end
    return optax.join_schedules(
        [optax.linear_schedule(0.2 * lr, lr, rise),
         optax.linear_schedule(lr, cfg.get("end_learning_rate", 0.0), total - rise)], [rise])
  # decay_rate per epoch, even of a fractional number of updates (gradient accumulation)
  return optax.exponential_decay(lr, steps_per_epoch, cfg.get("decay_rate", 0.95))


# The optimizer keys only some optimizers / schedules read. A resume compares only the keys
# the run's optimizer and schedule use (training/resume.py): a changed default of a key
# the run never read is no change to it.
_OPTIMIZER_ONLY = {"momentum": ("momentum", "nesterov", "rmsprop"), "b1": ("adam", "adamw"),
                   "b2": ("adam", "adamw"), "decay": ("rmsprop",)}
_SCHEDULE_ONLY = {"warmup_epochs": WARMUP_SCHEDULES, "end_learning_rate": END_SCHEDULES,
                  "decay_epochs": ("piecewise",), "decay_factors": ("piecewise",),
                  "decay_rate": ("exponential",)}


def unused_keys(cfg: Any) -> set[str]:
  """The config.optimizer keys that `cfg` (a ConfigDict or its JSON dict) never reads."""
  name, schedule = cfg.get("name"), cfg.get("schedule", "constant")
  return ({k for k, users in _OPTIMIZER_ONLY.items() if name not in users}
          | {k for k, users in _SCHEDULE_ONLY.items() if schedule not in users})


def _decay_mask(params: Any) -> Any:
  """Weight decay on kernels only, not on biases or batch-norm scales (ndim > 1)."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def norm_bias_mask(params: Any) -> Any:
  """True on the biases of layers without a kernel: batch / layer norms' shifts."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {path: path[-1] == "bias" and path[:-1] + ("kernel",) not in flat for path in flat})


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
  # airbench's 64x learning rate for batch-norm biases (a scale-free shift learns slowly).
  bias_scale = cfg.get("norm_bias_lr_scale", 1.0)
  if bias_scale != 1.0:
    tx = optax.chain(tx, optax.masked(optax.scale(bias_scale), norm_bias_mask))
  if cfg.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  if frozen:
    tx = transfer.freeze(tx, params, frozen)
  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k)
  if skip_nonfinite:  # outermost: a non-finite micro-batch never reaches the accumulator
    tx = optax.apply_if_finite(tx, max_consecutive_errors=2**30)
  return tx, lambda step: float(sched(int(step) // k))
