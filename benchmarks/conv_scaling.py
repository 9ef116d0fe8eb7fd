"""Where resnet20's second core goes: each of its layer kinds timed on 1 and on 2 cores.

  python benchmarks/conv_scaling.py [--cores 1 2] [--batch 128]

resnet20 scales 1.32x from 1 to 2 cores on XLA:CPU against PyTorch's 1.85x
(`torch_vs_jax.py --cores 1 2`). This times, per layer kind of resnet20 at batch 128, the
jitted forward + backward (gradients of the input and the kernel) of: a 3x3 convolution at
each stage's size (32x32x16, 16x16x32, 8x8x64), the same convolution written as im2col +
one matmul, and as two convolutions of the batch's halves (independent operations, which
XLA:CPU's runtime may run side by side), and batch norm + ReLU at the same sizes (train mode: batch statistics). Each core count runs in a fresh process pinned to its cores
(sched_setaffinity before jax starts). Prints and writes
benchmarks/results/conv_scaling.json: milliseconds per call and the scaling of each kind.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conv_formulations  # noqa: E402  (its im2col: conv_mm)

STAGES = ((32, 16), (16, 32), (8, 64))  # (spatial size, channels) of resnet20's stages


def measure(batch: int, reps: int = 20, rounds: int = 5) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax import lax

  def conv_loss(x, k):
    y = lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(y * y)

  def im2col_loss(x, k):  # the same convolution as one matmul over 3x3 patches
    y = conv_formulations.conv_mm(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), k)
    return jnp.sum(y * y)

  def split_loss(x, k):  # the batch's two halves as two independent convolutions
    y = jnp.concatenate([lax.conv_general_dilated(h, k, (1, 1), "SAME", dimension_numbers=(
        "NHWC", "HWIO", "NHWC")) for h in jnp.split(x, 2, axis=0)], 0)
    return jnp.sum(y * y)

  def bn_relu_loss(x, scale):
    mean = x.mean((0, 1, 2))
    var = jnp.square(x - mean).mean((0, 1, 2))
    y = jax.nn.relu((x - mean) * lax.rsqrt(var + 1e-5) * scale)
    return jnp.sum(y * y)

  out = {}
  rng = np.random.default_rng(0)
  for size, ch in STAGES:
    x = rng.normal(size=(batch, size, size, ch)).astype(np.float32)
    k = (rng.normal(size=(3, 3, ch, ch)) * 0.1).astype(np.float32)
    s = np.ones(ch, np.float32)
    for name, f, args in ((f"conv3x3 {size}x{size}x{ch}", conv_loss, (x, k)),
                          (f"im2col conv3x3 {size}x{size}x{ch}", im2col_loss, (x, k)),
                          (f"split-batch conv3x3 {size}x{size}x{ch}", split_loss, (x, k)),
                          (f"bn+relu {size}x{size}x{ch}", bn_relu_loss, (x, s))):
      g = jax.jit(jax.grad(f, argnums=(0, 1)))
      jax.block_until_ready(g(*args))
      times = []
      for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
          r = g(*args)
        jax.block_until_ready(r)
        times.append((time.perf_counter() - t0) / reps)
      out[name] = float(np.median(times)) * 1e3
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cores", type=int, nargs="+", default=[1, 2])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--pin", type=int, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.pin:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.pin]))
    print("RESULT " + json.dumps(measure(args.batch)), flush=True)
    return
  ms = {}
  for n in args.cores:
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--pin", str(n), "--batch",
                        str(args.batch)], capture_output=True, text=True, check=True)
    ms[n] = json.loads([x for x in r.stdout.splitlines() if x.startswith("RESULT ")][0][7:])
  lo, hi = min(args.cores), max(args.cores)
  rows = {k: {"ms": {f"{n}_cores": round(ms[n][k], 2) for n in args.cores},
              "scaling": round(ms[lo][k] / ms[hi][k], 3)} for k in ms[lo]}
  for k, v in rows.items():
    print(f"{k:36s} {v['ms']}  scaling {v['scaling']:.2f}x")
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "conv_scaling.json")
  with open(path, "w") as f:
    json.dump({"batch": args.batch, "cores": args.cores, "layers": rows}, f, indent=2)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
