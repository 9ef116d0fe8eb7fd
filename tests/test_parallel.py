"""Data parallel training on 8 simulated CPU devices equals training on 1 device.

Through the real loop (8 steps of SGD with momentum): the test's ParityNet (batch norm,
dropout) in the default run; the zoo's tiny_cnn (three conv-BN-relu-pool blocks) and
small_convnet with batch norm (small_convnet_bn in parallel_worker.MODELS) in the slow run.
Every zoo batch-norm model is also compared after one step across 1 device, 8 sharded and
8 pmap by tests/test_batch_norm_sync.py (small_convnet, airbench and tiny_cnn by default).

Tolerance: the 8-device runs reduce gradients and batch-norm moments in a different order
(per-device partial sums, then an all-reduce) than one device does, so float32 results
differ by rounding: ParityNet at most 6.6e-7 apart after 8 steps, small_convnet_bn 5.3e-6.
tiny_cnn's is larger because XLA:CPU (jax 0.10.2) compiles each device count's program to
slightly different gradients, not data parallelism: against a float64 eager reference
after one step the 1-device, 1-pmap and 8-pmap programs are within 6e-8, but with XLA's
YNNPACK fusions on, the 8-device sharded program's conv3 kernel gradient is 3e-4 off (1.6e-5 in
the parameters after one step, 1.1e-2 in running variance after 8); the worker turns them
off, and then the 1-device program drifts most: 1.8e-5 after 8 steps (the others 2e-7 from
the reference). Before layers.MaxPool's fix (tests/test_max_pool_gradient.py) its tiled
path's crop of 7x7 was miscompiled too (pmap on 8 devices 1.5e-3 off after 8 steps). A real
bug (unsynchronised batch norm, gradients not averaged, a wrong dropout mask) moves
parameters by 1e-3 or more.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from cnn_jax import parallel

WORKER = os.path.join(os.path.dirname(__file__), "parallel_worker.py")


def run(mode, ndev, tmp_path, models="parity_net"):
  out = tmp_path / f"{mode}_{ndev}.npz"
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  p = subprocess.run([sys.executable, WORKER, mode, str(ndev), str(out), models], env=env,
                     capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout + p.stderr
  with np.load(out) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  return run("sharded", 1, tmp_path_factory.mktemp("one"))


# Largest |8 devices - 1 device| over every parameter and batch statistic after 8 steps.
# Measured: parity_net 6.6e-7, tiny_cnn 1.8e-5, small_convnet_bn 5.3e-6 (module docstring);
# zoo models share tiny_cnn's bound.
BOUND = {"parity_net": 1e-5, "tiny_cnn": 5e-5, "small_convnet_bn": 5e-5}


def assert_close(a, b, model):
  a = {k.split("/", 1)[1]: v for k, v in a.items() if k.startswith(model + "/")}
  b = {k.split("/", 1)[1]: v for k, v in b.items() if k.startswith(model + "/")}
  assert a.keys() == b.keys() and any(k.startswith("batch_stats/") for k in a)
  diffs = {k: float(np.max(np.abs(a[k] - b[k]))) for k in a if not k.startswith("eval")}
  worst = max(diffs, key=diffs.get)
  assert diffs[worst] < BOUND[model], (model, worst, diffs[worst])
  assert abs(float(a["eval_accuracy"]) - float(b["eval_accuracy"])) <= 1 / 64


# 33 s with its fixture: the slow run. The default run compares zoo batch-norm models on 1
# device, 8 sharded and 8 pmap (tests/test_batch_norm_sync.py) and two real processes
# (tests/test_multiprocess.py).
@pytest.mark.slow
@pytest.mark.parametrize("mode", parallel.MODES)
def test_eight_devices_match_one(mode, single, tmp_path):
  eight = run(mode, 8, tmp_path)
  assert_close(eight, single, "parity_net")
  # The check has teeth: the moving statistics changed, and differ from a reseeded run.
  assert np.abs(single["parity_net/batch_stats/bn/mean"]).max() > 1e-3


@pytest.mark.slow  # ~90 s: three more trainings (1 device, 8 sharded, 8 pmap) of two models
def test_eight_devices_match_one_for_zoo_batch_norm_models(tmp_path):
  zoo = "tiny_cnn,small_convnet_bn"
  one = run("sharded", 1, tmp_path, zoo)
  for mode in parallel.MODES:
    eight = run(mode, 8, tmp_path, zoo)
    for model in zoo.split(","):
      assert_close(eight, one, model)
  assert np.abs(one["tiny_cnn/batch_stats/bn3/mean"]).max() > 1e-3
  assert np.abs(one["small_convnet_bn/batch_stats/bn3/mean"]).max() > 1e-3


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
