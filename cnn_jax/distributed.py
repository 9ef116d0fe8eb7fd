"""Multi-process (multi-host) start-up: decide how to call `jax.distributed.initialize`.

The decision is a pure function of the run config and the environment, so it can be
tested without a cluster:

    args = resolve_distributed_env(config.distributed, os.environ)

returns ``None`` (one process, nothing to initialise) or a `DistributedArgs`.
`initialize` applies it. Precedence, first match wins for each field:

1. explicit config: ``coordinator_address``, ``num_processes``, ``process_id``,
   ``local_device_ids`` (partial values are completed from the environment);
2. the plain environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
   ``JAX_PROCESS_ID`` (handy for hand-launched runs);
3. SLURM, when the process was started by ``srun`` in a step of more than one task;
4. Cloud TPU (GKE/GCE env markers, MEGASCALE multislice) or Open MPI: the marker
   ``auto_detect=True``, meaning "call ``jax.distributed.initialize()`` with no
   arguments", which JAX resolves itself (on a TPU VM it reads the GCE metadata server);
5. otherwise ``None``: single process.

JAX (0.10) can auto-detect SLURM itself (``jax._src.clusters.SlurmCluster``, selected when
``SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID`` are
all set). We parse SLURM explicitly anyway because (a) it is testable and overridable from
the config, (b) JAX's parser only reads the first host up to the first ``-``/``,`` of
the first bracket group (fine for ``node[001-004]``, wrong for ``rack[1-2]-n[01-02]``),
and (c) JAX always pins one GPU per process (``local_device_ids=[SLURM_LOCALID]``) under
SLURM, which is wrong for one task per node with all its GPUs, our default layout. When
we resolve the arguments ourselves we pass ``cluster_detection_method="deactivate"`` so
JAX does not second-guess them.

Config keys read (all optional; ``config_dist`` may be a dict, a ConfigDict or None):

  cluster: "auto" (default) | "none" | "slurm" | "tpu" | "jax"
      "none": never initialise (single process even under srun);
      "slurm": require the SLURM environment; "tpu"/"jax": call
      ``jax.distributed.initialize()`` with no arguments (JAX auto-detection).
  coordinator_address: "host:port"       num_processes: int     process_id: int
  coordinator_port: int (SLURM; default $JAX_COORDINATOR_PORT, else derived from the job id)
  local_device_ids: None (auto) | "all" | int | "0,1" | [0, 1]
  initialization_timeout: seconds (default 300)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Mapping, Optional, Sequence

logger = logging.getLogger(__name__)

CLUSTERS = ("auto", "none", "slurm", "tpu", "jax")
DEFAULT_INIT_TIMEOUT = 300

# Env markers that say "a Cloud TPU / multislice job": JAX's own cluster code knows how to
# read the rest (worker list, worker id, slice id), including from the GCE metadata server.
_TPU_MARKERS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID",
                "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS")


class DistributedConfigError(ValueError):
  """Inconsistent or incomplete multi-process configuration."""


@dataclasses.dataclass(frozen=True)
class DistributedArgs:
  """Arguments for `jax.distributed.initialize`.

  ``auto_detect=True`` means: call ``jax.distributed.initialize()`` without the four
  arguments below and let JAX detect the cluster (Cloud TPU, Open MPI). ``source`` says
  which rule produced the arguments ("config", "env", "slurm", "tpu", "ompi", "jax").
  """
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_ids: Optional[tuple[int, ...]] = None
  auto_detect: bool = False
  source: str = "config"
  initialization_timeout: int = DEFAULT_INIT_TIMEOUT

  def kwargs(self) -> dict[str, Any]:
    """Keyword arguments for `jax.distributed.initialize`."""
    kw: dict[str, Any] = {"initialization_timeout": self.initialization_timeout}
    if self.auto_detect:
      return kw
    kw.update(coordinator_address=self.coordinator_address,
              num_processes=self.num_processes, process_id=self.process_id,
              local_device_ids=(list(self.local_device_ids)
                                if self.local_device_ids is not None else None),
              # We resolved everything: stop JAX's cluster auto-detection from filling in
              # local_device_ids (e.g. one GPU per process under SLURM) behind our back.
              cluster_detection_method="deactivate")
    return kw


# --------------------------------------------------------------------------------------
# SLURM helpers
# --------------------------------------------------------------------------------------

def _split_top_level(text: str, sep: str = ",") -> list[str]:
  """Split on `sep` outside brackets."""
  parts, depth, cur = [], 0, []
  for ch in text:
    if ch == "[":
      depth += 1
      if depth > 1:
        raise ValueError(f"nested '[' in hostlist {text!r}")
    elif ch == "]":
      depth -= 1
      if depth < 0:
        raise ValueError(f"unbalanced ']' in hostlist {text!r}")
    if ch == sep and depth == 0:
      parts.append("".join(cur))
      cur = []
    else:
      cur.append(ch)
  if depth != 0:
    raise ValueError(f"unbalanced '[' in hostlist {text!r}")
  parts.append("".join(cur))
  return parts


def _expand_range_set(body: str, where: str) -> list[str]:
  """'01-03,07' -> ['01', '02', '03', '07'] (zero padding of the lower bound is kept)."""
  out: list[str] = []
  for item in body.split(","):
    item = item.strip()
    if not item:
      raise ValueError(f"empty range in hostlist {where!r}")
    if "-" in item:
      lo, hi = item.split("-", 1)
      if not (lo.isdigit() and hi.isdigit()):
        raise ValueError(f"bad range {item!r} in hostlist {where!r}")
      a, b = int(lo), int(hi)
      if b < a:
        raise ValueError(f"descending range {item!r} in hostlist {where!r}")
      # Slurm formats every index with the width of the lower bound: [08-10] -> 08 09 10,
      # [8-10] -> 8 9 10.
      width = len(lo)
      out.extend(str(i).zfill(width) for i in range(a, b + 1))
    else:
      if not item.isdigit():
        raise ValueError(f"bad index {item!r} in hostlist {where!r}")
      out.append(item)
  return out


def expand_hostlist(hostlist: str) -> list[str]:
  """Expand a Slurm hostlist expression into host names, in order.

  >>> expand_hostlist("node[01-03,07],gpu5")
  ['node01', 'node02', 'node03', 'node07', 'gpu5']
  >>> expand_hostlist("rack[1-2]-n[01-02]")
  ['rack1-n01', 'rack1-n02', 'rack2-n01', 'rack2-n02']
  """
  hostlist = hostlist.strip()
  if not hostlist:
    return []
  hosts: list[str] = []
  for expr in _split_top_level(hostlist):
    expr = expr.strip()
    if not expr:
      continue
    # Alternate literal text and bracket groups; the cartesian product, leftmost slowest.
    pieces = re.split(r"(\[[^\]]*\])", expr)
    names = [""]
    for piece in pieces:
      if piece.startswith("["):
        choices = _expand_range_set(piece[1:-1], hostlist)
      else:
        if "[" in piece or "]" in piece:
          raise ValueError(f"unbalanced bracket in hostlist {hostlist!r}")
        choices = [piece]
      names = [n + c for n in names for c in choices]
    hosts.extend(names)
  return hosts


def expand_tasks_per_node(spec: str) -> list[int]:
  """'2(x3),1' -> [2, 2, 2, 1] (format of SLURM_TASKS_PER_NODE / SLURM_STEP_TASKS_PER_NODE)."""
  out: list[int] = []
  for item in spec.split(","):
    item = item.strip()
    m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item)
    if not m:
      raise ValueError(f"bad tasks-per-node spec {spec!r}")
    out.extend([int(m.group(1))] * int(m.group(2) or 1))
  return out


def slurm_default_port(job_id: str) -> int:
  """The same port JAX's SlurmCluster picks: in [61440, 65535], a function of the job id."""
  digits = re.sub(r"\D", "", job_id) or "0"
  return int(digits) % 2**12 + (65535 - 2**12 + 1)


