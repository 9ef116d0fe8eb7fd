"""Batch norm's variance formula: what it does to 1-device vs 8-device results, and its cost.

flax's BatchNorm (and so every zoo model, through `layers.batch_norm`) computes the batch
variance as E[x^2] - E[x]^2 (`use_fast_variance=True`, one pass, one all-reduce under
pmap). Where a channel's mean is large against its spread this cancels, and the same
statistics summed in another order (1 device, or 8 partial sums) differ far beyond float32
rounding. This script measures both sides:

    python benchmarks/bn_variance.py devices [MODEL]  # googlenet (or resnet50), one SGD
                                                      # step, 1 vs 8 devices
    python benchmarks/bn_variance.py speed      # resnet20 train step time, fast vs two-pass

`devices` runs tests/bn_sync_worker.py's comparison (1 device, 8 sharded, 8 pmap,
simulated CPU devices) once per formula; `speed` times the jitted step of each, interleaved.
Results are appended to benchmarks/results/bn_variance.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "bn_variance.json"


def use_variance(fast: bool) -> None:
  """Make `layers.batch_norm` build flax BatchNorms with this variance formula."""
  from cnn_jax import layers
  from cnn_jax.layers import norm
  original = norm.batch_norm

  def batch_norm(*args, **kwargs):
    kwargs.setdefault("use_fast_variance", fast)
    return original(*args, **kwargs)
  layers.batch_norm = norm.batch_norm = batch_norm


# tests/test_batch_norm_sync.py's cases of the models whose 1-device runs it bounds apart.
CASES = {"googlenet": {"name": "googlenet", "kwargs": {"aux_logits": True}, "shape": [32, 32, 3]},
         "resnet50": {"name": "resnet50", "kwargs": {"stage_sizes": [1]}, "shape": [32, 32, 3]}}


def devices(formula: str, model: str) -> dict:
  """One formula's 1 / 8 sharded / 8 pmap comparison (run in a fresh process: the worker
  sets XLA_FLAGS for 8 devices before jax starts)."""
  sys.path.insert(0, str(REPO / "tests"))
  import bn_sync_worker  # noqa: E402 - sets the 8-device XLA flags first
  use_variance(formula == "fast")
  return {"formula": formula, **bn_sync_worker.compare(CASES[model])}


def speed(name: str = "resnet20", batch: int = 128, size: int = 32, rounds: int = 7) -> dict:
  import jax
  import numpy as np
  import optax
  from cnn_jax import models

  def compiled(fast: bool):
    use_variance(fast)
    model = models.get_model(name, num_classes=10)
    x = np.random.default_rng(0).random((batch, size, size, 3)).astype(np.float32)
    y = np.arange(batch) % 10
    v = model.init(jax.random.key(0), x[:1], train=False)
    tx = optax.sgd(0.05, momentum=0.9)

    def step(params, stats, opt, x, y):
      def loss(p):
        logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                  mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
      (value, upd), grads = jax.value_and_grad(loss, has_aux=True)(params)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), upd["batch_stats"], opt, value
    f = jax.jit(step)
    args = (v["params"], v["batch_stats"], tx.init(v["params"]), x, y)
    jax.block_until_ready(f(*args))
    return f, args

  fns = {"fast": compiled(True), "two_pass": compiled(False)}
  times: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(rounds):
    for k, (f, args) in fns.items():
      t0 = time.perf_counter()
      for _ in range(5):
        out = f(*args)
      jax.block_until_ready(out)
      times[k].append((time.perf_counter() - t0) / 5)
  med = {k: float(np.median(v)) for k, v in times.items()}
  return {"model": name, "batch": batch, "step_seconds": med,
          "two_pass_over_fast": med["two_pass"] / med["fast"]}


def main() -> None:
  what = sys.argv[1] if len(sys.argv) > 1 else "devices"
  if what == "devices-one":
    print("RESULT " + json.dumps(devices(sys.argv[2], sys.argv[3])), flush=True)
    return
  if what == "devices":
    model = sys.argv[2] if len(sys.argv) > 2 else "googlenet"
    results = []
    for formula in ("fast", "two_pass"):
      p = subprocess.run([sys.executable, __file__, "devices-one", formula, model], text=True,
                         capture_output=True, cwd=REPO / "tests")
      line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
      if p.returncode or not line:
        sys.exit(f"{formula}: worker failed:\n{p.stderr[-2000:]}")
      results.append(json.loads(line[0][7:]))
      r = results[-1]
      print(f"{formula}: 1 vs 8 sharded {r['one_vs_sharded']['max_abs_diff']:.2e} "
            f"({r['one_vs_sharded']['worst_leaf']}), pmap vs sharded "
            f"{r['pmap_vs_sharded']['max_abs_diff']:.2e}", flush=True)
    record = {"devices": results}
  elif what == "speed":
    record = {"speed": speed(*(sys.argv[2:3] or ["resnet20"]))}
    print(json.dumps(record))
  else:
    sys.exit("usage: bn_variance.py devices [googlenet|resnet50] | speed [MODEL]")
  record.update(date=time.strftime("%Y-%m-%d %H:%M"), machine=f"{os.cpu_count()}-core CPU")
  history = json.loads(OUT.read_text()) if OUT.exists() else []
  OUT.write_text(json.dumps(history + [record], indent=1) + "\n")


if __name__ == "__main__":
  main()
