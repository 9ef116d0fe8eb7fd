"""The work directory: local or remote (gs://, s3://) paths, and the checks a local one gets.

Paths go through `etils.epath` (as orbax does), so `gs://bucket/run` stays a bucket
path; `os.path.abspath` would have turned it into a local `./gs:/bucket/run`. The
write probe and the free-space check only make sense on a local disk and are skipped
for remote paths (a bucket has no "free space"; a failed save is reported by orbax).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from typing import Iterator, Union

from etils import epath

PathLike = Union[str, os.PathLike, epath.Path]
log = logging.getLogger("cnn_jax")


def is_remote(workdir: PathLike) -> bool:
  """True for URLs such as gs://bucket/run or s3://bucket/run."""
  return "://" in os.fspath(workdir)


def resolve(workdir: PathLike) -> epath.Path:
  """An absolute local path, or the remote path unchanged."""
  text = os.fspath(workdir)
  if not text:
    raise ValueError("--workdir is empty; give a directory (local or gs://...)")
  return epath.Path(text if is_remote(text) else os.path.abspath(text))


def probe(workdir: epath.Path) -> None:
  """Fail at start-up, not at the first save, when the work directory is not writable."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    if is_remote(workdir):
      return
    path = os.path.join(os.fspath(workdir), f".write_probe_{os.getpid()}")
    with open(path, "wb") as f:
      f.write(b"\0" * 4096)
      f.flush()
      os.fsync(f.fileno())
    os.remove(path)
  except OSError as e:
    raise RuntimeError(f"work directory {workdir} is not writable ({e.strerror or e}); choose "
                       "another --workdir or free space / fix permissions") from e


def remove_if_nothing_saved(workdir: epath.Path) -> bool:
  """Remove a work directory this run created, when the run left nothing in it worth keeping.

  A run refused at start (bad settings, data not prepared, wrong image shape) must not
  leave an empty directory behind, which the next `ls` shows as a run. Kept whenever any
  file holds data: a checkpoint, a logged metric, a picture — nothing saved is removed.
  The config history and empty files are start-up bookkeeping, not results.
  """
  if is_remote(workdir) or not workdir.is_dir():
    return False
  for root, _, files in os.walk(os.fspath(workdir)):
    for name in files:
      path = os.path.join(root, name)
      if name not in ("config_history.jsonl", LOCK_FILE) and os.path.getsize(path) > 0:
        return False
  shutil.rmtree(os.fspath(workdir), ignore_errors=True)
  return True


def check_free_space(workdir: epath.Path, needed_bytes: int) -> None:
  """A checkpoint needs room for a new step while the previous one still exists."""
  if is_remote(workdir):
    return
  free = shutil.disk_usage(os.fspath(workdir)).free
  if free < needed_bytes:
    raise RuntimeError(f"work directory {workdir} has {free / 2**20:.0f} MiB free but one "
                       f"checkpoint needs about {needed_bytes / 2**20:.0f} MiB; free space or "
                       "choose another --workdir")


LOCK_FILE = "run.lock"


def process_alive(pid: int) -> bool:
  """Whether process `pid` on this host is alive (a lock holder, a sweep worker). A zombie
  (killed, not yet reaped by its parent: a sweep's local worker while the sweep waits on
  another, a run killed under a shell that has not waited) is gone: it holds nothing."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False
  except OSError:  # no /proc (macOS): ask the kernel
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:  # someone else's live process
      return True
    return True


@contextlib.contextmanager
def lock(workdir: epath.Path, is_main: bool = True) -> Iterator[None]:
  """One run per work directory: a second one would interleave its metrics with the first's,
  lose one of their best/ saves and leave stale steps behind.

  `run.lock` (host, PID, start time) is created atomically (O_EXCL) by the main process of
  the job and removed when the run ends, however it ends. A lock left by a dead process on
  this host (SIGKILL, OOM) is taken over with a warning; one held by a live process, or by
  another host (whose process cannot be checked from here), is refused with what to do.
  Remote work directories (gs://) have no atomic create: not locked, said once.
  """
  if not is_main:
    yield
    return
  if is_remote(workdir):
    log.info("%s is remote: not locked against a second run (no atomic create)", workdir)
    yield
    return
  path = os.path.join(os.fspath(workdir), LOCK_FILE)
  me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      break
    except FileExistsError:
      try:
        with open(path) as f:
          held = json.load(f)
      except (OSError, ValueError):  # half-written by a process killed mid-write
        held = {}
      same_host = held.get("host") == me["host"]
      if not held or (same_host and held.get("pid") and not process_alive(int(held["pid"]))):
        log.warning("taking over the lock of a run that is gone (%s): %s", held or "unreadable",
                    path)
        os.remove(path)
        continue
      since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("started", 0)))
      raise RuntimeError(
          f"work directory {workdir} is in use by another run (pid {held.get('pid')} on host "
          f"{held.get('host')}, since {since}). Wait for it, use another --workdir, or, if "
          f"that run is gone (e.g. its host died), delete {path}")
  else:
    raise RuntimeError(f"could not take the lock {path}")
  with os.fdopen(fd, "w") as f:
    json.dump(me, f)
  try:
    yield
  finally:
    try:
      with open(path) as f:
        still_mine = json.load(f).get("pid") == me["pid"]
      if still_mine:
        os.remove(path)
    except (OSError, ValueError):
      pass