def _int_env(environ: Mapping[str, str], key: str) -> Optional[int]:
  val = environ.get(key)
  if val is None or str(val).strip() == "":
    return None
  try:
    return int(val)
  except ValueError as e:
    raise DistributedConfigError(f"{key}={val!r} is not an integer") from e


def _tasks_on_this_node(environ: Mapping[str, str]) -> Optional[int]:
  for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
    spec = environ.get(key)
    if spec:
      counts = expand_tasks_per_node(spec)
      node = _int_env(environ, "SLURM_NODEID") or 0
      if node < len(counts):
        return counts[node]
      return counts[0] if len(set(counts)) == 1 else None
  return _int_env(environ, "SLURM_NTASKS_PER_NODE")


def _slurm_local_device_ids(environ: Mapping[str, str]) -> Optional[tuple[int, ...]]:
  """One task per GPU -> that task's GPU; one task per node -> None (all local GPUs)."""
  local_id = _int_env(environ, "SLURM_LOCALID")
  tasks_here = _tasks_on_this_node(environ)
  if local_id is None or tasks_here is None or tasks_here <= 1:
    return None
  visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
  if visible and len([v for v in visible.split(",") if v.strip()]) == 1:
    # Slurm already bound one GPU to this task (--gpus-per-task=1 / --gpu-bind); it is
    # device 0 of this process, and pinning SLURM_LOCALID would name a missing device.
    return None
  return (local_id,)


