"""Removing what failed checkpoint saves leave: `<step>.orbax-checkpoint-tmp*` folders.

On a full disk each such folder holds the space the next save needs, so it goes as soon
as the save has failed. But a failed save has not stopped writing when orbax reports it:
orbax raises the first error among a save's writes (its ChainedFuture stops waiting
there) while tensorstore goes on with the others, and tensorstore creates the
directories a write needs. Removing the folder under those writes raised "Directory not
empty: 'state.orbax-checkpoint-tmp'" (and ended a full-disk run), or let them create it
again after it was gone. So the writes still in flight are waited for first (orbax's
commit threads, then tensorstore's operations), and a folder that still cannot be removed
is left, not raised, for the next call.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Iterable

from etils import epath

log = logging.getLogger("cnn_jax")
PATTERN = "*.orbax-checkpoint-tmp*"


def wait_for_writes(timeout: float) -> None:
  """Wait, up to `timeout` in all, for the writes of saves orbax stopped waiting for: its
  commit threads still running, then the tensorstore operations still in flight."""
  deadline = time.time() + timeout
  for t in threading.enumerate():
    if (t is not threading.current_thread() and type(t).__name__ == "_SignalingThread"
        and type(t).__module__.startswith("orbax")):
      try:
        t.join(max(0.0, deadline - time.time()))
      except Exception:  # noqa: BLE001 - orbax's join re-raises the thread's error: the failed save's
        pass
  for o in gc.get_objects():
    if type(o).__name__ == "Future" and type(o).__module__.startswith("tensorstore"):
      try:
        if not o.done():
          o.result(deadline=deadline)
      except Exception:  # noqa: BLE001 - a failed write is the failed save, reported already
        pass


def remove(folders: Iterable[epath.Path], timeout: float = 10.0, attempts: int = 5) -> list[str]:
  """Delete every unfinished save in `folders` once nothing writes to it; the paths removed.

  Call it only when no save is in flight (after the checkpoint managers' waits): every
  such folder is then a failed save's. One that cannot be removed in `attempts` tries (or
  `timeout` seconds of waiting in all) is logged (debug) and left; the next call removes it.
  """
  deadline = time.time() + timeout
  pending = [p for f in folders if f.exists() for p in f.glob(PATTERN)]
  removed: list[str] = []
  for attempt in range(attempts):
    if not pending:
      break
    wait_for_writes(max(0.0, deadline - time.time()))
    left = []
    for path in pending:
      try:
        path.rmtree()
      except OSError as e:  # still written to (ENOTEMPTY), or another process removes it too
        log.debug("removing %s: %s (try %d of %d)", path, e, attempt + 1, attempts)
      if path.exists():
        left.append(path)
      else:
        removed.append(str(path))
    pending = left
    if pending:
      time.sleep(0.05 * (attempt + 1))
  return removed
