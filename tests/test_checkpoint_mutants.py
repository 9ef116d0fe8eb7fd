"""checkpoint.py in one process, without training: save, keep, best, restore bit for bit,
setting broken steps aside, loading for inference, each checked on a tiny batch-norm state.

tests/test_faults.py and tests/test_resume_policy.py train and kill runs to show the same
behaviour end to end; these take seconds, so that `benchmarks/mutation_fast.py
cnn_jax/checkpoint.py` can test every mutant of the module with them.
"""
from __future__ import annotations

import logging
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from jax.experimental import multihost_utils

from cnn_jax import checkpoint, library_noise
from cnn_jax.training.train_state import create_train_state
from helpers import empty_array_files
from state_compare import assert_same_arrays, state_arrays


class _BNNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(3)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(2)(x)


def _state(seed: int = 0, step: int = 0, tx=None):
  """A TrainState whose every part (params, batch_stats, opt_state, rng, step) depends on
  the seed and the step, so two steps' checkpoints cannot be mistaken for each other."""
  s = create_train_state(_BNNet(), tx or optax.adam(1e-3), jax.random.key(seed), (4,))
  bump = lambda t: jax.tree_util.tree_map(lambda a: a + 0.5 * step + seed, t)  # noqa: E731
  opt = jax.tree_util.tree_map(lambda a: a + step if a.dtype == jnp.float32 else a, s.opt_state)
  return s.replace(step=jnp.asarray(step, jnp.int32), params=bump(s.params),
                   batch_stats=bump(s.batch_stats), opt_state=opt,
                   rng=jax.random.fold_in(s.rng, step))


def _config(model: str = "tiny") -> ConfigDict:
  return ConfigDict({"model": model, "num_epochs": 2, "optimizer": {"name": "adam"}})


def _meta(step: int, model: str = "tiny") -> dict:
  return {"config": _config(model).to_dict(), "epoch": step, "metrics": {"step": step}}


def _assert_loaded(tree, state) -> None:
  """A tree loaded for inference (orbax gives the optimizer's namedtuples back as dicts)
  holds the state's arrays, leaf for leaf in the same (sorted) order, bit for bit."""
  got = jax.tree_util.tree_leaves(tree)
  want = jax.tree_util.tree_leaves(checkpoint.state_to_tree(state))
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _save_steps(workdir, steps, keep=3, **kw):
  kw.setdefault("best_metric", "accuracy")
  ckpts = checkpoint.Checkpoints(workdir, keep=keep, async_save=False, **kw)
  for step in steps:
    ckpts.save(_state(step=step), _meta(step))
  ckpts.wait()
  return ckpts


def test_state_tree_round_trip_keeps_every_part():
  s = _state(seed=3, step=5)
  tree = checkpoint.state_to_tree(s)
  assert list(tree) == ["step", "params", "batch_stats", "opt_state", "rng"]
  assert tree["rng"].dtype == jnp.uint32  # raw key data: orbax saves no typed keys
  back = checkpoint.tree_to_state(_state(), tree)
  assert_same_arrays(state_arrays(back), state_arrays(s))


def test_save_keep_and_restore_bit_for_bit(tmp_path):
  ckpts = _save_steps(tmp_path, [1, 2, 3], keep=2)
  try:
    assert ckpts.latest_step() == 3 and list(ckpts.latest.all_steps()) == [2, 3]
    assert ckpts.step_path(3) == str(tmp_path / "checkpoints" / "3")
    assert ckpts.step_path(None) == "none"
    for step in (None, 2):
      state, meta = checkpoint.restore(ckpts.latest, _state(), step)
      want = 3 if step is None else step
      assert_same_arrays(state_arrays(state), state_arrays(_state(step=want)))
      assert meta == _meta(want)
    assert checkpoint.read_meta(ckpts.latest, 2) == _meta(2)
  finally:
    ckpts.close()


def test_an_asynchronous_save_is_complete_after_wait(tmp_path):
  ckpts = checkpoint.Checkpoints(tmp_path, keep=3, best_metric=None, async_save=True)
  try:
    assert ckpts.save(_state(step=4), _meta(4))
    assert ckpts.wait() is None
    assert_same_arrays(state_arrays(checkpoint.restore(ckpts.latest, _state())[0]),
                       state_arrays(_state(step=4)))
  finally:
    ckpts.close()


