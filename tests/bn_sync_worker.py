"""One SGD step of every batch-norm model under "sharded" and "pmap" on 2 CPU devices.

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

# Cheaper compilation, exact code: backend level 1 and cheap LLVM passes, as
# tests/conftest.py (level 0, which jax_disable_most_optimizations sets, miscompiles the
# gradient of conv-BN-relu-max-pool: tests/test_xla_flags.py).
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=2 "
                           "--xla_backend_optimization_level=1 "
                           "--xla_llvm_disable_expensive_passes=true")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax.training import setup as setup_lib  # noqa: E402
from helpers import random_split, tiny_config  # noqa: E402

BATCH, CLASSES = 8, 3
# float32 tolerance. The two modes sum a batch's moments and gradients in a different order
# (per-device partial sums and an all-reduce, or one reduction): n float32 additions round
# differently by about sqrt(n) * 6e-8 relative, 1e-5 for the 8x32x32 values of a first-layer
# moment. Measured: at most 6.7e-7 apart (googlenet), 0.43 of this tolerance. An unsynchronised
# batch norm normalizes each half batch by its own moments: 3e-3 and more after one step.
RTOL, ATOL = 1e-5, 1e-6


def leaves(state) -> dict[str, np.ndarray]:
  tree = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def compiled_for(case: dict, mode: str, data: Any) -> tuple[Any, Any]:
  """setup.setup for `mode`: the run's own build_model, optimizer and compiled steps."""
  cfg = tiny_config(case["name"], parallel=mode, batch_size=BATCH, eval_batch_size=BATCH,
                    model_input_shape=tuple(case["shape"]), best_metric="")
  cfg.model_kwargs = {"num_classes": CLASSES, **case["kwargs"]}
  cfg.optimizer.name, cfg.optimizer.learning_rate = "sgd", 0.05
  s = setup_lib.setup(cfg, train_data=data)
  return s.compiled, s.model


def compare(case: dict) -> dict:
  """One SGD step in each mode from one initial state, then every leaf compared.

  One step: it already takes the gradients through every batch norm and its batch
  statistics; each further step compiles pmap's program again (a state that comes back
  from pmap is placed differently from the initial one) and lets float32 rounding grow
  through the deep networks' 1x1 feature maps (googlenet: 2.7e-3 after two steps).
  """
  t0 = time.time()
  data = random_split(BATCH, shape=tuple(case["shape"]), num_classes=CLASSES)
  batch = {"image": data.images, "label": data.labels}
  (sharded, _), (pmap, pmap_model) = (compiled_for(case, "sharded", data),
                                      compiled_for(case, "pmap", data))
  # Both modes start from this state (the pmap one differs only in the model's axis_name),
  # so how well its program is optimized is no part of the test: compile it quickly, once.
  jax.config.update("jax_disable_most_optimizations", True)
  init = jax.device_get(sharded.init_state(jax.random.key(0)))
  jax.config.update("jax_disable_most_optimizations", False)
  # pmap first: the sharded step donates its input, the state's key array included.
  b = leaves(pmap.train_step(init.replace(apply_fn=pmap_model.apply), pmap.put_batch(batch))[0])
  a = leaves(sharded.train_step(jax.device_put(init, sharded.state_sharding),
                                sharded.put_batch(batch))[0])
  assert a.keys() == b.keys()
  assert any(k.startswith("batch_stats/") for k in a), f"{case['name']}: no batch norm"
  diffs = {k: float(np.max(np.abs(a[k] - b[k]))) for k in a}
  worst = max(diffs, key=lambda k: diffs[k] if np.isfinite(diffs[k]) else np.inf)
  usage = max(float(np.max(np.abs(a[k] - b[k]) / (ATOL + RTOL * np.abs(a[k])))) for k in a)
  error = None
  for k in a:
    try:
      np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=ATOL)
    except AssertionError:
      error = (f"{case['name']} {case['kwargs']}: {k} max |pmap - sharded| {diffs[k]:.2e} "
               f"(rtol {RTOL}, atol {ATOL})")
      break
  print(f"{case['name']}: {time.time() - t0:.1f} s, max |diff| {diffs[worst]:.2e} ({worst}), "
        f"{usage:.2f} of the tolerance", flush=True)
  return {**case, "max_abs_diff": diffs[worst], "worst_leaf": worst, "error": error}


if __name__ == "__main__":
  assert jax.device_count() == 2
  results = [compare(json.loads(a)) for a in sys.argv[2:]]
  with open(sys.argv[1], "w") as f:
    json.dump(results, f)
