"""Metrics to JSON lines and TensorBoard (tensorboardX), from process 0 only."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np


class MetricWriter:
  """Writes `{"step", "time", <prefix>/<name>: value}` lines to metrics.jsonl and TB events."""

  def __init__(self, workdir: str, enabled: Optional[bool] = None, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._file = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")
      if tensorboard:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str) -> None:
    if not self.enabled:
      return
    values = {f"{prefix}/{k}": float(np.asarray(v)) for k, v in metrics.items()}
    self._file.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))

  def flush(self) -> None:
    if self._file:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._file:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All lines of a run's metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
