"""Train every batch-norm model a few SGD steps under "sharded" and "pmap" on 2 CPU devices.

  python bn_sync_worker.py OUT.json CASE_JSON [CASE_JSON ...]

Each CASE_JSON is {"name": registered model, "kwargs": model_kwargs, "shape": [H, W, C]}.
Writes, per case, the largest |pmap - sharded| over every parameter and batch statistic
and the assert_allclose failure message (None when every leaf agrees). Its own process:
the simulated device count is fixed when JAX starts.
"""
import json
import os
import sys
import time
from typing import Any

# Cheaper LLVM compilation, same code (xla_backend_optimization_level=0, which
# jax_disable_most_optimizations sets, miscompiles the gradient of conv-BN-relu-max-pool).
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=2 "
                           "--xla_llvm_disable_expensive_passes=true")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax.training import setup as setup_lib  # noqa: E402
from helpers import random_split, tiny_config  # noqa: E402

BATCH, STEPS, CLASSES = 8, int(os.environ.get("BN_STEPS", 2)), 3
# float32 tolerance: the two modes sum a batch's moments and gradients in a different order
# (per-device partial sums + an all-reduce vs one reduction), a few ulps per reduction, which
# batch norm's 1/sigma over 4-example device batches amplifies to ~1e-5 after 2 steps. An
# unsynchronised batch norm normalizes each half batch by its own moments: 1e-3 and more.
RTOL, ATOL = 1e-4, 1e-5


def leaves(state) -> dict[str, np.ndarray]:
  tree = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def compiled_for(case: dict, mode: str) -> tuple[Any, Any]:
  """setup.setup for `mode`: the run's own build_model, optimizer and compiled steps."""
  cfg = tiny_config(case["name"], parallel=mode, batch_size=BATCH, eval_batch_size=BATCH,
                    model_input_shape=tuple(case["shape"]), best_metric="")
  cfg.model_kwargs = {"num_classes": CLASSES, **case["kwargs"]}
  cfg.optimizer.name, cfg.optimizer.learning_rate = "sgd", 0.05
  data = random_split(BATCH * STEPS, shape=tuple(case["shape"]), num_classes=CLASSES)
  s = setup_lib.setup(cfg, train_data=data)
  return s.compiled, s.model


def compare(case: dict) -> dict:
  """STEPS train steps in each mode from one initial state (one init program compiled, not
  two: the pmap state differs only in the model's axis_name), then every leaf compared."""
  t0 = time.time()
  data = random_split(BATCH * STEPS, shape=tuple(case["shape"]), num_classes=CLASSES)
  (sharded, _), (pmap, pmap_model) = compiled_for(case, "sharded"), compiled_for(case, "pmap")
  init = jax.device_get(sharded.init_state(jax.random.key(0)))
  starts = {"sharded": jax.device_put(init, sharded.state_sharding),
            "pmap": init.replace(apply_fn=pmap_model.apply)}
  out = {}
  for mode, c in (("sharded", sharded), ("pmap", pmap)):
    state = starts[mode]
    for i in range(STEPS):
      sl = slice(i * BATCH, (i + 1) * BATCH)
      state, _ = c.train_step(state, c.put_batch({"image": data.images[sl],
                                                   "label": data.labels[sl]}))
    out[mode] = leaves(state)
  a, b = out["sharded"], out["pmap"]
  assert a.keys() == b.keys()
  assert any(k.startswith("batch_stats/") for k in a), f"{case['name']}: no batch norm"
  diffs = {k: float(np.max(np.abs(a[k] - b[k]))) for k in a}
  worst = max(diffs, key=lambda k: diffs[k] if np.isfinite(diffs[k]) else np.inf)
  error = None
  for k in a:
    try:
      np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=ATOL)
    except AssertionError:
      error = (f"{case['name']} {case['kwargs']}: {k} max |pmap - sharded| {diffs[k]:.2e} "
               f"(rtol {RTOL}, atol {ATOL})")
      break
  print(f"{case['name']}: {time.time() - t0:.1f} s, max |diff| {diffs[worst]:.2e} ({worst})",
        flush=True)
  return {**case, "max_abs_diff": diffs[worst], "worst_leaf": worst, "error": error}


if __name__ == "__main__":
  assert jax.device_count() == 2
  results = [compare(json.loads(a)) for a in sys.argv[2:]]
  with open(sys.argv[1], "w") as f:
    json.dump(results, f)
