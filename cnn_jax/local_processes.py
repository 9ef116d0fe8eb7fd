"""`cnn-jax train --processes N`: one run as N processes on this machine, one per core group.

On a CPU, one XLA process does not keep every core busy through a training step (its
convolutions scale poorly past one core), while N processes each pinned to its own cores,
joined by `jax.distributed` over 127.0.0.1 (Gloo collectives), each run 1/N of the batch.
It is the same data-parallel run as on N hosts: one global batch, gradients averaged, one
work directory (process 0 writes logs and metrics, orbax coordinates the checkpoints), so
a resume, a signal and the work-directory lock behave as for hosts, and the result equals
one process's up to the order of the gradient sums.

The parent only starts, watches and stops the processes: SIGINT / SIGTERM are passed on
(each checkpoints and exits), and if one process dies the others are stopped rather than
left waiting in a collective for ever.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence

POLL_S = 0.2


def split_argument(argv: Sequence[str]) -> tuple[int, list[str]]:
  """(N of --processes N, the other arguments)."""
  rest, n, it = [], 1, iter(argv)
  for a in it:
    if a == "--processes" or a.startswith("--processes="):
      value = a.split("=", 1)[1] if "=" in a else next(it, "")
      if not value.isdigit():
        raise ValueError(f"--processes takes a number of processes, got {value!r}")
      n = int(value)
    else:
      rest.append(a)
  return n, rest


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def core_groups(n: int, cores: Optional[Sequence[int]] = None) -> list[list[int]]:
  """The cores this process may use, split into n contiguous groups as even as possible."""
  cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
  if not 1 <= n <= len(cores):
    raise ValueError(f"--processes {n}: this machine gives this process {len(cores)} cores; "
                     f"use 1 to {len(cores)} processes")
  size, extra = divmod(len(cores), n)
  groups, start = [], 0
  for i in range(n):
    stop = start + size + (1 if i < extra else 0)
    groups.append(cores[start:stop])
    start = stop
  return groups


def commands(train_args: Sequence[str], n: int, port: int) -> list[list[str]]:
  """Each process's command: the same `train` arguments plus its place in the job, under
  `parallel="pmap"` unless the arguments choose a mode: there the gradients, metrics and
  batch statistics cross processes in one all-reduce per dtype (`steps.fused_pmean`),
  where the sharded path's all-reduce makes one Gloo call per array (XLA:CPU's runtime
  loops over a combined all-reduce's buffers): resnet20 trained at 212 img/s on 2
  processes under pmap, 127 sharded, 167 as one process (benchmarks/processes_scaling.py)."""
  chosen = any(a == "--config.parallel" or a.startswith("--config.parallel=")
               for a in train_args)
  mode = [] if chosen or n == 1 else ["--config.parallel=pmap"]
  return [[sys.executable, "-m", "cnn_jax.cli", "train", *train_args, *mode,
           f"--config.distributed.coordinator_address=127.0.0.1:{port}",
           f"--config.distributed.num_processes={n}",
           f"--config.distributed.process_id={i}"] for i in range(n)]


def run(train_args: Sequence[str], n: int) -> int:
  """Run `cnn-jax train train_args` as n pinned processes; the worst exit code."""
  if n < 1:
    raise ValueError(f"--processes must be at least 1, got {n}")
  groups = core_groups(n)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  procs = []
  for i, cmd in enumerate(commands(train_args, n, free_port())):
    cores = groups[i]
    procs.append(subprocess.Popen(
        cmd, env=env, stdout=None if i == 0 else subprocess.DEVNULL,
        preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores)))
  print(f"cnn-jax train: {n} processes on cores {' | '.join(','.join(map(str, g)) for g in groups)}",
        file=sys.stderr, flush=True)

  def forward(signum, _frame):  # each process checkpoints and exits with 128 + signum
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.poll() not in (None, 0)]
      if failed:  # the others would wait in a collective for ever
        time.sleep(2)
        for p in procs:
          if p.poll() is None:
            p.terminate()
      time.sleep(POLL_S)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  codes = [p.wait() for p in procs]
  return next((c for c in codes if c != 0), 0)
