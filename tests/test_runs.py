"""`cnn-jax runs` and `viz curves` over many runs.

One real tiny run (finished); the others are written the way the trainer writes them: the
real MetricWriter (which records status.json from the exception that ends the run),
resume.record (config.json, config_history.jsonl) and run.lock held by a live process.
"""
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from cnn_jax import config as config_lib
from cnn_jax import cli, run_dir, runs
from cnn_jax.training import guards, resume, run_status, trainer
from cnn_jax.training import workdir as workdir_lib
from cnn_jax.training.metric_writers import MetricWriter
from cnn_jax.viz import curves
from helpers import random_split, tiny_config


def simulate(workdir, config, lines, end=None):
  """A run that writes `lines` [(step, prefix, metrics)] and then ends with `end` (an
  exception; None: it finishes), through the trainer's writer and records."""
  os.makedirs(workdir, exist_ok=True)
  w = MetricWriter(workdir, enabled=True, tensorboard=False, config=config)
  resume.record(workdir_lib.resolve(workdir), config, resume.Resume(None, {}), 0)
  try:
    for step, prefix, metrics in lines:
      w.write(step, metrics, prefix)
    if end is not None:
      raise end
  finally:
    w.close()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  """root/{finished, failed, preempted, running, old}: a real run and four written ones."""
  root = tmp_path_factory.mktemp("runs")
  train, val = random_split(128), random_split(64, seed=1)
  t0 = time.time()
  result = trainer.train_and_evaluate(tiny_config("mlp", num_epochs=2), str(root / "finished"),
                                      train, val, val)
  t1 = time.time()
  epoch1 = [(2, "train", {"loss": 2.0, "images_per_sec": 100.0}),
            (4, "train", {"loss": 1.5, "images_per_sec": 300.0}),
            (4, "validation", {"loss": 1.2, "accuracy": 0.3})]
  with pytest.raises(FloatingPointError):
    simulate(str(root / "failed"), tiny_config("mlp", num_epochs=2, **{
        "optimizer.learning_rate": 0.01}), epoch1, FloatingPointError("loss is nan at step 6"))
  with pytest.raises(guards.Preempted):
    simulate(str(root / "preempted"), tiny_config("mlp", num_epochs=2, **{
        "optimizer.learning_rate": 0.003}), epoch1[:2] + [(4, "validation", {"accuracy": 0.6})],
        guards.Preempted(signal.SIGTERM, 4, "preempted/checkpoints/4"))
  # A live run: status.json says running and a live process (this child) holds run.lock.
  live = str(root / "running")
  os.makedirs(live)
  resume.record(workdir_lib.resolve(live), tiny_config("mlp", num_epochs=2),
                resume.Resume(None, {}), 0)
  run_status.started(live)
  child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  with open(os.path.join(live, "run.lock"), "w") as f:
    json.dump({"host": socket.gethostname(), "pid": child.pid, "started": time.time()}, f)
  # A run from before status.json: config and metrics only, never finished.
  old = root / "old"
  old.mkdir()
  (old / "config.json").write_text(json.dumps(json.loads(tiny_config(
      "mlp", num_epochs=2, seed=3).to_json_best_effort())))
  (old / "metrics.jsonl").write_text(json.dumps({"step": 2, "time": 5.0, "train/loss": 2.0})
                                     + "\n")
  yield root, result, (t0, t1), child
  child.kill()
  child.wait()


def by_name(rows):
  return {os.path.basename(r["run"]): r for r in rows}