def test_restore_of_an_empty_directory_names_it(tmp_path):
  ckpts = checkpoint.Checkpoints(tmp_path, keep=3, best_metric=None, async_save=False)
  try:
    with pytest.raises(FileNotFoundError, match=f"no checkpoint in .*{tmp_path.name}"):
      checkpoint.restore(ckpts.latest, _state())
    assert checkpoint.restore_latest_good(ckpts, _state(), _config()) is None
  finally:
    ckpts.close()


@pytest.mark.parametrize("mode,metric,values,best", [
    ("max", "accuracy", (0.5, 0.7, 0.6), 2), ("min", "loss", (0.5, 0.3, 0.4), 2),
    ("max", "accuracy", (0.9, 0.7, 0.6), 1), ("min", "loss", (0.2, 0.3, 0.1), 3)])
def test_best_keeps_the_best_step_by_its_mode(tmp_path, mode, metric, values, best):
  ckpts = checkpoint.Checkpoints(tmp_path, keep=3, best_metric=metric, best_mode=mode,
                                 async_save=False)
  try:
    for step, v in enumerate(values, start=1):
      assert ckpts.save_best(_state(step=step), _meta(step), {metric: v})
    ckpts.wait()
    assert list(ckpts.best.all_steps()) == [best]
    # A resumed run redoing that step does not save it again (nor replace it).
    assert not ckpts.save_best(_state(step=best, seed=9), _meta(best), {metric: values[best - 1]})
  finally:
    ckpts.close()
  tree, meta, step = checkpoint.load_checkpoint(tmp_path)
  assert step == best and meta == _meta(best)
  _assert_loaded(tree, _state(step=best))


def test_no_best_metric_means_no_best_checkpoints(tmp_path):
  ckpts = checkpoint.Checkpoints(tmp_path, keep=3, best_metric=None, async_save=False)
  try:
    assert ckpts.best is None
    assert ckpts.save_best(_state(step=1), _meta(1), {"accuracy": 1.0}) is False
    assert ckpts.wait() is None
  finally:
    ckpts.close()
  assert not (tmp_path / "best").exists()
  with pytest.raises(ValueError, match="best_mode must be 'max' or 'min', got 'up'"):
    checkpoint.Checkpoints(tmp_path / "x", keep=3, best_metric="loss", async_save=False,
                           best_mode="up")


def test_close_twice_leaves_the_quiet_scope_once(tmp_path):
  """Inside a caller's own quiet scope: a second close must not end that one too."""
  library_noise.enter()
  try:
    depth = library_noise._depth
    ckpts = checkpoint.Checkpoints(tmp_path, keep=3, best_metric="accuracy", async_save=False)
    assert library_noise._depth == depth + 1
    ckpts.close()
    ckpts.close()
    assert library_noise._depth == depth and ckpts.latest is None and ckpts.best is None
  finally:
    library_noise.leave()


def test_wait_removes_unfinished_saves_and_returns_a_failed_ones_error(tmp_path, monkeypatch):
  ckpts = _save_steps(tmp_path, [1])
  try:
    tmp = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1700000000"
    (tmp / "state").mkdir(parents=True)
    (tmp_path / "best" / "2.orbax-checkpoint-tmp-1700000001").mkdir(parents=True)
    error = OSError("No space left on device")

    def fail():
      raise error
    monkeypatch.setattr(ckpts.latest, "wait_until_finished", fail)
    assert ckpts.wait() is error
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
    assert os.listdir(tmp_path / "best") == []
    monkeypatch.undo()
    assert ckpts.wait() is None
  finally:
    ckpts.close()


def test_structure_mismatch_names_the_arrays_that_differ(tmp_path):
  ckpts = _save_steps(tmp_path, [1])
  try:
    saved = checkpoint.saved_structure(ckpts, 1)
    assert checkpoint.structure_mismatch(saved, _state()) == []
    sgd = _state(tx=optax.sgd(0.1, momentum=0.9))
    diff = checkpoint.structure_mismatch(saved, sgd)
    assert diff and all(k.startswith("opt_state/") for k in diff)
    assert "opt_state/0/mu/Dense_0/kernel" in diff  # adam's first moment
    assert "opt_state/0/trace/Dense_0/kernel" in diff  # sgd's momentum
    shapes = checkpoint._leaf_shapes(checkpoint.state_to_tree(_state()))
    assert shapes["params/Dense_0/kernel"] == (4, 3) and shapes["step"] == ()
    assert shapes["batch_stats/BatchNorm_0/var"] == (3,)
  finally:
    ckpts.close()


