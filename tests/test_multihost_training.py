"""`cnn-jax train` as two real processes (2 CPU devices each) on 127.0.0.1.

Each process reads its own half of a real array_record data set (tfds' dummy_mnist,
prepared in the test), the global batch is assembled across processes, and both must
finish with the same parameters and an evaluation that counts every test example exactly
once — compared with evaluating the saved parameters in a single process.
"""
import json
import os
import socket
import subprocess
import sys

import jax
import pytest
import tensorflow_datasets as tfds

from cnn_jax import inference
from cnn_jax.training import evaluation, setup


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # 25 s; the default run keeps tests/test_multiprocess.py (two real processes'
# reductions and SGD step against one process) and tests/test_faults.py's process agreement
def test_two_processes_train_together(tmp_path):
  data_dir = str(tmp_path / "data")
  tfds.testing.DummyMnist(data_dir=data_dir, file_format="array_record").download_and_prepare()
  # conftest's compile settings (cheap, exact) plus two host devices per process.
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.getcwd(),
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
  outs = run_two_processes(tmp_path, data_dir, env, num_epochs=2)
  # train[:90%] = 18 examples, 9 per process, 2 per process per step: 4 steps an epoch.
  assert [o["final_step"] for o in outs] == [8, 8]
  assert outs[0]["test"] == outs[1]["test"]
  assert outs[0]["test"]["num_examples"] == 20  # 10 + 10 test examples, none twice
  assert outs[0]["validation"]["num_examples"] == 2  # train[90%:], held out of training
  # One process, the saved parameters, the whole test split: the same accuracy.
  model, variables, cfg = inference.load(str(tmp_path / "run"), "latest")
  cfg.dataset.data_dir = data_dir
  cfg.distributed.num_processes = None
  s = setup.setup(cfg, for_training=False)
  state = s.compiled.init_state(jax.random.key(0)).replace(params=variables["params"])
  single = evaluation.evaluate(s, state, s.test_data)
  assert single["num_examples"] == 20
  assert single["accuracy"] == pytest.approx(outs[0]["test"]["accuracy"], abs=1e-6)
  assert single["loss"] == pytest.approx(outs[0]["test"]["loss"], rel=1e-5)

  # A step that cannot be read: every process sets it aside and all restore the same
  # older step (process 0 alone moving it, others reloading without waiting, raced).
  ckdir = tmp_path / "run" / "checkpoints"
  for f in ckdir.glob("8/state/**/*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"")
  outs = run_two_processes(tmp_path, data_dir, env, num_epochs=3)
  assert [o["final_step"] for o in outs] == [12, 12]
  assert len(list(ckdir.glob("corrupt-8-*"))) == 1


def run_two_processes(tmp_path, data_dir, env, num_epochs):
  port = free_port()
  procs = []
  for pid in range(2):
    cmd = [sys.executable, "-m", "cnn_jax.cli", "train", "--config",
           "experiments/mnist_mlp.py:smoke", "--workdir", str(tmp_path / "run"),
           "--config.dataset.name=dummy_mnist", f"--config.dataset.data_dir={data_dir}",
           "--config.batch_size=4", "--config.eval_batch_size=8",
           f"--config.num_epochs={num_epochs}",
           "--config.progress_bar=False",  # asynchronous checkpoints, as users run
           f"--config.distributed.coordinator_address=127.0.0.1:{port}",
           "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}"]
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("two-process training did not finish in 240 s")
    assert p.returncode == 0, err[-3000:]
    outs.append(json.loads(out[out.index("{"):]))
  return outs