def _in_slurm_step(environ: Mapping[str, str]) -> bool:
  """Started by srun (a job step), not the batch shell itself."""
  return ("SLURM_JOB_ID" in environ and "SLURM_PROCID" in environ
          and ("SLURM_STEP_ID" in environ or "SLURM_STEP_NUM_TASKS" in environ))


def _slurm_num_tasks(environ: Mapping[str, str]) -> Optional[int]:
  n = _int_env(environ, "SLURM_STEP_NUM_TASKS")
  return n if n is not None else _int_env(environ, "SLURM_NTASKS")


# --------------------------------------------------------------------------------------
# The resolver
# --------------------------------------------------------------------------------------

def _get(cfg: Any, key: str, default: Any = None) -> Any:
  if cfg is None:
    return default
  if isinstance(cfg, Mapping):
    val = cfg.get(key, default)
  elif hasattr(cfg, "get"):
    try:
      val = cfg.get(key, default)
    except (KeyError, AttributeError):
      val = default
  else:
    val = getattr(cfg, key, default)
  return default if val is None else val


def _parse_device_ids(value: Any) -> Optional[tuple[int, ...]] | str:
  """None -> None (auto); 'all' -> 'all'; 3 -> (3,); '0,1' / [0, 1] -> (0, 1)."""
  if value is None:
    return None
  if isinstance(value, str):
    v = value.strip().lower()
    if v in ("", "auto", "none"):
      return None
    if v == "all":
      return "all"
    try:
      return tuple(int(x) for x in v.split(",") if x.strip())
    except ValueError as e:
      raise DistributedConfigError(f"local_device_ids={value!r}: expected ints") from e
  if isinstance(value, int) and not isinstance(value, bool):
    return (value,)
  if isinstance(value, Sequence):
    try:
      return tuple(int(x) for x in value)
    except (TypeError, ValueError) as e:
      raise DistributedConfigError(f"local_device_ids={value!r}: expected ints") from e
  raise DistributedConfigError(f"local_device_ids={value!r}: expected int, list or 'a,b'")


def _as_int(value: Any, name: str) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool):
    raise DistributedConfigError(f"{name}={value!r} must be an integer")
  try:
    return int(value)
  except (TypeError, ValueError) as e:
    raise DistributedConfigError(f"{name}={value!r} must be an integer") from e


def _check_address(addr: str, what: str) -> str:
  addr = str(addr).strip()
  host, sep, port = addr.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedConfigError(
        f"{what}={addr!r} must look like 'host:port' with a port in 1..65535")
  return addr