def test_restore_latest_good_sets_a_broken_step_aside(tmp_path, caplog):
  ckpts = _save_steps(tmp_path, [1, 2, 3])
  try:
    empty_array_files(str(tmp_path / "checkpoints" / "3"))
    with caplog.at_level(logging.ERROR, logger="cnn_jax"):
      state = checkpoint.restore_latest_good(ckpts, _state(), _config())
    assert_same_arrays(state_arrays(state), state_arrays(_state(step=2)))
    aside = checkpoint.set_aside_steps(tmp_path)
    assert len(aside) == 1 and aside[0].startswith("corrupt-3-"), aside
    assert list(ckpts.latest.all_steps()) == [1, 2]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"{tmp_path}/checkpoints/3 is corrupt or incomplete" in errors[0]
    assert "trying an older one" in errors[0] and "corrupt-3-" in errors[0]
  finally:
    ckpts.close()
  assert checkpoint.set_aside_steps(tmp_path / "nowhere") == []


def test_restore_latest_good_refuses_another_model_and_another_structure(tmp_path):
  ckpts = _save_steps(tmp_path, [1, 2])
  with pytest.raises(ValueError, match="a different configuration .*model.*restore_from="):
    checkpoint.restore_latest_good(ckpts, _state(), _config("other"))
  assert ckpts.latest is None  # closed before raising
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]  # nothing set aside
  ckpts = checkpoint.Checkpoints(tmp_path, keep=3, best_metric=None, async_save=False)
  try:
    with pytest.raises(ValueError, match="another structure than this config builds"):
      checkpoint.restore_latest_good(ckpts, _state(tx=optax.sgd(0.1, momentum=0.9)), _config())
  finally:
    ckpts.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  assert checkpoint.config_conflicts(_config().to_dict(), _config()) == []
  assert checkpoint.config_conflicts(_config().to_dict(), _config("other")) == [
      "model: 'tiny' -> 'other'"]


def test_load_checkpoint_latest_step_and_fallbacks(tmp_path, monkeypatch, caplog):
  _save_steps(tmp_path, [1, 2, 3], best_metric=None).close()
  # No best/: the latest step, from a relative path too.
  monkeypatch.chdir(tmp_path.parent)
  tree, meta, step = checkpoint.load_checkpoint(tmp_path.name)
  assert step == 3 and meta == _meta(3)
  tree, _, step = checkpoint.load_checkpoint(tmp_path, "latest", step=1)
  assert step == 1
  _assert_loaded(tree, _state(step=1))
  variables = checkpoint.variables_from_tree(tree)
  assert set(variables) == {"params", "batch_stats"}
  assert isinstance(variables["params"]["Dense_0"]["kernel"], np.ndarray)
  np.testing.assert_array_equal(variables["batch_stats"]["BatchNorm_0"]["mean"], 0.5)  # 0 + step / 2
  assert set(checkpoint.variables_from_tree({**tree, "batch_stats": {}})) == {"params"}
  assert set(checkpoint.load_variables(tmp_path, "latest")) == {"params", "batch_stats"}
  # An unreadable newest step: the next older one, said in one line each.
  empty_array_files(str(tmp_path / "checkpoints" / "3"))
  with caplog.at_level(logging.WARNING, logger="cnn_jax"):
    _, _, step = checkpoint.load_checkpoint(tmp_path)
  assert step == 2
  assert "checkpoints/3 cannot be read either" in caplog.text
  assert "using checkpoints step 2" in caplog.text
  with pytest.raises(Exception):  # an explicit step is never replaced
    checkpoint.load_checkpoint(tmp_path, "latest", step=3)
  for s in (1, 2):
    empty_array_files(str(tmp_path / "checkpoints" / str(s)))
  with pytest.raises(FileNotFoundError, match=r"no readable checkpoint .*3 step\(s\), none"):
    checkpoint.load_checkpoint(tmp_path)


