"""Time jitted `batched_nms` against the `nms_numpy` reference on 1,000 random boxes.

  python benchmarks/nms.py [--runs 20] [--json out.json]

One image (B=1), N=1000 boxes, 10 classes, pre_nms_top_k=1000 (every box is a
candidate, so the IoU matrix is 1000x1000), iou_threshold 0.45, max_detections 100.
The jitted call is warmed up (compile excluded) and the median of `--runs` calls is
reported, with block_until_ready. The reference runs `nms_numpy` once per class (ten
~100x100 IoU matrices, so less arithmetic than the jitted 1000x1000 one), merges and
truncates the same way, and the two outputs are checked to agree.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax.detection.nms import batched_nms, nms_numpy  # noqa: E402

N, CLASSES, IOU, MAX_DET = 1000, 10, 0.45, 100


def median_ms(fn, runs: int) -> float:
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times) * 1e3


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--runs", type=int, default=20)
  ap.add_argument("--json", default=None, help="write the result here")
  args = ap.parse_args()

  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 1, (1, N, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(0.02, 0.3, (1, N, 2))], -1).astype(np.float32)
  scores = rng.uniform(0, 1, (1, N)).astype(np.float32)
  classes = rng.integers(0, CLASSES, (1, N)).astype(np.int32)

  nms = jax.jit(lambda b, s, c: batched_nms(b, s, c, iou_threshold=IOU, pre_nms_top_k=N,
                                            max_detections=MAX_DET))
  b, s, c = jax.device_put(boxes), jax.device_put(scores), jax.device_put(classes)
  for _ in range(3):
    out = jax.block_until_ready(nms(b, s, c))  # compile + warm-up
  jax_ms = median_ms(lambda: jax.block_until_ready(nms(b, s, c)), args.runs)

  def reference():
    kept = []
    for cls in range(CLASSES):
      idx = np.flatnonzero(classes[0] == cls)
      kept.append(idx[nms_numpy(boxes[0, idx], scores[0, idx], IOU)])
    kept = np.concatenate(kept)
    return kept[np.argsort(-scores[0, kept], kind="stable")]

  ref = reference()
  n_kept, ref = len(ref), ref[:MAX_DET]
  np_ms = median_ms(reference, args.runs)
  got = np.asarray(out["scores"][0])[np.asarray(out["valid"][0])]
  assert np.array_equal(got, scores[0, ref]), "batched_nms disagrees with nms_numpy"

  result = {
      "benchmark": "nms", "n_boxes": N, "classes": CLASSES, "pre_nms_top_k": N,
      "iou_threshold": IOU, "max_detections": MAX_DET, "runs": args.runs,
      "kept": n_kept, "returned": int(len(ref)), "batched_nms_jit_ms": round(jax_ms, 3),
      "nms_numpy_ms": round(np_ms, 3), "backend": jax.default_backend(),
      "device": str(jax.devices()[0]), "jax": jax.__version__, "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
  }
  print(f"batched_nms (jit, {jax.default_backend()}): {jax_ms:.3f} ms/call  "
        f"(B=1, N={N}, pre_nms_top_k={N}, {CLASSES} classes, median of {args.runs})")
  print(f"nms_numpy per class (host):  {np_ms:.3f} ms/call  (same boxes; {n_kept} kept, "
        f"first {len(ref)} identical)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
