"""Scopes in which the libraries' second report of a fault cnn_jax reports itself is dropped.

A failed checkpoint save and an unreadable checkpoint are each reported by cnn_jax in one
line (trainer.py, checkpoint.py). The libraries report the same fault again, with
tracebacks: orbax's save threads log it through absl at ERROR; asyncio logs "Task
exception was never retrieved" for orbax's failed tasks when they are collected; and
tensorstore's I/O callbacks, arriving after orbax closed their event loop, raise
"Event loop is closed" into `sys.unraisablehook` (48 per unreadable checkpoint, 118 on a
full disk: the log of one full-disk run held 197 tracebacks).

Inside `quiet()` those, and only those, are dropped; everything else passes as before.
The scope is entered while a `checkpoint.Checkpoints` is open and around inference's
restore attempts; nested and overlapping scopes count. The one thing left after it: the
unraisable hook keeps dropping tensorstore's "Event loop is closed" callbacks, which
arrive from its threads whenever an abandoned operation ends (see `_late_callback`).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

_lock = threading.RLock()  # a finalizer run by gc.collect() may open or close a scope
_depth = 0
_previous_hook: Optional[Callable[[Any], None]] = None
_previous_thread_hook: Optional[Callable[[Any], None]] = None


def _settle(timeout: float = 10.0) -> None:
  """Wait, up to `timeout` in all, for the tensorstore operations still in flight: after a
  failed save or read orbax gives up while tensorstore goes on, and each operation that
  ends after orbax closed its event loop reports "Event loop is closed" (seen after the
  scope, in whatever ran next). Nothing is in flight after a run without failures."""
  deadline = time.time() + timeout
  for o in gc.get_objects():
    if type(o).__name__ == "Future" and type(o).__module__.startswith("tensorstore"):
      try:
        if not o.done():
          o.result(deadline=deadline)
      except Exception:  # noqa: BLE001 - its failure is the one already reported
        pass


def _through(tb: Any, packages: tuple[str, ...]) -> bool:
  """Whether a traceback passes through one of `packages` (by file path)."""
  while tb is not None:
    if any(f"/{p}/" in tb.tb_frame.f_code.co_filename for p in packages):
      return True
    tb = tb.tb_next
  return False


def _late_callback(unraisable: Any) -> bool:
  """tensorstore's completion callback into the event loop orbax already closed: raised
  in tensorstore's own thread (the traceback starts in asyncio's call_soon_threadsafe,
  with no Python caller), whenever an operation orbax abandoned ends: often long after
  the scope (87 of them in the next test's run). The one report let through after it."""
  tb, e = unraisable.exc_traceback, unraisable.exc_value
  return (isinstance(e, RuntimeError) and str(e) == "Event loop is closed" and tb is not None
          and tb.tb_frame.f_code.co_name == "call_soon_threadsafe")


def _unraisable_hook(unraisable: Any) -> None:
  """In a scope: drops tensorstore's "Event loop is closed" and the errors of orbax's
  abandoned read / write coroutines when they are collected. After it: only the late
  callbacks (`_late_callback`). Everything else goes on to the hook it replaced."""
  e, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
  noise = _late_callback(unraisable) or _depth > 0 and (
      (isinstance(e, RuntimeError) and str(e) == "Event loop is closed")
      or "/orbax/" in getattr(code, "co_filename", "")
      or _through(unraisable.exc_traceback, ("orbax", "tensorstore")))
  if not noise:
    (_previous_hook or sys.__unraisablehook__)(unraisable)


def _thread_hook(args: Any) -> None:
  """A library's writer thread dying of an I/O error (tensorboardX's on a full disk): the
  caller reports the failure; other threads' errors pass."""
  if not (isinstance(args.exc_value, OSError)
          and _through(args.exc_traceback, ("tensorboardX", "orbax"))):
    (_previous_thread_hook or threading.__excepthook__)(args)


class _Filter(logging.Filter):
  """asyncio's never-retrieved task errors and orbax's own ERROR reports (the caller
  reports each failure once); an orbax warning keeps its line but loses its traceback.
  (Whether absl names orbax's file as the record's path depends on whether absl's logger
  class was set up before the "absl" logger existed: the traceback is checked too.)"""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == "asyncio":
      return "exception was never retrieved" not in record.getMessage().split("\n", 1)[0]
    exc = record.exc_info[2] if record.exc_info else None
    if "/orbax/" in record.pathname or _through(exc, ("orbax",)):
      if record.levelno >= logging.ERROR:
        return False
      record.exc_info, record.exc_text = None, None
    return True


_FILTER = _Filter()
_LOGGERS = ("absl", "asyncio")


def enter() -> None:
  """Start a quiet scope (pair each with `leave`)."""
  global _depth, _previous_hook, _previous_thread_hook
  with _lock:
    _depth += 1
    if _depth == 1:
      if sys.unraisablehook is not _unraisable_hook:  # it stays after the scope (see leave)
        _previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable_hook
      _previous_thread_hook, threading.excepthook = threading.excepthook, _thread_hook
      for name in _LOGGERS:
        logging.getLogger(name).addFilter(_FILTER)


def leave() -> None:
  """End a quiet scope; the last one waits for and collects what failed I/O left (its
  reports are dropped now, not printed later) and restores the thread hook and the
  loggers. The unraisable hook stays, passing everything on but tensorstore's late
  callbacks into a closed loop, which no scope can wait for (`_late_callback`)."""
  global _depth, _previous_thread_hook
  with _lock:
    if _depth == 1:
      _settle()
      gc.collect()
    _depth = max(0, _depth - 1)
    if _depth == 0:
      if threading.excepthook is _thread_hook:
        threading.excepthook = _previous_thread_hook or threading.__excepthook__
      _previous_thread_hook = None
      for name in _LOGGERS:
        logging.getLogger(name).removeFilter(_FILTER)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
  enter()
  try:
    yield
  finally:
    leave()