def test_an_unreadable_best_falls_back_to_the_newest_readable_latest(tmp_path, caplog):
  ckpts = _save_steps(tmp_path, [1, 2])
  ckpts.save_best(_state(step=1), _meta(1), {"accuracy": 0.5})
  ckpts.close()
  empty_array_files(str(tmp_path / "best" / "1"))
  with caplog.at_level(logging.ERROR, logger="cnn_jax"):
    tree, _, step = checkpoint.load_checkpoint(tmp_path, "best")
  assert step == 2
  assert f"{tmp_path}/best cannot be read" in caplog.text
  _assert_loaded(tree, _state(step=2))


def test_load_checkpoint_errors_say_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist: give the --workdir"):
    checkpoint.load_checkpoint(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="no latest checkpoints in .*train first"):
    checkpoint.load_checkpoint(tmp_path)
  with pytest.raises(ValueError, match="which must be 'best' or 'latest', got 'last'"):
    checkpoint.load_checkpoint(tmp_path, "last")
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match="checkpoint directory of .* holds no step"):
    checkpoint.load_checkpoint(tmp_path, "latest")
  assert checkpoint.workdir_exists(tmp_path) and not checkpoint.workdir_exists(tmp_path / "n")
  assert checkpoint.workdir_exists("gs://bucket/run")


# --------------------------------------------------------- what the first tests left open
def test_both_directories_exist_once_opened(tmp_path):
  """The managers create checkpoints/ and best/ at once, before any save (inference then
  finds an empty best/ of a run still in its first epoch, and falls back)."""
  ckpts = checkpoint.Checkpoints(tmp_path / "run", keep=2, best_metric="accuracy",
                                 async_save=False)
  try:
    assert (tmp_path / "run" / "checkpoints").is_dir() and (tmp_path / "run" / "best").is_dir()
  finally:
    ckpts.close()


def test_saving_a_step_twice_is_declined_not_an_error(tmp_path):
  ckpts = _save_steps(tmp_path, [1])
  try:
    assert ckpts.save(_state(step=1, seed=5), _meta(1)) is False
    ckpts.wait()
    assert_same_arrays(state_arrays(checkpoint.restore(ckpts.latest, _state())[0]),
                       state_arrays(_state(step=1)))
  finally:
    ckpts.close()


def test_best_considers_a_redone_step_below_its_newest(tmp_path):
  """A resumed run redoes steps below the newest one best/ has seen (their saves were
  deleted as not the best, or never made): each is still a candidate."""
  ckpts = checkpoint.Checkpoints(tmp_path, keep=3, best_metric="accuracy", async_save=False)
  try:
    assert ckpts.save_best(_state(step=6), _meta(6), {"accuracy": 0.5})
    assert ckpts.save_best(_state(step=5), _meta(5), {"accuracy": 0.9})
    ckpts.wait()
    assert list(ckpts.best.all_steps()) == [5]
  finally:
    ckpts.close()


def test_close_closes_both_managers_and_survives_their_errors(tmp_path, monkeypatch, caplog):
  """A failed save's error re-raised by a manager's close was reported by wait(): close
  logs it at debug level, closes the other manager, and leaves the quiet scope."""
  depth = library_noise._depth
  ckpts = checkpoint.Checkpoints(tmp_path, keep=3, best_metric="accuracy", async_save=False)
  closed = []
  latest, best = ckpts.latest, ckpts.best

  def failing_close():
    closed.append("latest")
    raise OSError("No space left on device")
  monkeypatch.setattr(latest, "close", failing_close)
  real_best_close = best.close
  monkeypatch.setattr(best, "close", lambda: (closed.append("best"), real_best_close()))
  with caplog.at_level(logging.DEBUG, logger="cnn_jax"):
    ckpts.close()
  assert closed == ["latest", "best"] and library_noise._depth == depth
  assert "No space left on device" in caplog.text


