"""What stops a run cleanly: preemption signals, a non-finite loss, out-of-memory.

The loop asks these at its log / checkpoint steps; each one ends the run with a
checkpoint saved and a message that says what happened and what to do.
"""
from __future__ import annotations

import collections
import errno
import logging
import math

import signal
import threading
from typing import Any, Optional

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from cnn_jax import parallel

log = logging.getLogger("cnn_jax")


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""


class Preempted(Exception):
  """A SIGTERM / SIGINT / SIGUSR1 arrived; the state was checkpointed. Carries the signal."""

  def __init__(self, signum: int, step: int, path: Optional[str]):
    super().__init__(f"received {signal.Signals(signum).name}: saved a checkpoint at step {step} "
                     f"({path}); run the same command again to resume")
    self.signum, self.step, self.path = signum, step, path

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class SignalFlag:
  """Records SIGTERM / SIGINT / SIGUSR1 instead of dying, so the loop can checkpoint first.

  SLURM sends SIGUSR1 before a job's time limit (launch/slurm.sbatch), a scheduler
  SIGTERM before preemption, a user Ctrl-C (a second Ctrl-C stops at once).
  """
  SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

  def __init__(self):
    self.signum: Optional[int] = None
    self._old: dict = {}

  def __enter__(self) -> "SignalFlag":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)

  def raised(self) -> Optional[int]:
    """The signal, agreed on by every process (any one of them seeing it counts)."""
    return parallel.agree(self.signum or 0, max) or None


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def non_finite_error(loss: float, step: int, last_finite: tuple[int, Optional[float]],
                     last_good_checkpoint: str, grad_norm: Optional[float] = None
                     ) -> NonFiniteLossError:
  what = (f"the gradient norm became {grad_norm} (loss {loss})" if grad_norm is not None
          and not math.isfinite(grad_norm) and math.isfinite(loss) else f"loss became {loss}")
  return NonFiniteLossError(
      f"{what} by step {step} (last finite loss {last_finite[1]} at step "
      f"{last_finite[0]}). Last good checkpoint: {last_good_checkpoint}. Lower the learning "
      "rate, set --config.optimizer.grad_clip_norm, or skip such steps with "
      "--config.skip_nonfinite_steps=True.")


def check_skipped(window: dict[str, float], run: int, step: int, config: ConfigDict,
                  last_good_checkpoint: str) -> int:
  """skip_nonfinite_steps: warn when a logged window skipped half its steps or more; stop
  when max(log_every_steps, 20) steps in a row were skipped (a run whose every step is
  dropped used to train on silently, near chance). Returns the new count of steps in a row."""
  skipped = window.get("skipped")
  if skipped is None:
    return 0
  steps = int(window.get("steps", 1))
  run = run + steps if skipped >= 1.0 else 0
  if skipped >= 0.5:
    log.warning("step %d: %.0f%% of the last %d steps were skipped (non-finite gradients)",
                step, 100 * skipped, steps)
  limit = max(int(config.log_every_steps), 20)
  if run >= limit:
    raise NonFiniteLossError(
        f"every one of the last {run} steps (to step {step}) had non-finite gradients and was "
        f"skipped: the run no longer trains. Last good checkpoint: {last_good_checkpoint}. "
        "Lower the learning rate or set --config.optimizer.grad_clip_norm.")
  return run


class FaultLog:
  """One log line per kind of failure, not one per event: a full disk fails every save
  of the rest of the run (the log of one such run held 13 save errors and 12 cleanup lines
  among 4,117). The first of each kind is logged; repeats are counted, summed up once."""

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()

  @staticmethod
  def kind(e: BaseException) -> str:
    text = str(e)
    full = getattr(e, "errno", None) == errno.ENOSPC or "RESOURCE_EXHAUSTED" in text or (
        "No space left" in text)
    return "disk full" if full else type(e).__name__

  def report(self, e: BaseException, msg: str, *args: Any) -> None:
    kind = self.kind(e)
    self.counts[kind] += 1
    if self.counts[kind] == 1:
      log.error(msg + " (more failures of this kind are counted, not logged)", *args)

  def summary(self, what: str, last_good: Any) -> None:
    """One line for the repeats, if there were any."""
    for kind, n in self.counts.items():
      if n > 1:
        log.warning("%d more %s failed (%s) after the first; the last good checkpoint is step %s",
                    n - 1, what, kind, last_good)
    self.counts.clear()


def oom_hint(e: Exception, config: ConfigDict) -> Exception:
  """An out-of-memory error turned into one that says which setting to change."""
  if "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e):
    return MemoryError(
        f"batch_size={config.batch_size} of model {config.model!r} does not fit in device memory "
        f"({str(e).splitlines()[0][:200]}). Use a smaller --config.batch_size, or keep the effective "
        f"batch with gradient accumulation, e.g. --config.batch_size={max(1, config.batch_size // 4)} "
        "--config.optimizer.accumulate_steps=4")
  return e
