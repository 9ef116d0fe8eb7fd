"""The work directory: local or remote (gs://, s3://) paths, and the checks a local one gets.

Paths go through `etils.epath` (as orbax does), so `gs://bucket/run` stays a bucket
path; `os.path.abspath` would have turned it into a local `./gs:/bucket/run`. The
write probe and the free-space check only make sense on a local disk and are skipped
for remote paths (a bucket has no "free space"; a failed save is reported by orbax).
"""
from __future__ import annotations

import os
import shutil
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike, epath.Path]


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


def check_free_space(workdir: epath.Path, needed_bytes: int) -> None:
  """A checkpoint needs room for a new step while the previous one still exists."""
  if is_remote(workdir):
    return
  free = shutil.disk_usage(os.fspath(workdir)).free
  if free < needed_bytes:
    raise RuntimeError(f"work directory {workdir} has {free / 2**20:.0f} MiB free but one "
                       f"checkpoint needs about {needed_bytes / 2**20:.0f} MiB; free space or "
                       "choose another --workdir")