def resolve_distributed_env(config_dist: Any,
                            environ: Mapping[str, str],
                            *,
                            on_tpu_vm: bool = False) -> Optional[DistributedArgs]:
  """How to call `jax.distributed.initialize` here; None for a single process.

  Args:
    config_dist: the ``distributed`` sub-config (dict-like or None); see module doc.
    environ: the process environment (``os.environ`` in real runs).
    on_tpu_vm: the caller found TPU chips on this host. A TPU VM started by
      ``gcloud ... ssh --worker=all`` has no environment markers; JAX reads its worker
      list from the metadata server, so we hand over to JAX's auto-detection.

  Raises:
    DistributedConfigError: inconsistent or incomplete settings.
  """
  cluster = str(_get(config_dist, "cluster", "auto")).strip().lower()
  if cluster not in CLUSTERS:
    raise DistributedConfigError(f"distributed.cluster={cluster!r}; expected one of {CLUSTERS}")
  timeout = _as_int(_get(config_dist, "initialization_timeout", DEFAULT_INIT_TIMEOUT),
                    "initialization_timeout")
  if timeout is None or timeout <= 0:
    raise DistributedConfigError(f"initialization_timeout={timeout} must be > 0")
  if cluster == "none":
    return None

  coordinator = _get(config_dist, "coordinator_address")
  num_processes = _as_int(_get(config_dist, "num_processes"), "num_processes")
  process_id = _as_int(_get(config_dist, "process_id"), "process_id")
  devices = _parse_device_ids(_get(config_dist, "local_device_ids"))
  port = _as_int(_get(config_dist, "coordinator_port"), "coordinator_port")
  sources = ["config"] if any(v is not None for v in (coordinator, num_processes,
                                                      process_id)) else []

  if cluster in ("tpu", "jax"):
    if any(v is not None for v in (coordinator, num_processes, process_id)):
      raise DistributedConfigError(
          f"distributed.cluster={cluster!r} lets JAX detect everything; do not also set "
          "coordinator_address / num_processes / process_id (use cluster='auto').")
    return DistributedArgs(auto_detect=True, source=cluster, initialization_timeout=timeout,
                           local_device_ids=None)

  # 2. plain environment variables
  env_used = False
  if coordinator is None and environ.get("JAX_COORDINATOR_ADDRESS"):
    coordinator, env_used = environ["JAX_COORDINATOR_ADDRESS"], True
  if num_processes is None and environ.get("JAX_NUM_PROCESSES"):
    num_processes, env_used = _int_env(environ, "JAX_NUM_PROCESSES"), True
  if process_id is None and environ.get("JAX_PROCESS_ID"):
    process_id, env_used = _int_env(environ, "JAX_PROCESS_ID"), True
  if env_used:
    sources.append("env")
  if devices is None and environ.get("JAX_LOCAL_DEVICE_IDS"):
    devices = _parse_device_ids(environ["JAX_LOCAL_DEVICE_IDS"])

  explicit_single = num_processes == 1
  # 3. SLURM
  slurm = (_in_slurm_step(environ) and (_slurm_num_tasks(environ) or 1) > 1
           and not explicit_single)
  if cluster == "slurm" and not _in_slurm_step(environ):
    raise DistributedConfigError(
        "distributed.cluster='slurm' but this process was not started by srun "
        "(SLURM_JOB_ID / SLURM_PROCID / SLURM_STEP_ID missing). Launch with srun.")
  if slurm or cluster == "slurm":
    if coordinator is None:
      nodelist = (environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
                  or environ.get("SLURM_NODELIST"))
      if not nodelist:
        raise DistributedConfigError("SLURM step without SLURM_STEP_NODELIST/SLURM_JOB_NODELIST")
      try:
        hosts = expand_hostlist(nodelist)
      except ValueError as e:
        raise DistributedConfigError(str(e)) from e
      if not hosts:
        raise DistributedConfigError(f"empty SLURM nodelist {nodelist!r}")
      if port is None:
        port = _int_env(environ, "JAX_COORDINATOR_PORT") or slurm_default_port(
            environ["SLURM_JOB_ID"])
      coordinator = f"{hosts[0]}:{port}"
    if num_processes is None:
      num_processes = _slurm_num_tasks(environ)
    if process_id is None:
      process_id = _int_env(environ, "SLURM_PROCID")
    if devices is None:
      devices = _slurm_local_device_ids(environ)
    sources.append("slurm")
  elif num_processes is None and coordinator is None and process_id is None:
    # 4. Cloud TPU / Open MPI: let JAX auto-detect.
    if any(environ.get(k) for k in _TPU_MARKERS) or on_tpu_vm:
      return DistributedArgs(auto_detect=True, source="tpu", initialization_timeout=timeout)
    if (_int_env(environ, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
      return DistributedArgs(auto_detect=True, source="ompi", initialization_timeout=timeout)
    if devices not in (None, "all"):
      logger.info("local_device_ids=%s ignored: single process run", devices)
    return None  # 5. single process

  # Validation of the explicit / merged values.
  if num_processes is None:
    raise DistributedConfigError(
        f"coordinator_address={coordinator!r} / process_id={process_id!r} given but "
        "num_processes is not set (config distributed.num_processes or $JAX_NUM_PROCESSES)")
  if num_processes < 1:
    raise DistributedConfigError(f"num_processes={num_processes} must be >= 1")
  if num_processes == 1:
    if process_id not in (None, 0):
      raise DistributedConfigError(f"process_id={process_id} with num_processes=1")
    return None
  if coordinator is None:
    raise DistributedConfigError(
        f"num_processes={num_processes} needs coordinator_address='host:port' (the host of "
        "process 0), in the config or $JAX_COORDINATOR_ADDRESS")
  coordinator = _check_address(coordinator, "coordinator_address")
  if process_id is None:
    raise DistributedConfigError(
        f"num_processes={num_processes} needs this process's process_id in "
        f"[0, {num_processes}) (config distributed.process_id or $JAX_PROCESS_ID)")
  if not 0 <= process_id < num_processes:
    raise DistributedConfigError(
        f"process_id={process_id} is outside [0, num_processes={num_processes})")
  if devices == "all":
    devices = None
  if devices is not None:
    if not devices:
      raise DistributedConfigError("local_device_ids is empty")
    if any(d < 0 for d in devices) or len(set(devices)) != len(devices):
      raise DistributedConfigError(f"local_device_ids={devices} must be distinct and >= 0")
  return DistributedArgs(coordinator_address=coordinator, num_processes=num_processes,
                         process_id=process_id, local_device_ids=devices,
                         source="+".join(sources) or "config",
                         initialization_timeout=timeout)


# --------------------------------------------------------------------------------------
# Side effects
# --------------------------------------------------------------------------------------

_INITIALIZED_WITH: Optional[DistributedArgs] = None


def _tpu_chips_present() -> bool:
  try:
    from jax._src import hardware_utils  # private, but only reads /sys; best effort
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:  # pragma: no cover - layout of jax internals may change
    return False


def initialize(config_dist: Any = None,
               environ: Optional[Mapping[str, str]] = None) -> Optional[DistributedArgs]:
  """Call `jax.distributed.initialize` if this run has several processes.

  Idempotent: a second call (or a call after someone else initialised the distributed
  runtime) does nothing. Must run before any JAX computation or `jax.devices()`.
  Returns the arguments used, or None for a single-process run.
  """
  global _INITIALIZED_WITH
  import jax

  environ = os.environ if environ is None else environ
  if jax.distributed.is_initialized():
    return _INITIALIZED_WITH
  args = resolve_distributed_env(config_dist, environ, on_tpu_vm=_tpu_chips_present())
  if args is None:
    logger.info("single-process run: jax.distributed.initialize not called")
    return None
  logger.info("jax.distributed.initialize(%s) [from %s]", args.kwargs(), args.source)
  try:
    jax.distributed.initialize(**args.kwargs())
  except RuntimeError as e:
    if "must be called before" in str(e):
      raise RuntimeError(
          "cnn_jax.distributed.initialize() must run before any JAX computation or "
          "jax.devices() call (the XLA backend is already up).") from e
    raise
  _INITIALIZED_WITH = args
  logger.info("process %d/%d, %d local / %d global devices", jax.process_index(),
              jax.process_count(), jax.local_device_count(), jax.device_count())
  return args


def is_main_process() -> bool:
  """True on process 0 (the one that writes logs, summaries and non-array files)."""
  import jax
  return jax.process_index() == 0