def test_wait_logs_the_unfinished_saves_it_removed_once(tmp_path, caplog):
  ckpts = _save_steps(tmp_path, [1])
  try:
    with caplog.at_level(logging.DEBUG, logger="cnn_jax"):
      ckpts.wait()
    assert "unfinished" not in caplog.text  # nothing removed: nothing said
    for i in range(4):
      (tmp_path / "checkpoints" / f"{i + 2}.orbax-checkpoint-tmp-{i}").mkdir()
    with caplog.at_level(logging.DEBUG, logger="cnn_jax"):
      ckpts.wait()
    lines = [r.getMessage() for r in caplog.records if "unfinished" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("removed 4 unfinished save(s): ")
    assert lines[0].count("orbax-checkpoint-tmp") == 3  # the first three named
  finally:
    ckpts.close()


def test_a_step_without_its_meta_is_set_aside(tmp_path):
  ckpts = _save_steps(tmp_path, [1, 2])
  try:
    shutil.rmtree(tmp_path / "checkpoints" / "2" / "meta")
    state = checkpoint.restore_latest_good(ckpts, _state(), _config())
    assert_same_arrays(state_arrays(state), state_arrays(_state(step=1)))
    assert [a.split("-")[1] for a in checkpoint.set_aside_steps(tmp_path)] == ["2"]
  finally:
    ckpts.close()


def test_set_aside_meets_the_other_processes_and_only_process_0_renames(tmp_path, monkeypatch,
                                                                       caplog):
  """_set_aside's two barriers run on every process of a multi-process job (none on one);
  only process 0 renames. Its message: the error's type and first line (at most 200
  characters), or that another process could not read the step."""
  met = []
  monkeypatch.setattr(multihost_utils, "sync_global_devices", met.append)
  ckpts = _save_steps(tmp_path, [1, 2, 3])
  try:
    long = ValueError("x" * 300 + "\nsecond line")
    with caplog.at_level(logging.ERROR, logger="cnn_jax"):
      checkpoint._set_aside(ckpts, 3, long)  # one process: no barrier
    assert met == [] and checkpoint.set_aside_steps(tmp_path)
    assert f"(ValueError: {'x' * 200}); moved to" in caplog.text
    monkeypatch.setattr(checkpoint.jax, "process_count", lambda: 2)
    monkeypatch.setattr(checkpoint.jax, "process_index", lambda: 1)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="cnn_jax"):
      checkpoint._set_aside(ckpts, 2, None)  # process 1 waits, does not rename
    assert met == ["cnn_jax set aside 2 (1)", "cnn_jax set aside 2 (2)"]
    assert (tmp_path / "checkpoints" / "2").is_dir()
    assert "(another process could not read it)" in caplog.text
    monkeypatch.setattr(checkpoint.jax, "process_index", lambda: 0)
    checkpoint._set_aside(ckpts, 7, OSError(""))  # nothing there: nothing to rename
    assert "cnn_jax set aside 7 (2)" in met
  finally:
    ckpts.close()


def test_an_empty_best_directory_falls_back_to_the_latest(tmp_path):
  _save_steps(tmp_path, [1, 2], best_metric=None).close()
  (tmp_path / "best").mkdir()
  _, _, step = checkpoint.load_checkpoint(tmp_path)
  assert step == 2


def test_the_fallback_message_is_the_errors_first_line(tmp_path, monkeypatch, caplog):
  """An unreadable best/: one line with the error's type and first line (<= 200
  characters), then the newest readable latest step."""
  _save_steps(tmp_path, [1, 2]).close()
  (tmp_path / "best").mkdir(exist_ok=True)
  read = checkpoint._read_step
  for error, shown in ((RuntimeError("y" * 300 + "\nmore"), "RuntimeError: " + "y" * 200),
                       (RuntimeError(""), "RuntimeError: ")):
    def failing(workdir, which, step, error=error):
      if which == "best":
        raise error
      return read(workdir, which, step)
    monkeypatch.setattr(checkpoint, "_read_step", failing)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="cnn_jax"):
      assert checkpoint.load_checkpoint(tmp_path)[2] == 2
    assert f"best cannot be read ({shown}); using the newest readable" in caplog.text


def test_inference_loading_leaves_a_running_saves_folder_alone(tmp_path):
  """The reader is read-only: the temporary folder of a save still being written by a
  training run of the same directory is not touched."""
  _save_steps(tmp_path, [1], best_metric=None).close()
  tmp = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-99"
  (tmp / "state").mkdir(parents=True)
  assert checkpoint.load_checkpoint(tmp_path, "latest")[2] == 1
  assert (tmp / "state").is_dir()
