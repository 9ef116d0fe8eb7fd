"""What a run says while it runs: one start line, then progress a log file can show.

A tqdm bar redraws one line with carriage returns: in a terminal that is the best progress
display, in a log file (nohup, sbatch) it is a counter stuck at `0/468` until the epoch
ends. Off a terminal the loop writes plain lines instead, at most one per `interval`
seconds, each with the step, the epoch, images/s and the time left for the whole run.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Mapping, Optional, TextIO

import jax


def format_duration(seconds: float) -> str:
  """12s, 3m05s, 2h07m: as long as a person needs to read it."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(step: int, total_steps: int, images_per_sec: float, batch_size: int) -> Optional[float]:
  """Training time left at the measured speed (evaluation not counted); None: no speed yet."""
  if images_per_sec <= 0:
    return None
  return (total_steps - step) * batch_size / images_per_sec


def start_line(config: Any, steps_per_epoch: int, start_step: int) -> str:
  """What the run runs on, in one line: a run on 2 devices must not look like one on 1."""
  devices = jax.device_count()
  total = steps_per_epoch * config.num_epochs
  where = (f"{devices} {jax.devices()[0].platform} device{'s' if devices > 1 else ''} in "
           f"{jax.process_count()} process{'es' if jax.process_count() > 1 else ''}")
  epochs = f"{config.num_epochs} epoch{'s' if config.num_epochs > 1 else ''}"
  steps = (f"{total} steps ({epochs} of {steps_per_epoch})"
           + (f", from step {start_step}" if start_step else ""))
  return (f"training {config.model} on {where}, parallel={config.parallel}, {config.dtype}, "
          f"batch {config.batch_size} ({config.batch_size // devices} per device), {steps}")


class ProgressLines:
  """Plain progress lines for a log file; silent where a tqdm bar is drawn instead."""

  def __init__(self, total_steps: int, num_epochs: int, batch_size: int, enabled: bool,
               stream: Optional[TextIO] = None, interval: float = 10.0):
    self.total_steps, self.num_epochs, self.batch_size = total_steps, num_epochs, batch_size
    self.enabled, self.stream, self.interval = enabled, stream, interval
    self._last = -float("inf")

  def update(self, step: int, epoch: int, metrics: Mapping[str, float], force: bool = False) -> None:
    """Write a line for `step` if `interval` seconds passed since the last one (or `force`)."""
    now = time.monotonic()
    if not self.enabled or (not force and now - self._last < self.interval):
      return
    self._last = now
    ips = float(metrics.get("images_per_sec", 0.0))
    eta = eta_seconds(step, self.total_steps, ips, self.batch_size)
    parts = [f"step {step}/{self.total_steps}", f"epoch {epoch + 1}/{self.num_epochs}",
             f"loss {metrics['loss']:.4f}"]
    if "accuracy" in metrics:
      parts.append(f"acc {metrics['accuracy']:.4f}")
    parts.append(f"{ips:.0f} img/s")
    parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA -")
    # sys.stderr looked up now, not at import: it may have been replaced since.
    print(" | ".join(parts), file=self.stream or sys.stderr, flush=True)
