"""Learning-rate schedules built from the base config, by value, and their one-line errors.

tests/test_training.py::test_schedules_by_value builds each schedule from a hand-written
ConfigDict that names every key, so it could not see that base_config's decay_epochs=(5, 8)
made the num_epochs-relative default dead, nor that zip dropped an epoch without a factor.
"""
import re

import pytest

from cnn_jax.config import base_config
from cnn_jax.training import optim


def optimizer(**kw):
  c = base_config().optimizer
  c.learning_rate = 0.1
  for k, v in kw.items():
    c[k] = v
  return c


def rates(cfg, steps, spe=10, epochs=8):
  s = optim.make_schedule(cfg, spe, epochs)
  return [float(s(t)) for t in steps]


def test_piecewise_default_decays_at_half_and_three_quarters_of_the_run():
  # 8 epochs of 10 steps: x0.1 at epoch 4 (step 40), again at epoch 6 (step 60). Before:
  # (5, 8) from base_config whatever num_epochs, so at step 50 and never again.
  assert rates(optimizer(schedule="piecewise"), (39, 40, 59, 60, 79)) == pytest.approx(
      [0.1, 0.01, 0.01, 0.001, 0.001])
  # A 1-epoch run decays too (num_epochs // 2 = 0 would have decayed at step 0).
  assert rates(optimizer(schedule="piecewise"), (0, 4, 5, 6, 7), epochs=1) == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001])


def test_piecewise_given_epochs_and_factors():
  cfg = optimizer(schedule="piecewise", decay_epochs=(2, 5), decay_factors=(0.5, 0.2))
  assert rates(cfg, (19, 20, 49, 50)) == pytest.approx([0.1, 0.05, 0.05, 0.01])
  # decay_factors None: 0.1 at each given epoch
  assert rates(optimizer(schedule="piecewise", decay_epochs=(3,)), (29, 30, 79)) == \
      pytest.approx([0.1, 0.01, 0.01])
  # Two decay epochs inside one update (1 update per epoch): both factors apply.
  cfg = optimizer(schedule="piecewise", decay_epochs=(2.2, 2.6), decay_factors=(0.5, 0.5))
  assert rates(cfg, (1, 2), spe=1, epochs=4) == pytest.approx([0.1, 0.025])


@pytest.mark.parametrize("kw,message", [
    (dict(decay_epochs=(2, 4, 6), decay_factors=(0.1, 0.1)),
     "optimizer.decay_epochs=(2, 4, 6) / decay_factors=(0.1, 0.1) for the piecewise schedule: "
     "3 decay epoch(s) but 2 factor(s): give one factor per epoch"),
    (dict(decay_epochs=(5, 3)), "decay_epochs must increase"),
    (dict(decay_epochs=(5, 8)), r"every decay epoch must lie inside \(0, num_epochs=8\)"),
    (dict(decay_epochs=(0, 4)), r"every decay epoch must lie inside \(0, num_epochs=8\)"),
    (dict(decay_epochs=(4,), decay_factors=(-0.1,)), "decay_factors must be positive"),
])
def test_piecewise_errors(kw, message):
  with pytest.raises(ValueError) as e:
    optim.make_schedule(optimizer(schedule="piecewise", **kw), 10, 8)
  assert re.search(message, str(e.value)) or message in str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw,message", [
    (dict(schedule="piecewise", warmup_epochs=1.0),
     "optimizer.warmup_epochs=1.0 is not used by the 'piecewise' schedule"),
    (dict(schedule="onecycle", warmup_epochs=1.0), "is not used by the 'onecycle' schedule"),
    (dict(schedule="exponential", end_learning_rate=0.01),
     "optimizer.end_learning_rate=0.01 is used only by the cosine, warmup_cosine, triangular schedules, not 'exponential'"),
    (dict(schedule="constant", warmup_epochs=8.0), "warmup_epochs=8.0 leaves no steps"),
    (dict(schedule="cosine", warmup_epochs=-1.0), "warmup_epochs must be >= 0"),
    (dict(schedule="exponential", decay_rate=0.0), "decay_rate must be > 0"),
])
def test_settings_a_schedule_would_ignore_or_break_are_refused(kw, message):
  with pytest.raises(ValueError, match=message):
    optim.make_schedule(optimizer(**kw), 10, 8)


