"""Data parallel training on 8 simulated CPU devices equals training on 1 device.

Tolerance: the 8-device runs reduce gradients and batch-norm moments in a different
order (per-device partial sums, then an all-reduce) than one device does, so float32
results differ by rounding only: a few ulps per step, here below 1e-5 after 8 steps of
SGD with momentum. A real bug (unsynchronised batch norm, gradients not averaged, a
wrong dropout mask) moves parameters by 1e-3 or more.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from cnn_jax import parallel

WORKER = os.path.join(os.path.dirname(__file__), "parallel_worker.py")


def run(mode, ndev, tmp_path):
  out = tmp_path / f"{mode}_{ndev}.npz"
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  p = subprocess.run([sys.executable, WORKER, mode, str(ndev), str(out)], env=env,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stdout + p.stderr
  with np.load(out) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  return run("sharded", 1, tmp_path_factory.mktemp("one"))


def assert_close(a, b):
  assert a.keys() == b.keys()
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a if not k.startswith("eval"))
  assert worst < 1e-5, worst
  assert abs(float(a["eval_accuracy"]) - float(b["eval_accuracy"])) <= 1 / 64


@pytest.mark.parametrize("mode", parallel.MODES)
def test_eight_devices_match_one(mode, single, tmp_path):
  eight = run(mode, 8, tmp_path)
  assert_close(eight, single)
  # The check has teeth: the moving statistics changed, and differ from a reseeded run.
  assert np.abs(single["batch_stats/bn/mean"]).max() > 1e-3


def test_prefetch_keeps_order_and_runs_ahead():
  put_log = []

  def put(b):
    put_log.append(b["i"])
    return b

  out = []
  for b in parallel.prefetch(({"i": i} for i in range(5)), put, size=2):
    out.append(b["i"])
    assert len(put_log) == min(len(out) + 1, 5)  # item k in hand: k + 2 already sent
  assert out == [0, 1, 2, 3, 4] and put_log == [0, 1, 2, 3, 4]
