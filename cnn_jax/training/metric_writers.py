"""Metrics to JSON lines and TensorBoard (tensorboardX), from process 0 only.

For a training run (the trainer passes its config) the writer also records the run's start
and end in status.json (`run_status`: finished / preempted / failed, what `cnn-jax runs`
shows) and copies every line to MLflow when config.tracking asks (`mlflow_writer`).

The work directory is an `etils.epath` path. Object stores (gs://) cannot append to a
file, so for a remote work directory the lines are kept and the whole file is
rewritten on each flush; a local file is appended to and flushed line by line.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np
from etils import epath

from cnn_jax.training import guards, mlflow_writer, run_status
from cnn_jax.training import workdir as workdir_lib

log = logging.getLogger("cnn_jax")


def _summary_writer_class() -> Any:
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch whenever it is installed (only to accept torch tensors),
  which cost 1.3-2.4 s of every run's start-up here. We pass numpy, so torch is hidden
  during that import when nothing has imported it yet; tensorboardX handles its absence.
  """
  import sys
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # type: ignore[assignment] - makes `import torch` fail
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


class _EventThreadDead(Exception):
  """tensorboardX's event thread is gone: its queue will never be read again."""


def _event_writers(tb: Any) -> list[Any]:
  """tensorboardX's EventFileWriters of a SummaryWriter ([] for another layout)."""
  try:
    return [w.event_writer for w in tb.all_writers.values()]
  except AttributeError:
    return []


def _event_thread_alive(events: Any) -> bool:
  worker = getattr(events, "_worker", None)
  return worker is None or worker.is_alive()  # None: closed (writes are then dropped)


class _GuardedQueue:
  """tensorboardX's bounded event queue, whose `put` stops waiting when the thread that
  reads it has died (it dies on the first write error, e.g. a full disk): a plain `put`
  then blocked the training loop forever once 10 events were waiting."""

  def __init__(self, events: Any):
    self._events, self._queue = events, events._event_queue

  def put(self, item: Any) -> None:
    import queue
    while True:
      try:
        return self._queue.put(item, timeout=1.0)
      except queue.Full:
        if not _event_thread_alive(self._events):
          raise _EventThreadDead() from None

  def __getattr__(self, name: str) -> Any:
    return getattr(self._queue, name)


