"""What the GPU benchmarks share: the import path, the model's dtype, the results file.

Results go to `<out_dir>/gpu_<name>.json` with the device (`jax.devices()[0].device_kind`),
the versions and the command line. A results file is never overwritten: when
`gpu_<name>.json` exists, the new one is `gpu_<name>_<UTC time>.json` (and the path is
printed), so a second run on another machine keeps both. Smoke runs (`--smoke`, CPU, tiny
shapes) write `gpu_<name>_smoke.json` and refuse to write into benchmarks/results.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
if REPO not in sys.path:  # run as `python benchmarks/gpu/x.py` from an uninstalled checkout
  sys.path.insert(0, REPO)


def add_common_args(p: Any, name: str) -> None:
  p.add_argument("--smoke", action="store_true",
                 help="CPU, tiny shapes, a few steps: proves the code paths, measures nothing")
  p.add_argument("--out_dir", default=None,
                 help=f"where gpu_{name}.json goes (default benchmarks/results; --smoke: a new "
                      "temporary folder)")


def smoke_platform(smoke: bool) -> None:
  """--smoke runs on the CPU whatever the machine has (before JAX starts)."""
  if smoke:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def get_model(name: str, dtype: str, smoke: bool, **kwargs: Any) -> tuple[Any, str, str]:
  """(model, the dtype it computes in, a note) for `models.get_model(name, dtype=...)`.

  Every zoo model takes `dtype` (the computation dtype; parameters stay float32). A
  checkout whose models do not yet take it raises TypeError: in --smoke mode the model is
  then built in float32 and the note says so; a real run stops, since its figures would
  not be what they claim.
  """
  from cnn_jax import models
  if dtype == "float32":
    return models.get_model(name, **kwargs), "float32", ""
  try:
    return models.get_model(name, dtype=models.compute_dtype(dtype), **kwargs), dtype, ""
  except TypeError as e:
    if not smoke:
      raise SystemExit(f"models.get_model({name!r}, dtype={dtype}) failed ({e}): this checkout's "
                       f"model cannot compute in {dtype}; rerun with --dtype float32 or update "
                       "the checkout") from None
    note = (f"models.get_model({name!r}, dtype={dtype}) raised TypeError ({e}); smoke run "
            "built it in float32")
    print(f"warning: {note}", file=sys.stderr)
    return models.get_model(name, **kwargs), "float32", note


def git_commit() -> str:
  """HEAD (+dirty); $CNN_JAX_GIT_COMMIT where the checkout travelled without .git."""
  if os.environ.get("CNN_JAX_GIT_COMMIT"):
    return os.environ["CNN_JAX_GIT_COMMIT"]
  try:
    out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, timeout=10)
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def device_info() -> dict[str, Any]:
  import jax
  import jaxlib
  d = jax.devices()[0]
  info = {"device": d.device_kind, "platform": d.platform, "device_count": jax.device_count(),
          "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "host": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                   "python": platform.python_version()},
          "env": {k: os.environ[k] for k in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                                             "XLA_PYTHON_CLIENT_PREALLOCATE", "JAX_PLATFORMS")
                  if k in os.environ}}
  try:
    import flax
    import optax
    info["flax"], info["optax"] = flax.__version__, optax.__version__
  except ImportError:
    pass
  return info


def results_path(out_dir: str | None, name: str, smoke: bool) -> str:
  """The file this run writes: never an existing one (see the module docstring)."""
  if out_dir is None:
    out_dir = tempfile.mkdtemp(prefix="gpu_bench_smoke_") if smoke else RESULTS_DIR
  if smoke and os.path.realpath(out_dir) == os.path.realpath(RESULTS_DIR):
    raise SystemExit("--smoke results never go into benchmarks/results: pass another --out_dir")
  os.makedirs(out_dir, exist_ok=True)
  stem = f"gpu_{name}_smoke" if smoke else f"gpu_{name}"
  path = os.path.join(out_dir, stem + ".json")
  if os.path.exists(path):
    path = os.path.join(out_dir, f"{stem}_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json")
  return path


def finite(value: Any) -> Any:
  """JSON-safe: NaN / inf become None (json.dumps would write invalid JSON)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite(v) for v in value]
  return value


def write_results(name: str, figures: dict[str, Any], args: Any, started: float) -> str:
  """Write gpu_<name>.json: device, versions, command line, the benchmark's figures."""
  out = {"benchmark": name, **device_info(), "smoke": bool(args.smoke),
         "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO)]
                             + sys.argv[1:]),
         "git_commit": git_commit(),
         "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "wall_seconds": round(time.perf_counter() - started, 1), **figures}
  path = results_path(args.out_dir, name, args.smoke)
  with open(path, "x") as f:  # "x": fails rather than overwrite
    json.dump(finite(out), f, indent=2)
    f.write("\n")
  print(json.dumps(finite(out), indent=2))
  print(f"wrote {path}", file=sys.stderr)
  return path


def median(values: list[float]) -> float:
  import statistics
  return statistics.median(values)
