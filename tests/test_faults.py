"""A run that is killed, interrupted, poisoned or fed bad input loses nothing and says why."""
import errno
import json
import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cnn_jax import checkpoint as ckpt_lib
from cnn_jax import cli, config as config_lib, inference, parallel
from cnn_jax.data.split import Split
from cnn_jax.training import guards, setup, trainer
from cnn_jax.training import workdir as workdir_lib
from helpers import empty_array_files, random_split, tiny_config
from state_compare import assert_same_arrays, assert_same_state

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")


def run_worker(workdir, out, cache, slow=0.0, workers=0):
  """The worker in its own process; `cache`: the module's compilation cache (the first run
  compiles, the others load its programs, as a restarted `cnn-jax train` does)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.getcwd())
  return subprocess.Popen([sys.executable, WORKER, str(workdir), str(out), "--slow", str(slow),
                           "--workers", str(workers), "--compilation-cache", str(cache)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(workdir, min_step, proc, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [int(os.path.basename(d)) for d in glob.glob(f"{workdir}/checkpoints/*")
             if os.path.basename(d).isdigit()]
    if steps and max(steps) >= min_step:
      return max(steps)
    if proc.poll() is not None:
      raise AssertionError(f"worker ended early:\n{proc.stdout.read()}")
    time.sleep(0.05)
  proc.kill()
  raise AssertionError("worker made no checkpoint in time")


def load_npz(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("compilation_cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
  d = tmp_path_factory.mktemp("full")
  p = run_worker(d / "w", d / "out.npz", cache)
  out, _ = p.communicate(timeout=300)
  assert p.returncode == 0, out
  return load_npz(d / "out.npz")


def assert_same_run(a, b):
  """Bit for bit: the whole state (params, batch_stats, opt_state, step, rng) and the metrics."""
  assert_same_arrays(a, b)


@pytest.mark.parametrize("workers", [1])  # in-process resume: test_sigterm_... below
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path, uninterrupted, cache, workers):
  """Bit for bit on the CPU, where XLA's ops are deterministic. On a GPU the same holds only
  with config.deterministic=True (--xla_gpu_deterministic_ops); see README "Numerics".

  workers=1: batches built (host-side random crop + flip) in a grain worker process, the
  run killed and resumed, equals the uninterrupted run built in the main process."""
  p = run_worker(tmp_path / "w", tmp_path / "out.npz", cache, slow=0.05, workers=workers)
  step = wait_for_step(tmp_path / "w", 6, p)
  p.send_signal(signal.SIGKILL)
  p.wait(timeout=30)
  assert step % 16 != 0  # 16 steps per epoch: the kill came mid-epoch
  p = run_worker(tmp_path / "w", tmp_path / "out.npz", cache, workers=workers)
  out, _ = p.communicate(timeout=300)
  assert p.returncode == 0, out
  assert_same_run(load_npz(tmp_path / "out.npz"), uninterrupted)


def test_sigterm_checkpoints_flushes_and_exits_143(tmp_path, uninterrupted, cache):
  p = run_worker(tmp_path / "w", tmp_path / "out.npz", cache, slow=0.05)
  wait_for_step(tmp_path / "w", 3, p)
  p.send_signal(signal.SIGTERM)
  out, _ = p.communicate(timeout=60)
  assert p.returncode == 128 + signal.SIGTERM, out
  assert "received SIGTERM: saved a checkpoint at step" in out
  saved = int(out.split("at step ")[1].split()[0])
  assert os.path.isdir(tmp_path / "w" / "checkpoints" / str(saved))
  assert "train/loss" in open(tmp_path / "w" / "metrics.jsonl").read()
  p = run_worker(tmp_path / "w", tmp_path / "out.npz", cache)
  out, _ = p.communicate(timeout=300)
  assert p.returncode == 0, out
  assert_same_run(load_npz(tmp_path / "out.npz"), uninterrupted)


def bn_config(**kw):
  """A small convnet with batch norm: its running statistics must survive a resume too."""
  cfg = tiny_config("small_convnet", **kw)
  cfg.model_kwargs = {"batch_norm": True, "widths": (4, 8, 8)}
  return cfg


# 18 s of training: the slow run. The default run sets a damaged newest step aside and
# restores the one before bit for bit in one process
# (test_checkpoint_mutants.py::test_restore_latest_good_sets_a_broken_step_aside).
@pytest.mark.slow
def test_corrupt_latest_checkpoint_is_reported_and_skipped(tmp_path, caplog):
  train, test = random_split(128), random_split(40, seed=1)
  cfg = bn_config(num_epochs=1, checkpoint_every_steps=1, keep_checkpoints=3)
  trainer.train_and_evaluate(cfg, str(tmp_path), train, test)
  ckdir = tmp_path / "checkpoints"
  assert sorted(os.listdir(ckdir)) == ["2", "3", "4"]
  empty_array_files(f"{ckdir}/4")  # damage step 4's arrays
  cfg.num_epochs = 2
  with caplog.at_level(logging.ERROR):
    r = trainer.train_and_evaluate(cfg, str(tmp_path), train, test)
  assert f"{ckdir}/4 is corrupt or incomplete" in caplog.text
  assert glob.glob(f"{ckdir}/corrupt-4-*")  # kept for inspection, not deleted
  assert r["final_step"] == 8
  # Resumed from step 3: equal to a run that was never damaged, bit for bit, batch_stats,
  # optimizer state and rng included.
  clean = trainer.train_and_evaluate(cfg, str(tmp_path / "clean"), train, test)
  assert_same_state(r["state"], clean["state"])


def nan_config(**kw):
  cfg = tiny_config("mlp", num_epochs=3, log_every_steps=1, **kw)
  cfg.optimizer.name = "sgd"
  cfg.optimizer.schedule = "piecewise"
  cfg.optimizer.learning_rate = 0.01
  cfg.optimizer.decay_epochs = (1,)
  cfg.optimizer.decay_factors = (1e38,)  # epoch 2 blows up
  return cfg


def test_nan_loss_stops_and_names_the_last_good_checkpoint(tmp_path):
  train = random_split(128)
  with pytest.raises(guards.NonFiniteLossError) as e:
    trainer.train_and_evaluate(nan_config(), str(tmp_path), train, train)
  msg = str(e.value)
  assert "by step 5" in msg or "by step 6" in msg, msg
  assert f"{tmp_path}/checkpoints/4" in msg and "last finite loss" in msg
  tree, meta, step = inference.load_checkpoint(str(tmp_path), "latest")
  assert step == 4 and all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree["params"]))


def test_nan_steps_can_be_skipped(tmp_path):
  train = random_split(128)
  r = trainer.train_and_evaluate(nan_config(skip_nonfinite_steps=True), str(tmp_path), train, train)
  assert r["final_step"] == 12
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(r["state"].params))
  skipped = [l["train/skipped"] for l in map(json.loads, open(tmp_path / "metrics.jsonl")) if "train/skipped" in l]
  assert sum(skipped) >= 1


def test_a_skipped_step_leaves_the_window_mean_finite(tmp_path):
  """One skipped (non-finite) step made its logged window's loss and grad_norm NaN: the
  means now cover the steps taken; `skipped` still says what fraction was dropped."""
  cfg = nan_config(skip_nonfinite_steps=True)
  cfg.num_epochs, cfg.log_every_steps = 2, 4  # windows of one epoch; epoch 2 blows up
  trainer.train_and_evaluate(cfg, str(tmp_path), random_split(128), random_split(64))
  windows = [l for l in map(json.loads, open(tmp_path / "metrics.jsonl")) if "train/loss" in l]
  assert [(w["step"], w["train/steps"]) for w in windows] == [(4, 4.0), (8, 4.0)]
  assert windows[0]["train/skipped"] == 0.0
  assert 0.0 < windows[1]["train/skipped"] < 1.0, windows[1]  # some steps taken, some not
  assert np.isfinite(windows[1]["train/loss"]) and np.isfinite(windows[1]["train/grad_norm"])


@pytest.mark.parametrize("shape,match", [((32, 32, 1), r"expects 28x28x1 images but mnist/train\[:90%\] gives 32x32x1"),
                                         ((28, 28, 3), "expects 28x28x1 images")])
def test_wrong_image_shape_is_reported_before_compiling(tmp_path, shape, match):
  data = random_split(64, shape=shape)
  with pytest.raises(ValueError, match=match):
    trainer.train_and_evaluate(tiny_config(), str(tmp_path), data, data)


def test_validation_data_is_checked_by_its_own_shape(tmp_path):
  """Each split is checked against the model, not assumed to look like the train split."""
  train, val = random_split(64), random_split(40, shape=(32, 32, 1))
  with pytest.raises(ValueError, match=r"mnist/train\[90%:\] gives 32x32x1"):
    trainer.train_and_evaluate(tiny_config(), str(tmp_path), train, val)


def test_labels_outside_the_classes(tmp_path):
  data = random_split(64)
  bad = Split(data.images, data.labels + 5, 10)
  with pytest.raises(ValueError, match=r"labels in \[5, 14\] but the model has 10 classes"):
    trainer.train_and_evaluate(tiny_config(), str(tmp_path), bad, data)


def test_unknown_config_keys_suggest_the_closest(capsys, tmp_path):
  cfg = tiny_config()
  cfg.optimizer.learnig_rate = 0.1
  with pytest.raises(KeyError, match="optimizer.learning_rate"):
    config_lib.validate(cfg)
  rc = cli.main(["train", "--config", "experiments/mnist_cnn.py:smoke", "--workdir", str(tmp_path),
                 "--config.batch_sise=3"])
  assert rc == 2 and "Did you mean batch_size" in capsys.readouterr().err


@pytest.mark.parametrize("batch", [0, -4])
def test_bad_batch_sizes(tmp_path, batch):
  with pytest.raises(ValueError, match="batch_size must be a positive integer"):
    trainer.train_and_evaluate(tiny_config(batch_size=batch), str(tmp_path), random_split(64),
                               random_split(64))


def test_batch_not_divisible_by_devices(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  with pytest.raises(ValueError, match="batch_size=100 is not divisible by the 8 devices"):
    parallel.check_batch_size(100)
  assert parallel.check_batch_size(96) == 96


def test_unwritable_or_full_workdir(tmp_path, monkeypatch):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(RuntimeError, match="is not writable"):
    workdir_lib.probe(workdir_lib.resolve(str(blocker / "run")))
  monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1024))
  with pytest.raises(RuntimeError, match="has 0 MiB free but one checkpoint needs about"):
    trainer.train_and_evaluate(tiny_config(), str(tmp_path / "w"), random_split(64), random_split(64))


def test_failed_save_mid_run_keeps_training(tmp_path, monkeypatch, caplog):
  real = ckpt_lib.Checkpoints.save
  calls = []

  def flaky(self, state, meta, force=False):
    calls.append(meta["step"])
    if len(calls) == 1:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, state, meta, force)

  monkeypatch.setattr(ckpt_lib.Checkpoints, "save", flaky)
  with caplog.at_level(logging.ERROR):
    r = trainer.train_and_evaluate(tiny_config(num_epochs=2), str(tmp_path), random_split(64),
                                   random_split(64))
  assert "saving the latest checkpoint at step 2 failed" in caplog.text
  assert "No space left on device" in caplog.text
  assert r["final_step"] == 4 and sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]


def test_a_failed_saves_writes_end_before_its_folder_is_removed(tmp_path):
  """orbax reports a failed save at its first failed write while tensorstore goes on with
  the save's other writes, creating the directories they need: removing the save's folder
  under them raised "Directory not empty: 'state.orbax-checkpoint-tmp'" (2 of 8 full-disk
  runs) or let them make it again. Here 200 such writes are in flight, and a commit thread
  that writes once more 0.3 s later, then fails (its join re-raises that: not ours to raise)."""
  import tensorstore as ts
  from orbax.checkpoint._src.futures import future as orbax_future
  item = tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp" / "state.orbax-checkpoint-tmp"
  item.mkdir(parents=True)  # what the failed save had made
  ckpts = ckpt_lib.Checkpoints(tmp_path, keep=1, best_metric=None, async_save=False)
  store = ts.KvStore.open({"driver": "file", "path": f"{item}/"}).result()
  writes = [store.write(f"d/{i}", b"x" * 1024) for i in range(200)]

  async def late_writer():  # an orbax commit thread still writing, then failing
    time.sleep(0.3)
    (item / "_sharding").write_text("{}")
    raise OSError(errno.ENOSPC, "No space left on device")
  thread = orbax_future.CommitFuture(late_writer(), name="late_writer")
  try:
    error = ckpts.wait()  # what the loop calls after a failed save
  finally:
    for w in [*writes, thread]:
      try:
        w.result()
      except Exception:  # noqa: BLE001 - a write the removal broke (before the fix)
        pass
    ckpts.close()
  assert error is None and all(w.done() for w in writes)
  assert os.listdir(tmp_path / "checkpoints") == []  # gone, and not made again


def test_resume_with_changed_model_is_refused_and_restore_from_works(tmp_path):
  train = random_split(64)
  r = trainer.train_and_evaluate(tiny_config("mlp"), str(tmp_path / "a"), train, train)
  with pytest.raises(ValueError, match="model: 'mlp' -> 'mnist_cnn'.*restore_from"):
    trainer.train_and_evaluate(tiny_config("mnist_cnn"), str(tmp_path / "a"), train, train)
  cfg = tiny_config("mlp", restore_from=str(tmp_path / "a"))
  cfg.optimizer.name, cfg.optimizer.learning_rate = "sgd", 0.0
  r2 = trainer.train_and_evaluate(cfg, str(tmp_path / "b"), train, train)
  for a, b in zip(jax.tree_util.tree_leaves(r["state"].params),
                  jax.tree_util.tree_leaves(r2["state"].params)):
    np.testing.assert_array_equal(a, b)
  assert r2["validation"]["accuracy"] == r["validation"]["accuracy"]


def test_load_for_inference(tmp_path):
  train = random_split(64)
  r = trainer.train_and_evaluate(tiny_config(), str(tmp_path), train, train)
  import cnn_jax
  model, variables, cfg = cnn_jax.load(str(tmp_path))
  assert "opt_state" not in variables and cfg.model == "mnist_cnn"
  x = np.random.RandomState(0).randn(3, 28, 28, 1).astype(np.float32)
  np.testing.assert_allclose(model.apply(variables, x, train=False),
                             r["state"].apply_fn({"params": r["state"].params}, x, train=False),
                             rtol=1e-6)


def test_oom_message_names_batch_and_model():
  err = guards.oom_hint(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9GiB"),
                          tiny_config("mnist_cnn", batch_size=512))
  assert isinstance(err, MemoryError)
  assert "batch_size=512 of model 'mnist_cnn'" in str(err) and "accumulate_steps=4" in str(err)


def test_remote_work_directories_stay_remote(tmp_path, monkeypatch):
  """gs://bucket/run used to become ./gs:/bucket/run (os.path.abspath)."""
  path = workdir_lib.resolve("gs://bucket/run")
  assert str(path) == "gs://bucket/run" and workdir_lib.is_remote(path)
  assert str(workdir_lib.resolve("rel/run")) == os.path.abspath("rel/run")
  # Local-only checks skip a bucket instead of asking the local disk about it.
  monkeypatch.setattr(shutil, "disk_usage", lambda p: pytest.fail(f"disk_usage({p})"))
  workdir_lib.check_free_space(path, 10**12)
  # Metric lines on an object store (no append): the whole file is rewritten on flush.
  from cnn_jax.training import metric_writers
  monkeypatch.setattr(workdir_lib, "is_remote", lambda p: True)
  for run in range(2):
    w = metric_writers.MetricWriter(tmp_path, enabled=True, tensorboard=False)
    w.write(run, {"loss": 1.0 + run}, "train")
    w.close()
  assert [l["train/loss"] for l in metric_writers.read_metrics(tmp_path)] == [1.0, 2.0]


def test_all_processes_agree_before_restoring(tmp_path, monkeypatch, caplog):
  """A step another process cannot read is set aside here too; all restore an older one."""
  train = random_split(128)
  cfg = tiny_config(num_epochs=1, checkpoint_every_steps=1, keep_checkpoints=3)
  trainer.train_and_evaluate(cfg, str(tmp_path), train, train)
  template = setup.setup(cfg, train, train).compiled.init_state(jax.random.key(0))
  votes = []

  def other_process_fails_on_step_4(value, reduce):
    votes.append(value)
    return 0 if len(votes) == 2 else int(value)  # the 2nd vote: restoring step 4

  monkeypatch.setattr(parallel, "agree", other_process_fails_on_step_4)
  ckpts = ckpt_lib.Checkpoints(tmp_path, keep=3, best_metric=None, async_save=False)
  with caplog.at_level(logging.ERROR):
    state = ckpt_lib.restore_latest_good(ckpts, template, cfg)
  ckpts.close()
  assert int(state.step) == 3 and votes[:2] == [True, True]  # this process read step 4 fine
  assert "another process could not read it" in caplog.text
  assert glob.glob(f"{tmp_path}/checkpoints/corrupt-4-*")