class MetricWriter:
  """Writes `{"step", "time", <prefix>/<name>: value}` lines to metrics.jsonl and TB events."""

  def __init__(self, workdir: workdir_lib.PathLike, enabled: Optional[bool] = None,
               tensorboard: bool = True, resume_step: Optional[int] = None,
               config: Optional[Any] = None):
    """resume_step: the step the run (re)starts from. Lines past it were written by an
    interrupted run after its last checkpoint and are about to be written again: they
    move to metrics.superseded.jsonl (kept, not lost), so that metrics.jsonl reads as
    one run, with no step twice.
    config: the run's, when this writer is a training run's (the trainer's): its start and
    end go to status.json, and config.tracking adds the MLflow writer. `close` must then
    be called from the run's `finally`: how the run ends is the exception passing there."""
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._remote = workdir_lib.is_remote(workdir)
    self._lines: list[str] = []
    self._tb = None
    self._fd: Optional[int] = None
    self._pending = b""
    self._failing = False
    self._tracking: Optional[mlflow_writer.MLflowWriter] = None
    self._status: Optional[dict] = None
    self._last_step: Optional[int] = None
    if self.enabled and config is not None:  # first: a bad tracking URI fails before any file
      self._tracking = mlflow_writer.from_config(config, os.fspath(workdir))
      if not self._remote:
        self._status = run_status.started(os.fspath(workdir))
    if self.enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if resume_step is not None and self.path.exists():
        self._set_aside_after(resume_step)
      if self._remote:
        self._lines = self.path.read_text().splitlines(True) if self.path.exists() else []
      else:
        # A raw O_APPEND descriptor: a write cut short by a full disk says how much it
        # wrote, so what is left waits in `_pending` and no line is written twice or torn.
        self._fd = os.open(os.fspath(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
      if tensorboard:
        self._tb = _summary_writer_class()(str(epath.Path(workdir) / "tensorboard"))
        for w in _event_writers(self._tb):
          w._event_queue = _GuardedQueue(w)

  def _set_aside_after(self, step: int) -> None:
    lines = self.path.read_text().splitlines(True)
    keep, later = [], []
    for line in lines:
      try:
        (later if json.loads(line)["step"] > step else keep).append(line)
      except (ValueError, KeyError, TypeError):  # a line cut short by a kill: not the run's
        later.append(line if line.endswith("\n") else line + "\n")
    if not later:
      return
    aside = self.path.parent / "metrics.superseded.jsonl"
    previous = aside.read_text() if aside.exists() else ""
    aside.write_text(previous + "".join(later))
    tmp = self.path.parent / "metrics.jsonl.tmp"
    tmp.write_text("".join(keep))
    tmp.replace(self.path)

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str) -> None:
    if not self.enabled:
      return
    values = {f"{prefix}/{k}": float(np.asarray(v)) for k, v in metrics.items()}
    now = time.time()
    line = json.dumps({"step": int(step), "time": now, **values}) + "\n"
    self._last_step = int(step)
    if self._tracking is not None:
      self._tracking.write(step, values, now)
    if self._remote:
      self._lines.append(line)
    else:
      self._pending += line.encode()
      self._drain()
    try:
      for k, v in values.items():
        if self._tensorboard() is not None:
          self._tb.add_scalar(k, v, int(step))
    except _EventThreadDead:
      self._drop_tensorboard()
    except OSError:  # TensorBoard is a copy of metrics.jsonl: never worth the run
      pass

  def _tensorboard(self) -> Any:
    """The TensorBoard writer while its event thread lives; else None, said once.

    tensorboardX writes events from a background thread that dies on an I/O error (a full
    disk) and leaves its bounded queue (10 events) unread: the next events would block the
    training loop forever (seen in tests/test_settings.py's full-disk test). A dead
    writer is dropped, never closed (its close() waits on the same queue)."""
    if self._tb is not None and not all(_event_thread_alive(w) for w in _event_writers(self._tb)):
      self._drop_tensorboard()
    return self._tb

  def _drop_tensorboard(self) -> None:
    for w in _event_writers(self._tb):
      queue = getattr(w, "_event_queue", None)
      if isinstance(queue, _GuardedQueue):
        queue.cancel_join_thread()  # or exiting would wait on the unread queue
    log.error("TensorBoard's event writer in %s stopped (disk full?); TensorBoard output ends "
              "here, metrics.jsonl goes on", self.path.parent / "tensorboard")
    self._tb = None

  def _drain(self) -> None:
    """Write what waits; on a full disk keep it for the next call (one log line each way).

    Only whole lines stay in the file: a write the disk cut short mid-line is truncated
    back to its last complete line (the rest waits), so that a run that ends while the disk
    is still full leaves no torn line (it left a 78-byte one)."""
    while self._pending:
      size = os.fstat(self._fd).st_size  # where this write starts (O_APPEND, one writer)
      try:
        n = os.write(self._fd, self._pending)
        if n < len(self._pending) and self._pending[n - 1:n] != b"\n":
          whole = self._pending.rfind(b"\n", 0, n) + 1
          os.ftruncate(self._fd, size + whole)
          self._pending = self._pending[whole:]
          raise OSError(errno.ENOSPC, "No space left on device (a write was cut short)")
      except OSError as e:
        if not self._failing:
          log.error("cannot write %s (%s): metric lines are kept in memory and written when "
                    "there is room; training goes on", self.path, e.strerror or e)
          self._failing = True
        return
      self._pending = self._pending[n:]
    if self._failing:
      log.warning("%s is written again (the lines that waited are in)", self.path)
      self._failing = False

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    """A uint8 HWC (or HW) image to TensorBoard (process 0 only)."""
    if image is not None and self._tensorboard() is not None:
      try:
        self._tb.add_image(tag, image if image.ndim == 3 else image[..., None], int(step),
                           dataformats="HWC")
      except _EventThreadDead:
        self._drop_tensorboard()

  def flush(self) -> None:
    if self._remote and self.enabled:
      self.path.write_text("".join(self._lines))
    if self._fd is not None:
      self._drain()
    if self._tracking is not None:
      self._tracking.flush()
    if self._tensorboard() is not None:
      try:
        self._tb.flush()
      except OSError:
        pass

  def close(self) -> None:
    ending = _ending(sys._getframe(1))  # before anything here can raise or catch
    self.flush()
    if self._tracking is not None:
      self._tracking.close(ending[0])
      self._tracking = None
    if self._status is not None:
      run_status.ended(os.fspath(self.path.parent), self._status, ending[0], self._last_step,
                       ending[1])
      self._status = None
    if self._fd is not None:
      if self._pending:  # still no room: print them rather than lose them
        log.error("%d metric lines could not be written to %s (disk full?); here they are:\n%s",
                  self._pending.count(b"\n"), self.path, self._pending.decode(errors="replace"))
        self._pending = b""
      os.close(self._fd)
      self._fd = None
    if self._tensorboard() is not None:
      try:
        self._tb.close()
      except OSError:
        pass
      self._tb = None


def _ending(caller: Any) -> tuple[str, Optional[str]]:
  """(status, error) of the run whose `finally` (in frame `caller`) calls close(): the
  exception propagating through that frame, if any. One handled by an outer `except`
  (a sweep that retries a trial) is not this run's, hence the frame check."""
  exc = sys.exc_info()[1]
  tb = exc.__traceback__ if exc is not None else None
  while tb is not None and tb.tb_frame is not caller:
    tb = tb.tb_next
  if tb is None:
    return "finished", None
  first = (str(exc).splitlines() or [""])[0][:500]
  if isinstance(exc, guards.Preempted):
    return "preempted", first
  return "failed", f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def read_metrics(workdir: workdir_lib.PathLike) -> list[dict[str, Any]]:
  """All lines of a run's metrics.jsonl."""
  text = (epath.Path(workdir) / "metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def window_mean(buffer: list[dict]) -> dict[str, float]:
  """Means over the steps of a logged window. A step skip_nonfinite_steps dropped
  (metrics["skipped"] 1) counts in `skipped` (the fraction) and `steps`, not in the other
  means: its NaN loss made the whole window's loss NaN."""
  fetched = jax.device_get(buffer)
  taken = [m for m in fetched if not m.get("skipped", 0.0)]
  out = {k: float(np.mean([m[k] for m in taken])) if taken else float("nan") for k in fetched[0]}
  if "skipped" in fetched[0]:
    out["skipped"] = float(np.mean([m["skipped"] for m in fetched]))
  out["steps"] = float(len(fetched))  # how many train steps this window covers
  return out


def since_process_start() -> Optional[float]:
  """Seconds since this process started (Linux /proc; None elsewhere): what a user waits
  from the command to the first step, imports and data loading included."""
  try:
    with open("/proc/self/stat") as f:
      start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 2)
  except (OSError, ValueError, IndexError):
    return None