def test_statuses_metrics_and_differing_keys(mixed):
  root, result, (t0, t1), _ = mixed
  columns, rows = runs.table([str(root)])
  # by default best validation first; the runs without one after, as found
  assert [os.path.basename(r["run"]) for r in rows] == ["finished", "preempted", "failed", "old",
                                                        "running"]
  rows = by_name(rows)
  assert {k: r["status"] for k, r in rows.items()} == {
      "finished": "finished", "failed": "failed", "preempted": "preempted",
      "running": "running", "old": "unknown"}
  # only the keys that differ: seed (old) and the learning rate (failed, preempted)
  assert columns[:4] == ["run", "experiment", "seed", "optimizer.learning_rate"]
  assert rows["failed"]["optimizer.learning_rate"] == 0.01 and rows["old"]["seed"] == 3
  done = rows["finished"]
  lines = [json.loads(l) for l in open(root / "finished" / "metrics.jsonl")]
  val = [l["validation/accuracy"] for l in lines if "validation/accuracy" in l]
  assert len(val) == 2 and done["val_accuracy"] == val[-1] and done["best_val_accuracy"] == max(val)
  assert done["test_accuracy"] == result["test"]["accuracy"]
  assert done["test_best_accuracy"] == result["test_best"]["accuracy"]
  assert done["images_per_sec"] == result["train_images_per_sec"]
  assert (done["epochs"], done["num_epochs"]) == (2, 2)
  assert lines[-1]["time"] - t0 - 1 <= done["wall_s"] <= t1 - t0  # from the lock, before setup
  assert done["experiment"] == "mlp/mnist"  # no --config in pytest's command line
  failed = rows["failed"]
  assert failed["error"] == "FloatingPointError: loss is nan at step 6"
  # one epoch of 4 steps done (the validation at step 4 is epoch 1's end)
  assert (failed["epochs"], failed["val_accuracy"], failed["test_accuracy"]) == (1.0, 0.3, None)
  assert failed["images_per_sec"] == 200.0  # the median of the logged 100 and 300
  assert "received SIGTERM" in rows["preempted"]["error"]
  text = runs.format_text(columns, list(rows.values()))
  assert "failed: FloatingPointError: loss is nan at step 6" in text


def test_a_dead_lock_holder_is_a_killed_run(mixed, tmp_path):
  root = mixed[0]
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  dead = tmp_path / "dead"
  os.makedirs(dead)
  (dead / "status.json").write_text((root / "running" / "status.json").read_text())
  (dead / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": child.pid}))
  assert run_dir.Run(str(dead)).status() == "killed"
  os.remove(dead / "run.lock")  # gone, but the record still says running: killed too
  assert run_dir.Run(str(dead)).status() == "killed"
  (dead / "run.lock").write_text(json.dumps({"host": "another-host", "pid": 1}))
  assert run_dir.Run(str(dead)).status() == "running"  # another host's lock is believed


def test_csv_filters_and_sorting_through_the_cli(mixed, capsys):
  root = str(mixed[0])
  assert cli.main(["runs", root, "--csv", "--sort", "best_val_accuracy"]) == 0
  rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
  assert [os.path.basename(r["run"]) for r in rows] == ["finished", "preempted", "failed",
                                                        "old", "running"]
  want = by_name(runs.table([root])[1])
  for r in rows:
    w = want[os.path.basename(r["run"])]
    assert r["status"] == w["status"] and r["optimizer.learning_rate"] == str(
        w["optimizer.learning_rate"])
    assert (float(r["best_val_accuracy"]) if r["best_val_accuracy"] else None) == \
        w["best_val_accuracy"]
  assert cli.main(["runs", root, "--csv", "--sort", "best_val_accuracy", "--reverse",
                   "--filter", "optimizer.learning_rate<0.005", "--filter", "epochs>=1"]) == 0
  rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
  assert [os.path.basename(r["run"]) for r in rows] == ["preempted", "finished"]
  assert "optimizer.learning_rate" in rows[0]  # 0.001 vs 0.003: still differs
  cli.main(["runs", root, "--filter", "test_accuracy>0.5", "--filter", "status=finished"])
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 2 and out[1].split()[:3] == [os.path.join(root, "finished"), "mlp/mnist",
                                                  "finished"]
  assert cli.main(["runs", root, "--filter", "test_acc>0.5"]) == 1
  assert "no run has 'test_acc'" in capsys.readouterr().err
  assert cli.main(["runs", root, "--filter", "accuracy is high"]) == 1
  assert "expected COLUMN OP VALUE" in capsys.readouterr().err


def test_differing_keys_by_hand():
  a = {"seed": 0, "optimizer.learning_rate": 0.1, "model_kwargs": {"width": 2}, "freeze": []}
  b = {"seed": 0, "optimizer.learning_rate": 0.2, "model_kwargs": {"width": 2}, "freeze": []}
  c = {"seed": 0, "optimizer.learning_rate": 0.1, "model_kwargs": {"width": 4}, "freeze": [],
       "new_key": 1}
  assert run_dir.differing_keys([a, b]) == ["optimizer.learning_rate"]
  assert run_dir.differing_keys([a, b, c]) == ["optimizer.learning_rate", "model_kwargs"]
  assert run_dir.differing_keys([a]) == []
  nested = {"seed": 0, "optimizer": {"learning_rate": 0.1}, "model_kwargs": {"width": 2}}
  assert config_lib.flatten(nested) == {
      "seed": 0, "optimizer.learning_rate": 0.1, "model_kwargs": {"width": 2}}


def test_wall_time_sums_the_starts(tmp_path):
  """Two starts an hour apart: 10 s + 2 s (a line set aside by the resume counts), 3 s."""
  start = 1_700_000_000.0
  stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(t))  # noqa: E731
  (tmp_path / "config_history.jsonl").write_text("".join(
      json.dumps({"time": stamp(t), "config": {"num_epochs": 1}}) + "\n"
      for t in (start, start + 3600)))
  (tmp_path / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "time": t, "train/loss": 1.0}) + "\n"
      for s, t in ((1, start + 5), (2, start + 10), (3, start + 3603))))
  (tmp_path / "metrics.superseded.jsonl").write_text(
      json.dumps({"step": 3, "time": start + 12, "train/loss": 1.0}) + "\n")
  run = run_dir.Run(str(tmp_path))
  assert run.wall_seconds() == 15.0
  assert [run.elapsed(t) for t in (start + 5, start + 1000, start + 3601)] == [5.0, 12.0, 13.0]


