"""`cnn-jax train --processes N`: N pinned processes on this machine, one jax.distributed job."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnn_jax import inference, local_processes


def test_split_argument():
  assert local_processes.split_argument(["--config=x.py", "--processes", "2", "--workdir=w"]) == (
      2, ["--config=x.py", "--workdir=w"])
  assert local_processes.split_argument(["--processes=3"]) == (3, [])
  assert local_processes.split_argument(["--workdir=w"]) == (1, ["--workdir=w"])
  with pytest.raises(ValueError, match="--processes takes a number of processes, got 'two'"):
    local_processes.split_argument(["--processes", "two"])


def test_core_groups_are_disjoint_and_cover_the_cores():
  assert local_processes.core_groups(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
  assert local_processes.core_groups(1, [3, 5]) == [[3, 5]]
  with pytest.raises(ValueError, match="gives this process 2 cores; use 1 to 2 processes"):
    local_processes.core_groups(3, [0, 1])


def test_each_process_gets_its_place_in_one_job():
  cmds = local_processes.commands(["--config=x.py", "--workdir=w"], 2, 1234)
  assert [c[-3:] for c in cmds] == [
      [f"--config.distributed.coordinator_address=127.0.0.1:1234",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"]
      for i in range(2)]
  assert all(c[1:4] == ["-m", "cnn_jax.cli", "train"] for c in cmds)
  # pmap unless the arguments choose (one all-reduce per dtype across processes)
  assert all(c[4:7] == ["--config=x.py", "--workdir=w", "--config.parallel=pmap"] for c in cmds)
  for chosen in (["--config.parallel=sharded"], ["--config.parallel", "sharded"]):
    cmds = local_processes.commands(["--config=x.py", *chosen], 2, 1234)
    assert all(sum("--config.parallel" in a for a in c) == 1 for c in cmds)
  assert "--config.parallel=pmap" not in local_processes.commands(["--config=x.py"], 1, 1)[0]


EXPERIMENT = """
from cnn_jax.config import base_config
def get_config():
  c = base_config()
  c.model, c.model_input_shape = "mlp", (8, 8, 1)
  c.dataset.name, c.dataset.path, c.dataset.channels = "folder", {root!r}, 1
  c.dataset.train_split, c.dataset.val_split, c.dataset.test_split = "train", "", ""
  c.dataset.cache = False
  c.batch_size, c.num_epochs, c.log_every_steps = 16, 2, 2
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 0.1
  c.progress_bar = False
  c.compilation_cache_dir = ""
  return c
"""


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
@pytest.mark.parametrize("mode", ["sharded", "pmap"])
def test_two_processes_train_as_one(tmp_path, mode):
  """The same run as 1 process and as 2 (Gloo over 127.0.0.1): the same weights up to the
  order of the gradient sums, one metrics file, written by process 0; resumed for a third
  epoch from its checkpoint, still the same as 1 process. Under pmap the 2 processes' state
  is host-local, which orbax did not save ("Cannot serialize host local jax.Array")."""
  rng = np.random.default_rng(0)
  for k in range(2):
    os.makedirs(tmp_path / "data" / "train" / f"c{k}")
    for i in range(32):
      Image.fromarray((rng.integers(0, 100, (8, 8)) + 120 * k).astype(np.uint8)).save(
          tmp_path / "data" / "train" / f"c{k}" / f"{i}.png")
  (tmp_path / "exp.py").write_text(EXPERIMENT.format(root=str(tmp_path / "data")))
  runs = {}
  for n in (1, 2):
    workdir = tmp_path / f"run{n}"
    for epochs in (2, 3):  # the second command resumes from the first one's checkpoint
      out = subprocess.run([sys.executable, "-m", "cnn_jax.cli", "train", "--processes", str(n),
                            "--config", str(tmp_path / "exp.py"), "--workdir", str(workdir),
                            f"--config.parallel={mode}", f"--config.num_epochs={epochs}"],
                           capture_output=True, text=True, timeout=600)
      assert out.returncode == 0, out.stderr[-3000:]
      assert "failed" not in out.stderr, out.stderr[-3000:]
    assert "resumed from step 8" in out.stderr
    runs[n] = inference.load(str(workdir), "latest")
  assert "on 2 cpu devices in 2 processes" in out.stderr
  for a, b in zip(*(jax_leaves(runs[n].variables) for n in (1, 2))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  lines = (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines if "train/loss" in json.loads(l)] == [
      2, 4, 6, 8, 10, 12]


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
