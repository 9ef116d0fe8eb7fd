"""A run refused at start leaves no work directory behind, and removes nothing saved."""
from __future__ import annotations

import pytest

from cnn_jax.training import trainer, workdir as workdir_lib
from helpers import random_split, tiny_config


def test_a_refused_run_leaves_no_directory(tmp_path):
  data = random_split(64, shape=(32, 32, 1))  # mnist_cnn expects 28x28x1: refused in setup
  new = tmp_path / "runs" / "new"
  with pytest.raises(ValueError, match="expects 28x28x1"):
    trainer.train_and_evaluate(tiny_config(), str(new), data, data)
  assert not new.exists()
  assert (tmp_path / "runs").exists(), "only the directory the run itself would have been"


def test_a_refused_run_in_an_existing_directory_leaves_it_as_it_was(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  data = random_split(64, shape=(32, 32, 1))
  with pytest.raises(ValueError):
    trainer.train_and_evaluate(tiny_config(), str(tmp_path), data, data)
  assert (tmp_path / "notes.txt").read_text() == "mine"


def test_only_start_up_bookkeeping_is_removed(tmp_path):
  empty = tmp_path / "a"
  (empty / "tensorboard").mkdir(parents=True)
  (empty / "metrics.jsonl").write_text("")
  (empty / "config_history.jsonl").write_text('{"step": 0}\n')
  assert workdir_lib.remove_if_nothing_saved(workdir_lib.resolve(empty))
  assert not empty.exists()
  logged = tmp_path / "b"
  logged.mkdir()
  (logged / "metrics.jsonl").write_text('{"step": 2, "train/loss": 2.3}\n')
  assert not workdir_lib.remove_if_nothing_saved(workdir_lib.resolve(logged))
  assert (logged / "metrics.jsonl").exists()