def test_status_of_a_run_that_finishes_inside_an_outer_handler(tmp_path):
  """An exception an outer `except` handles (a sweep retrying) is not this run's ending."""
  try:
    raise KeyError("an earlier trial failed")
  except KeyError:
    simulate(str(tmp_path), tiny_config("mlp"), [(1, "train", {"loss": 1.0})])
  record = run_status.read(str(tmp_path))
  assert (record["status"], record["step"], record["error"]) == ("finished", 1, None)


def test_experiment_name_from_the_command():
  assert run_status.experiment_name(["cnn-jax", "train", "--config",
                                     "experiments/mnist_cnn.py:smoke", "--workdir", "w"]) \
      == "mnist_cnn:smoke"
  assert run_status.experiment_name(["cnn-jax", "sweep", "--config=exp/mnist_best.py"]) \
      == "mnist_best"
  assert run_status.experiment_name(["pytest", "-x"]) is None


@pytest.mark.parametrize("x", ["epoch", "time"])
def test_curves_of_two_runs_name_the_differing_key(mixed, x):
  root = mixed[0]
  dirs = [str(root / "finished"), str(root / "failed")]
  fig, panels = curves.draw_curves(dirs, x)
  assert panels == ["loss", "accuracy", "top-5 accuracy"]
  loss_ax, acc_ax = fig.axes[:2]
  assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == [
      "optimizer.learning_rate=0.001 train", "optimizer.learning_rate=0.001 validation",
      "optimizer.learning_rate=0.01 train", "optimizer.learning_rate=0.01 validation"]
  val_finished, val_failed = acc_ax.get_lines()[1:]  # the failed run logged no train accuracy
  assert acc_ax.get_legend().get_texts()[2].get_text() == "optimizer.learning_rate=0.01 validation"
  if x == "epoch":  # 4 steps an epoch: validation at the end of epochs 1 and 2
    np.testing.assert_array_equal(val_finished.get_xdata(), [1.0, 2.0])
    np.testing.assert_array_equal(val_failed.get_xdata(), [1.0])
    assert loss_ax.get_xlabel() == "epoch"
  else:
    run = run_dir.Run(dirs[0])
    start = run.starts()[0]
    times = [l["time"] for l in run.lines if "validation/accuracy" in l]
    np.testing.assert_allclose(val_finished.get_xdata(), [t - start for t in times])
    assert loss_ax.get_xlabel() == "wall time (s)"
