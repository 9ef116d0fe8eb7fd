"""Multi-process start-up: the little that `jax.distributed.initialize` does not do itself.

JAX (0.10) already detects its clusters when called with no arguments: SLURM (inside an
``srun`` step: ``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``,
``SLURM_PROCID``, ``SLURM_LOCALID``; coordinator = first node, port
``$JAX_COORDINATOR_PORT`` or one derived from the job id), Open MPI
(``OMPI_MCA_orte_hnp_uri``), Cloud TPU VMs (metadata server) and Kubernetes. It also reads
``$JAX_COORDINATOR_ADDRESS`` and ``$JAX_LOCAL_DEVICE_IDS``. This module only adds:

* a no-op for one plain process (JAX would raise "coordinator_address should be
  defined"), for a one-task SLURM step and for the batch shell of an sbatch job (which
  has no ``SLURM_STEP_NODELIST``: JAX does not see SLURM there either);
* the ``config.distributed`` overrides, checked up front so a half-set configuration is a
  clear `DistributedConfigError` instead of a hang or a late JAX error;
* one correction under SLURM: JAX pins each task to GPU ``$SLURM_LOCALID``. That is right
  for one task per GPU, but with one task per node (our sbatch layout) it would leave all
  GPUs but one idle, and when Slurm already bound one GPU to the task
  (``--gpus-per-task=1``: ``CUDA_VISIBLE_DEVICES`` has one entry) the pinned id may not
  exist. In both cases we pass ``local_device_ids=[]`` (JAX: restrict nothing).

Config keys (``config.distributed``; all optional, dict / ConfigDict / None):

  cluster: "auto" (default) | "none" (never initialise) | "slurm" (require an srun step)
      | "tpu" / "jax" (call ``jax.distributed.initialize()`` and let JAX detect everything)
  coordinator_address "host:port", num_processes, process_id: explicit values; outside a
      cluster JAX detects, all three are needed (the address may come from
      ``$JAX_COORDINATOR_ADDRESS``). Inside one they override what JAX would detect.
  coordinator_port: the port of the coordinator on the first node when it is not given
      explicitly (sets ``$JAX_COORDINATOR_PORT``, or replaces the port of an exported
      ``$JAX_COORDINATOR_ADDRESS`` under SLURM).
  local_device_ids: None (auto) | "all" | int | "0,1" | [0, 1]
  initialization_timeout: seconds (default 300)
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
import sys
from typing import Any, Mapping, Optional, Sequence

logger = logging.getLogger(__name__)

CLUSTERS = ("auto", "none", "slurm", "tpu", "jax")
DEFAULT_INIT_TIMEOUT = 300
# What jax's SlurmCluster.is_env_present requires; SLURM_STEP_NODELIST exists only in a step.
SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                   "SLURM_LOCALID")
# Env markers of a Cloud TPU / multislice job. A TPU VM reached with `gcloud ... ssh
# --worker=all` has none of them; `_tpu_chips_present` covers that case.
_TPU_MARKERS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID",
                "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS")
_GOOGLE_PCI_VENDOR = "0x1ae0"


class DistributedConfigError(ValueError):
  """Inconsistent or incomplete multi-process configuration."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """How to call `jax.distributed.initialize`: its kwargs and env variables to set first.

  ``env`` carries what JAX only reads from the environment (``JAX_COORDINATOR_PORT``).
  ``source`` says why: "config", "slurm", "ompi", "tpu" or "jax" (for the log).
  """
  kwargs: dict[str, Any]
  env: dict[str, str]
  source: str


def _get(cfg: Any, key: str) -> Any:
  if cfg is None:
    return None
  if hasattr(cfg, "get"):
    try:
      return cfg.get(key, None)
    except (KeyError, AttributeError):
      return None
  return getattr(cfg, key, None)


def _as_int(value: Any, name: str) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool):
    raise DistributedConfigError(f"{name}={value!r} must be an integer")
  try:
    return int(value)
  except (TypeError, ValueError) as e:
    raise DistributedConfigError(f"{name}={value!r} must be an integer") from e


def _parse_device_ids(value: Any) -> Optional[list[int]]:
  """None / "auto" -> None (JAX decides); "all" -> [] (restrict nothing); "0,1" -> [0, 1]."""
  if value is None:
    return None
  if isinstance(value, str):
    v = value.strip().lower()
    if v in ("", "auto", "none"):
      return None
    if v == "all":
      return []
    value = [x for x in v.split(",") if x.strip()]
  elif isinstance(value, int) and not isinstance(value, bool):
    value = [value]
  if not isinstance(value, Sequence) or not value:
    raise DistributedConfigError(f"local_device_ids={value!r}: expected ints, e.g. '0,1'")
  try:
    ids = [int(x) for x in value]
  except (TypeError, ValueError) as e:
    raise DistributedConfigError(f"local_device_ids={value!r}: expected ints") from e
  if min(ids) < 0 or len(set(ids)) != len(ids):
    raise DistributedConfigError(f"local_device_ids={ids} must be distinct and >= 0")
  return ids


def _check_address(addr: str) -> str:
  addr = str(addr).strip()
  host, sep, port = addr.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedConfigError(
        f"coordinator_address={addr!r} must look like 'host:port' with a port in 1..65535")
  return addr


def _env_int(environ: Mapping[str, str], key: str) -> Optional[int]:
  try:
    return int(environ[key])
  except (KeyError, ValueError):
    return None


def _slurm_devices(environ: Mapping[str, str]) -> Optional[list[int]]:
  """[] where JAX's pin-to-$SLURM_LOCALID would be wrong (see module doc), else None."""
  tasks = _env_int(environ, "SLURM_STEP_NUM_TASKS") or _env_int(environ, "SLURM_NTASKS")
  nodes = _env_int(environ, "SLURM_STEP_NUM_NODES") or _env_int(environ, "SLURM_NNODES")
  # Slurm runs at least one task on every node of a step: tasks == nodes means one each.
  if tasks is not None and tasks == nodes:
    return []
  visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  return [] if len(visible) == 1 else None


