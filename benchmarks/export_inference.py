"""Inference images/s on the CPU: an exported ONNX file in onnxruntime, cnn_jax's jitted
forward pass, and PyTorch, side by side in one run.

  python benchmarks/export_inference.py [--models resnet18 resnet50] [--batches 1 32]
      [--image_size 224] [--rounds 3] [--threads 2]

Each side computes the same thing from the same uint8 NHWC batch: normalization (ImageNet
mean / std), the network in eval mode, softmax. The weights are random (the speed does
not depend on them).
* onnxruntime: `cnn_jax.export.to_onnx` of the forward pass (batch norm folded, dynamic
  batch), CPUExecutionProvider, intra-op threads = --threads, all graph optimizations;
* cnn_jax: `predict.Predictor.probs`, what `cnn-jax predict` runs (jit, weights as an
  argument, batch norm unfolded);
* PyTorch: torchvision's model when torchvision imports, else the copy of its ResNet
  layout in benchmarks/gpu/resnet50_vs_torch.py; eval mode, `torch.inference_mode`,
  channels_last, torch.set_num_threads(--threads).
Rounds alternate the three sides so that each sees the same machine state; the median
round is reported (warm-up and compilation excluded). Results:
benchmarks/results/export_inference.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def jax_sides(name: str, size: int, threads: int):
  """(cnn_jax probs fn, onnxruntime probs fn, notes) for zoo model `name`."""
  import jax
  import jax.numpy as jnp
  import onnxruntime
  from cnn_jax import export, models, predict
  from cnn_jax.data import augment
  model = models.get_model(name, num_classes=1000)
  shape = (size, size, 3)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, *shape)), train=False))(
      jax.random.key(0))
  p = predict.Predictor(model, variables, augment.make_preprocess_fn(None, MEAN, STD), shape)
  t = time.perf_counter()
  proto = export.to_onnx(export.from_predictor(p), "dynamic")
  convert_s = time.perf_counter() - t
  path = os.path.join(tempfile.mkdtemp(), f"{name}.onnx")
  with open(path, "wb") as f:
    f.write(proto.SerializeToString())
  opts = onnxruntime.SessionOptions()
  opts.intra_op_num_threads = threads
  session = onnxruntime.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
  notes = {"onnx_bytes": os.path.getsize(path), "onnx_convert_s": round(convert_s, 1)}

  def run_jax(x):
    return np.asarray(jax.block_until_ready(p.probs(x)))

  def run_ort(x):
    return session.run(None, {"images": x})[0]
  return run_jax, run_ort, notes


def torch_side(name: str, threads: int):
  import torch
  sys.path.insert(0, os.path.join(HERE, "gpu"))
  from resnet50_vs_torch import torch_resnet  # torchvision, or the same layout built there
  torch.set_num_threads(threads)
  model, what = torch_resnet(name, 1000)
  model = model.eval().to(memory_format=torch.channels_last)
  mean = torch.tensor(MEAN).view(1, 3, 1, 1)
  std = torch.tensor(STD).view(1, 3, 1, 1)

  def run(x):
    with torch.inference_mode():
      t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255)
      t = ((t - mean) / std).contiguous(memory_format=torch.channels_last)
      return torch.softmax(model(t), -1).numpy()
  return run, what


def timed(fn, x, reps: int) -> float:
  """Seconds per call, the median of `reps` calls."""
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn(x)
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
  ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--out", default=os.path.join(HERE, "results", "export_inference.json"))
  args = ap.parse_args()
  rows = []
  for name in args.models:
    run_jax, run_ort, notes = jax_sides(name, args.image_size, args.threads)
    run_torch, torch_what = torch_side(name, args.threads)
    for batch in args.batches:
      x = np.random.default_rng(0).integers(0, 256, (batch, args.image_size, args.image_size, 3),
                                            dtype=np.uint8)
      sides = {"onnxruntime": run_ort, "cnn_jax": run_jax, "torch": run_torch}
      for fn in sides.values():  # compile / warm up
        fn(x)
        fn(x)
      reps = 10 if batch == 1 else 2
      per = {k: [] for k in sides}
      for _ in range(args.rounds):
        for k, fn in sides.items():
          per[k].append(timed(fn, x, reps))
      row = {"model": name, "batch": batch,
             **{f"{k}_img_s": round(batch / statistics.median(v), 1) for k, v in per.items()},
             **{f"{k}_ms": round(1000 * statistics.median(v), 1) for k, v in per.items()},
             "torch_model": torch_what, **notes}
      diff = float(np.abs(run_ort(x) - run_jax(x)).max())
      row["max_abs_prob_difference_onnx_vs_jax"] = diff
      rows.append(row)
      print(json.dumps(row), flush=True)
  import jax
  import onnxruntime
  import torch
  info = {"command": "python benchmarks/export_inference.py " + " ".join(sys.argv[1:]),
          "machine": f"{platform.machine()}, {os.cpu_count()} cores",
          "load_average_at_end": os.getloadavg(), "threads": args.threads,
          "versions": {"jax": jax.__version__, "onnxruntime": onnxruntime.__version__,
                       "torch": torch.__version__},
          "rows": rows}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(info, f, indent=2)
  print("| model | batch | onnxruntime img/s | cnn_jax img/s | PyTorch img/s |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['model']} | {r['batch']} | {r['onnxruntime_img_s']} | {r['cnn_jax_img_s']} "
          f"| {r['torch_img_s']} |")


if __name__ == "__main__":
  main()
