"""One SGD step of every batch-norm model on 1 device, 8 devices "sharded" and 8 "pmap".

  python bn_sync_worker.py OUT.json CASE_JSON [CASE_JSON ...]

Each CASE_JSON is {"name": registered model, "kwargs": model_kwargs, "shape": [H, W, C]}.
Writes, per case and per pair of runs ("pmap_vs_sharded", "one_vs_sharded", "one_vs_pmap"),
the largest difference over every parameter and batch statistic and the assert_allclose
failure message (None when every leaf agrees). Its own
process: the simulated device count is fixed when JAX starts. The 1-device run is the
"sharded" path over a mesh of this process's first device only: the program a 1-device
process compiles, at no second process's start-up and import cost.
"""
import contextlib
import json
import os
import sys
import time
from typing import Any
from unittest import mock

# Cheaper compilation, exact code: backend level 1 and cheap LLVM passes, as
# tests/conftest.py (level 0, which jax_disable_most_optimizations sets, miscompiles the
# gradient of conv-BN-relu-max-pool: tests/test_xla_flags.py). XLA:CPU's YNNPACK fusions
# off, as tests/parallel_worker.py: with them (jax 0.10.2) the 8-device sharded program
# computes one of tiny_cnn's kernel gradients 3e-4 off a float64 reference.
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                           "--xla_backend_optimization_level=1 "
                           "--xla_llvm_disable_expensive_passes=true "
                           "--xla_cpu_experimental_ynn_fusion_type=")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax import parallel  # noqa: E402
from cnn_jax.training import setup as setup_lib  # noqa: E402
from helpers import random_split, tiny_config  # noqa: E402

DEVICES, BATCH, CLASSES = 8, 16, 3
# float32 tolerance. The runs sum a batch's moments and gradients in a different order
# (per-device partial sums and an all-reduce, or one reduction): n float32 additions round
# differently by about sqrt(n) * 6e-8 relative, 1e-5 for the 16x32x32 values of a first-layer
# moment. Measured: MEASURED below. An unsynchronised batch norm normalizes each device's
# slice by its own moments: 3e-3 and more after one step.
RTOL, ATOL = 1e-5, 1e-6
RUNS = ("one", "sharded", "pmap")
PAIRS = (("pmap", "sharded"), ("one", "sharded"), ("one", "pmap"))


def leaves(state) -> dict[str, np.ndarray]:
  tree = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def copy(x: Any) -> Any:
  """A new array: each sharded run donates its state (key arrays, which stay device arrays
  through device_get, included)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(np.array(jax.random.key_data(x)),
                                    impl=jax.random.key_impl(x))
  return np.array(x)


def compiled_for(case: dict, run: str, data: Any) -> tuple[Any, Any]:
  """setup.setup for `run`: the run's own build_model, optimizer and compiled steps."""
  mode = "sharded" if run == "one" else run
  cfg = tiny_config(case["name"], parallel=mode, batch_size=BATCH, eval_batch_size=BATCH,
                    model_input_shape=tuple(case["shape"]), best_metric="")
  cfg.model_kwargs = {"num_classes": CLASSES, **case["kwargs"]}
  cfg.optimizer.name, cfg.optimizer.learning_rate = "sgd", 0.05
  one_device = parallel.make_mesh([jax.devices()[0]])
  with (mock.patch.object(parallel, "make_mesh", lambda devices=None: one_device)
        if run == "one" else contextlib.nullcontext()):
    s = setup_lib.setup(cfg, train_data=data)
  return s.compiled, s.model


def compare(case: dict) -> dict:
  """One SGD step in each run from one initial state, then every leaf compared.

  One step: it already takes the gradients through every batch norm and its batch
  statistics; each further step compiles pmap's program again (a state that comes back
  from pmap is placed differently from the initial one) and lets float32 rounding grow
  through the deep networks' 1x1 feature maps (googlenet: 2.7e-3 after two steps).
  """
  t0 = time.time()
  data = random_split(BATCH, shape=tuple(case["shape"]), num_classes=CLASSES)
  batch = {"image": data.images, "label": data.labels}
  runs = {run: compiled_for(case, run, data) for run in RUNS}
  # Every run starts from this state (the pmap one differs only in the model's axis_name),
  # so how well its program is optimized is no part of the test: compile it quickly, once.
  jax.config.update("jax_disable_most_optimizations", True)
  init = jax.device_get(runs["sharded"][0].init_state(jax.random.key(0)))
  jax.config.update("jax_disable_most_optimizations", False)
  out = {}
  pmap, pmap_model = runs["pmap"]
  out["pmap"] = leaves(pmap.train_step(init.replace(apply_fn=pmap_model.apply),
                                       pmap.put_batch(batch))[0])
  for run in ("sharded", "one"):
    c = runs[run][0]
    # The same arrays in this run's own state tree (its optimizer and apply_fn are static
    # fields that jit's in_shardings must match), then placed as it places them.
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(c.state_sharding),
                                         [copy(x) for x in jax.tree_util.tree_leaves(init)])
    out[run] = leaves(c.train_step(jax.device_put(state, c.state_sharding),
                                   c.put_batch(batch))[0])
  assert out["one"].keys() == out["sharded"].keys() == out["pmap"].keys()
  assert any(k.startswith("batch_stats/") for k in out["one"]), f"{case['name']}: no batch norm"
  result = dict(case)
  for x, y in PAIRS:
    a, b = out[y], out[x]
    diffs = {k: float(np.max(np.abs(a[k] - b[k]))) for k in a}
    worst = max(diffs, key=lambda k: diffs[k] if np.isfinite(diffs[k]) else np.inf)
    usage = max(float(np.max(np.abs(a[k] - b[k]) / (ATOL + RTOL * np.abs(a[k])))) for k in a)
    error = None
    for k in a:
      try:
        np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=ATOL)
      except AssertionError:
        error = (f"{case['name']} {case['kwargs']}: {k} max |{x} - {y}| {diffs[k]:.2e} "
                 f"(rtol {RTOL}, atol {ATOL})")
        break
    result[f"{x}_vs_{y}"] = {"max_abs_diff": diffs[worst], "worst_leaf": worst,
                             "of_tolerance": usage, "error": error}
    print(f"{case['name']} {x} vs {y}: max |diff| {diffs[worst]:.2e} ({worst}), "
          f"{usage:.2f} of the tolerance", flush=True)
  print(f"{case['name']}: {time.time() - t0:.1f} s", flush=True)
  return result


if __name__ == "__main__":
  assert jax.device_count() == DEVICES
  results = [compare(json.loads(a)) for a in sys.argv[2:]]
  with open(sys.argv[1], "w") as f:
    json.dump(results, f)