def _tpu_chips_present() -> bool:
  """Google (TPU) PCI devices on this host: a TPU VM, where JAX asks the metadata server."""
  for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(path) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def plan(config_dist: Any, environ: Mapping[str, str], *,
         tpu_present: bool = False) -> Optional[Plan]:
  """Decide how to call `jax.distributed.initialize`; None means one process, no call.

  A pure function of the config and the environment, so every case is testable without a
  cluster. ``tpu_present``: this host has TPU chips (JAX then reads the pod from the
  metadata server, with no environment markers).

  Raises:
    DistributedConfigError: inconsistent or incomplete settings.
  """
  cluster = str(_get(config_dist, "cluster") or "auto").strip().lower()
  if cluster not in CLUSTERS:
    raise DistributedConfigError(f"distributed.cluster={cluster!r}; expected one of {CLUSTERS}")
  timeout = _as_int(_get(config_dist, "initialization_timeout"), "initialization_timeout")
  timeout = DEFAULT_INIT_TIMEOUT if timeout is None else timeout
  if timeout <= 0:
    raise DistributedConfigError(f"initialization_timeout={timeout} must be > 0")
  if cluster == "none":
    return None
  address = _get(config_dist, "coordinator_address")
  num = _as_int(_get(config_dist, "num_processes"), "num_processes")
  pid = _as_int(_get(config_dist, "process_id"), "process_id")
  devices = _parse_device_ids(_get(config_dist, "local_device_ids"))
  port = _as_int(_get(config_dist, "coordinator_port"), "coordinator_port")
  if port is not None and not 0 < port < 65536:
    raise DistributedConfigError(f"coordinator_port={port} must be in 1..65535")
  if address is not None:
    address = _check_address(address)
  if num is not None and num < 1:
    raise DistributedConfigError(f"num_processes={num} must be >= 1")
  if num is not None and pid is not None and not 0 <= pid < num:
    raise DistributedConfigError(f"process_id={pid} is outside [0, num_processes={num})")

  kwargs: dict[str, Any] = {"initialization_timeout": timeout}
  env = {"JAX_COORDINATOR_PORT": str(port)} if port is not None else {}
  explicit = {k: v for k, v in (("coordinator_address", address), ("num_processes", num),
                                ("process_id", pid)) if v is not None}
  if devices is not None:
    kwargs["local_device_ids"] = devices

  if cluster in ("tpu", "jax"):
    if explicit:
      raise DistributedConfigError(
          f"distributed.cluster={cluster!r} lets JAX detect everything; do not also set "
          f"{', '.join(explicit)} (use cluster='auto' for explicit values)")
    return Plan(kwargs, env, cluster)

  in_slurm = all(k in environ for k in SLURM_STEP_VARS)
  if cluster == "slurm" and not in_slurm:
    missing = [k for k in SLURM_STEP_VARS if k not in environ]
    raise DistributedConfigError(
        "distributed.cluster='slurm' but this process is not a task of an srun step "
        f"(missing {', '.join(missing)}); in an sbatch script launch it with srun")
  if in_slurm:
    tasks = num if num is not None else _env_int(environ, "SLURM_NTASKS")
    if tasks == 1:
      return None  # one task: nothing to coordinate, and no port to open
    if port is not None and address is None and environ.get("JAX_COORDINATOR_ADDRESS"):
      # launch/slurm.sbatch exports the head node as $JAX_COORDINATOR_ADDRESS (JAX would
      # then ignore $JAX_COORDINATOR_PORT): the configured port still wins.
      host = _check_address(environ["JAX_COORDINATOR_ADDRESS"]).rpartition(":")[0]
      explicit["coordinator_address"] = f"{host}:{port}"
    if devices is None:
      devices = _slurm_devices(environ)
      if devices is not None:
        kwargs["local_device_ids"] = devices
    return Plan({**kwargs, **explicit}, env, "slurm")
  ompi = "OMPI_MCA_orte_hnp_uri" in environ
  if not explicit:
    if ompi and (_env_int(environ, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
      return Plan(kwargs, env, "ompi")
    if cluster == "auto" and (tpu_present or any(environ.get(k) for k in _TPU_MARKERS)):
      return Plan(kwargs, env, "tpu")
    return None  # one plain process
  if ompi:
    return Plan({**kwargs, **explicit}, env, "ompi")

  # Explicit values and no cluster for JAX to complete them from: all three are needed.
  if num == 1:
    if pid not in (None, 0):
      raise DistributedConfigError(f"process_id={pid} with num_processes=1")
    return None
  if address is None and environ.get("JAX_COORDINATOR_ADDRESS"):
    address = _check_address(environ["JAX_COORDINATOR_ADDRESS"])
  missing = [name for name, v in (("coordinator_address", address), ("num_processes", num),
                                  ("process_id", pid)) if v is None]
  if missing:
    raise DistributedConfigError(
        f"distributed config sets {', '.join(sorted(explicit))} but not "
        f"{', '.join(missing)}; outside SLURM / Open MPI all of coordinator_address "
        "('host:port' of process 0, or $JAX_COORDINATOR_ADDRESS), num_processes and "
        "process_id are needed")
  kwargs.update(coordinator_address=address, num_processes=num, process_id=pid)
  return Plan(kwargs, env, "config")


_INITIALIZED_WITH: Optional[Plan] = None


def initialize(config_dist: Any = None,
               environ: Optional[Mapping[str, str]] = None) -> Optional[Plan]:
  """Call `jax.distributed.initialize` if this run has several processes.

  Must run before any JAX computation or `jax.devices()`. Idempotent: once the distributed
  runtime is up (by us or by someone else) it does nothing. Returns the `Plan` applied
  (``.kwargs`` went to JAX), or None for a single-process run. ``environ`` defaults to ``os.environ``; JAX itself
  always reads ``os.environ`` for what it detects.
  """
  global _INITIALIZED_WITH
  import jax

  if jax.distributed.is_initialized():
    return _INITIALIZED_WITH
  environ = os.environ if environ is None else environ
  p = plan(config_dist, environ, tpu_present=_tpu_chips_present())
  if p is None:
    logger.debug("single-process run: jax.distributed.initialize not called")
    return None
  os.environ.update(p.env)
  logger.info("jax.distributed.initialize(%s) [%s]", p.kwargs, p.source)
  jax.distributed.initialize(**p.kwargs)
  _INITIALIZED_WITH = p
  # Printed, not only logged: launch logs (sbatch, tpu_vm.sh) show who joined; stderr keeps
  # stdout for the trainer's JSON result.
  print(f"cnn_jax.distributed: process {jax.process_index()} of {jax.process_count()} "
        f"({p.source}), {jax.local_device_count()} local / {jax.device_count()} devices",
        file=sys.stderr, flush=True)
  return p


def is_main_process() -> bool:
  """True on process 0 (the one that writes logs, summaries and non-array files)."""
  import jax
  return jax.process_index() == 0
