"""The GPU benchmark suite (benchmarks/gpu/) in its CPU smoke mode: every code path runs.

The three benchmarks start together as subprocesses (each pays JAX's import and a
compile; side by side they take about the time of the slowest, ~40-60 s on 2 cores) and
each test checks one results file: the keys, and positive finite figures (marked `slow`:
`pytest -m slow tests/test_gpu_benchmarks_smoke.py`). The results
file rules (never overwrite; smoke never writes into benchmarks/results) and the CIFAR-10
pack are checked in-process on tiny inputs.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU = os.path.join(REPO, "benchmarks", "gpu")
# The smallest shapes that still run each benchmark's whole path.
SMOKE_ARGS = {
    # float32: PyTorch's bf16 autocast on a CPU without bf16 units takes ~3 s a step
    # (the autocast path is the same code with enabled=False); JAX's bf16 path runs in
    # the other two.
    "resnet50_vs_torch": ["--model", "resnet18", "--image_size", "32", "--batch", "2",
                          "--dtype", "float32", "--steps", "1"],
    "cifar10_time_to_94": [],
    "parallel_overhead": [],
}
COMMON_KEYS = {"benchmark", "device", "platform", "jax", "jaxlib", "command", "smoke",
               "date_utc", "wall_seconds", "git_commit"}


def _module(name):
  sys.path.insert(0, GPU)
  try:
    spec = importlib.util.spec_from_file_location(name, os.path.join(GPU, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
  finally:
    sys.path.remove(GPU)


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
  """Run the three smoke benchmarks side by side; {name: results dict or error text}."""
  out = tmp_path_factory.mktemp("gpu_smoke")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  env.pop("XLA_FLAGS", None)  # one CPU device: the benchmarks are for one device
  procs = {name: subprocess.Popen(
      [sys.executable, os.path.join(GPU, f"{name}.py"), "--smoke", "--out_dir", str(out), *args],
      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for name, args in SMOKE_ARGS.items()}
  results = {}
  for name, p in procs.items():
    try:
      stdout, stderr = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      p.kill()
      stdout, stderr = p.communicate()
    path = out / f"gpu_{name}_smoke.json"
    results[name] = (json.loads(path.read_text()) if p.returncode == 0 and path.exists()
                     else f"exit {p.returncode}\n{stderr[-3000:]}")
  return results


def _get(res, dotted):
  for k in dotted.split("."):
    res = res[k]
  return res


def _check(res, positive):
  assert isinstance(res, dict), res
  assert COMMON_KEYS <= set(res), COMMON_KEYS - set(res)
  assert res["smoke"] is True and res["platform"] == "cpu" and res["device"]
  for key in positive:
    v = _get(res, key)
    assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (key, v)


@pytest.mark.slow  # ~45-100 s of benchmark subprocesses: pytest -m slow
def test_resnet50_vs_torch_smoke(smoke_results):
  res = smoke_results["resnet50_vs_torch"]
  _check(res, ["images_per_sec.jax", "step_ms.jax", "jax_side.parameters", "batch"])
  assert res["batch"] == 2 and res["image_size"] == 32 and res["steps_per_round"] == 1
  if importlib.util.find_spec("torch") is not None:
    _check(res, ["images_per_sec.torch", "step_ms.torch", "jax_over_torch"])
    assert res["torch_side"]["parameters"] == res["jax_side"]["parameters"] == 11_689_512  # torchvision resnet18
  else:
    assert "torch_skipped" in res


@pytest.mark.slow  # ~45-100 s of benchmark subprocesses: pytest -m slow
def test_cifar10_time_to_94_smoke(smoke_results):
  res = smoke_results["cifar10_time_to_94"]
  _check(res, ["train_seconds", "seconds_per_epoch", "train_images_per_sec", "compile_seconds",
               "eval_seconds", "steps_per_epoch"])
  assert res["epochs"] == len(res["history"]) == 1
  assert 0.0 <= res["final_test_accuracy"] <= 1.0
  assert res["reached_target"] is False and res["train_seconds_to_target"] is None
  assert res["train_images"] == 512 and res["data"].startswith("synthetic")


@pytest.mark.slow  # ~45-100 s of benchmark subprocesses: pytest -m slow
def test_parallel_overhead_smoke(smoke_results):
  res = smoke_results["parallel_overhead"]
  runners = ("plain_jit", "sharded", "pmap", "sharded_input_pipeline")
  _check(res, [f"step_ms.{k}" for k in runners] + [f"images_per_sec.{k}" for k in runners])
  for k in ("sharded_vs_plain_jit_pct", "pmap_vs_plain_jit_pct", "pipeline_vs_device_batch_pct"):
    assert math.isfinite(res["overhead_pct"][k]) and isinstance(res["within_target"][k], bool)
  if "sharded_on_device_index" in res["step_ms"]:  # a checkout with dataset.on_device
    _check(res, ["step_ms.sharded_on_device_index"])
    assert math.isfinite(res["overhead_pct"]["on_device_index_vs_device_batch_pct"])


def test_results_never_overwritten(tmp_path):
  common = _module("gpu_common")
  first = common.results_path(str(tmp_path), "x", smoke=False)
  assert os.path.basename(first) == "gpu_x.json"
  open(first, "w").close()
  second = common.results_path(str(tmp_path), "x", smoke=False)
  assert second != first and os.path.basename(second).startswith("gpu_x_2")
  assert os.path.basename(common.results_path(str(tmp_path), "x", smoke=True)) == "gpu_x_smoke.json"
  with pytest.raises(SystemExit, match="never go into benchmarks/results"):
    common.results_path(common.RESULTS_DIR, "x", smoke=True)
  assert common.finite({"a": [float("nan"), 1.0]}) == {"a": [None, 1.0]}


def test_cifar10_pack_round_trip(tmp_path):
  """pack_cifar10 stores the JPEG files' bytes; loading decodes the very pixels the
  image-folder source decodes."""
  from PIL import Image
  from cnn_jax.data.images import decode_image
  rng = np.random.default_rng(0)
  src = tmp_path / "cifar"
  files = {}
  for split, n in (("train", 3), ("test", 2)):
    for cls in ("cat", "airplane"):
      d = src / split / cls
      d.mkdir(parents=True)
      for i in range(n):
        path = d / f"{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(path, quality=75)
        files.setdefault(split, []).append((str(path), cls))
  pack = _module("pack_cifar10")
  out = tmp_path / "pack.npz"
  r = subprocess.run([sys.executable, os.path.join(GPU, "pack_cifar10.py"), "--src", str(src),
                      "--out", str(out)], capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 0, r.stderr
  data = pack.load(str(out))
  assert data["class_names"] == ["airplane", "cat"]
  for split in ("train", "test"):
    want = sorted(files[split], key=lambda f: (f[1], f[0]))  # class folders, then file names
    assert data[f"{split}_images"].shape == (len(want), 32, 32, 3)
    for k, (path, cls) in enumerate(want):
      assert (data[f"{split}_images"][k] == decode_image(path, 3)).all()
      assert data[f"{split}_labels"][k] == ["airplane", "cat"].index(cls)
  again = subprocess.run([sys.executable, os.path.join(GPU, "pack_cifar10.py"), "--src", str(src),
                          "--out", str(out)], capture_output=True, text=True, cwd=REPO)
  assert again.returncode != 0 and "exists" in again.stderr + again.stdout