def test_every_schedule_builds_from_the_base_config():
  """No schedule trips over a base_config value it does not use (decay_epochs, ...)."""
  for name in optim.SCHEDULES:
    assert rates(optimizer(schedule=name), (0,))[0] >= 0
  assert rates(optimizer(schedule="exponential", decay_rate=0.5), (0, 10, 20)) == \
      pytest.approx([0.1, 0.05, 0.025])


def test_every_experiment_and_its_smoke_variant_builds_its_schedule():
  """cifar10_resnet20 decays at epochs (91, 136) of 182: its 1-epoch smoke run must shrink
  them with the run (before: silently never applied; with the range check: refused)."""
  import os
  import runpy
  root = os.path.join(os.path.dirname(__file__), "..", "experiments")
  for name in sorted(f for f in os.listdir(root) if f.endswith(".py")):
    get_config = runpy.run_path(os.path.join(root, name))["get_config"]
    for arg in (None, "smoke"):
      c = get_config(arg)
      optim.make_schedule(c.optimizer, 10, c.num_epochs)
  smoke = runpy.run_path(os.path.join(root, "cifar10_resnet20.py"))["get_config"]("smoke")
  assert smoke.optimizer.decay_epochs == pytest.approx((0.5, 136 / 182))
  assert rates(smoke.optimizer, (4, 5, 6, 7), epochs=1) == pytest.approx(
      [0.1, 0.01, 0.01, 0.001])


def test_exponential_and_constant_with_warmup_by_value():
  """Hand-computed rates (test_training.py::test_schedules_by_value has neither schedule).

  exponential: lr * decay_rate ** (step / steps_per_epoch), smooth, not a staircase;
  constant with warmup: lr * step / warmup_steps over the warmup, then lr."""
  cfg = optimizer(schedule="exponential", decay_rate=0.5)
  assert rates(cfg, (0, 5, 10, 15, 25, 79)) == pytest.approx(
      [0.1, 0.1 * 0.5 ** 0.5, 0.05, 0.05 * 0.5 ** 0.5, 0.025 * 0.5 ** 0.5,
       0.1 * 0.5 ** 7.9], rel=1e-6)
  assert rates(optimizer(schedule="exponential", decay_rate=0.9), (4,), spe=4) == \
      pytest.approx([0.09], rel=1e-6)
  # 1 warmup epoch of 10 steps: 0, 0.01, ..., 0.09, then 0.1 to the end.
  cfg = optimizer(schedule="constant", warmup_epochs=1.0)
  assert rates(cfg, (0, 1, 5, 9, 10, 11, 79)) == pytest.approx(
      [0.0, 0.01, 0.05, 0.09, 0.1, 0.1, 0.1], rel=1e-6)
  # Half an epoch of warmup is 5 steps: 0.02 per step.
  cfg = optimizer(schedule="constant", warmup_epochs=0.5)
  assert rates(cfg, (0, 2, 4, 5, 40)) == pytest.approx([0.0, 0.04, 0.08, 0.1, 0.1], rel=1e-6)
  assert rates(optimizer(schedule="constant"), (0, 40, 79)) == pytest.approx([0.1] * 3)


def test_exponential_decays_by_the_rate_per_epoch_with_fractional_epochs():
  """With gradient accumulation an epoch can be 2.5 updates: decay_rate applies per epoch,
  not per round(2.5) = 2 updates (before: 25% too fast; with 1.5 updates per epoch, rounded
  to 2, 25% too slow)."""
  cfg = optimizer(schedule="exponential", decay_rate=0.5)
  assert rates(cfg, (0, 5, 10), spe=2.5) == pytest.approx([0.1, 0.025, 0.00625], rel=1e-6)
  assert rates(cfg, (3, 6), spe=1.5) == pytest.approx([0.025, 0.00625], rel=1e-6)


def test_triangular_rises_from_a_fifth_then_falls_to_the_end_value_by_hand():
  # 8 epochs of 10 steps = 80: airbench's triangle rises over a fifth (16 steps) from
  # 0.2 * 0.1 to 0.1, then falls linearly to 0 at step 80.
  got = rates(optimizer(schedule="triangular"), (0, 8, 16, 48, 80))
  assert got == pytest.approx([0.02, 0.06, 0.1, 0.05, 0.0])
  # warmup_epochs sets the rise (2 epochs = 20 steps); end_learning_rate the floor.
  got = rates(optimizer(schedule="triangular", warmup_epochs=2.0, end_learning_rate=0.01),
              (0, 10, 20, 50, 80))
  assert got == pytest.approx([0.02, 0.06, 0.1, 0.055, 0.01])
