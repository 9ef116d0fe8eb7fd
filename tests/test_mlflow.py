"""config.tracking="mlflow:sqlite:///..." against a real local MLflow store, read back with
MLflow's own client. One real tiny run (module fixture: MLflow's import and the
database's creation take seconds); the other tests drive the trainer's writer directly."""
import json
import signal
import sys

import pytest

from cnn_jax import config as config_lib
from cnn_jax.training import guards, trainer
from cnn_jax.training.metric_writers import MetricWriter
from helpers import random_split, tiny_config

mlflow_tracking = pytest.importorskip("mlflow.tracking")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
  root = tmp_path_factory.mktemp("mlflow")
  uri = f"sqlite:///{root}/mlflow.db"
  config = tiny_config("mlp", num_epochs=2, tracking=f"mlflow:{uri}")
  train, val = random_split(128), random_split(64, seed=1)
  trainer.train_and_evaluate(config, str(root / "run"), train, val, val)
  return root, uri, config, mlflow_tracking.MlflowClient(uri)


def the_run(client, workdir):
  found = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
           if r.data.tags.get("cnn_jax.workdir") == str(workdir)]
  assert len(found) == 1, found
  return found[0]


def test_a_real_run_reads_back_as_metrics_jsonl(tracked):
  root, _, config, client = tracked
  run = the_run(client, root / "run")
  assert run.info.status == "FINISHED" and run.info.run_name == "run"
  assert run.data.tags["cnn_jax.experiment"] == "cnn_jax"  # pytest's command names no --config
  flat = config_lib.flatten(json.loads(config.to_json_best_effort()))
  assert run.data.params == {k: v if isinstance(v, str) else json.dumps(v)
                             for k, v in flat.items()}
  assert run.data.params["optimizer.learning_rate"] == "0.001"
  lines = [json.loads(l) for l in open(root / "run" / "metrics.jsonl")]
  keys = {k for l in lines for k in l if "/" in k}
  assert {"train/loss", "validation/accuracy", "test/accuracy", "test_best/accuracy"} <= keys
  for key in keys:
    want = [(l["step"], round(l["time"] * 1000), l[key]) for l in lines if key in l]
    got = [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, key)]
    assert sorted(got) == sorted(want), key


def drive(workdir, config, steps, end=None):
  """The trainer's writer through one start of a run that ends with `end`."""
  w = MetricWriter(str(workdir), enabled=True, tensorboard=False, config=config)
  try:
    for step in steps:
      w.write(step, {"loss": 1.0 / step}, "train")
    if end is not None:
      raise end
  finally:
    w.close()


def test_a_resume_continues_the_same_mlflow_run(tracked, tmp_path):
  _, uri, _, client = tracked
  config = tiny_config("mlp", tracking=f"mlflow:{uri}")
  with pytest.raises(guards.Preempted):
    drive(tmp_path, config, [1, 2], guards.Preempted(signal.SIGTERM, 2, "checkpoints/2"))
  first = the_run(client, tmp_path)
  assert first.info.status == "KILLED"
  config.optimizer.learning_rate = 0.5  # a resume with resume_changes=allow
  drive(tmp_path, config, [3, 4])
  run = the_run(client, tmp_path)
  assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
  assert run.data.params["optimizer.learning_rate"] == "0.001"  # MLflow params are immutable
  assert run.data.tags["cnn_jax.changed.optimizer.learning_rate"] == "0.001 -> 0.5"
  history = client.get_metric_history(run.info.run_id, "train/loss")
  assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / s) for s in (1, 2, 3, 4)]
  with pytest.raises(FloatingPointError):
    drive(tmp_path / "failed", config, [1], FloatingPointError("nan"))
  assert the_run(client, tmp_path / "failed").info.status == "FAILED"


def test_only_the_writing_process_tracks(tracked, tmp_path):
  _, uri, _, client = tracked
  w = MetricWriter(str(tmp_path), enabled=False, config=tiny_config(tracking=f"mlflow:{uri}"))
  w.write(1, {"loss": 1.0}, "train")
  w.close()
  assert not [r for e in client.search_experiments() for r in client.search_runs(
      [e.experiment_id]) if r.data.tags.get("cnn_jax.workdir") == str(tmp_path)]


def test_bad_tracking_settings_say_what_to_write(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="expected 'mlflow:URI'"):
    MetricWriter(str(tmp_path), enabled=True, config=tiny_config(tracking="sqlite:///x.db"))
  monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # as if MLflow were not installed
  with pytest.raises(RuntimeError, match=r"pip install 'cnn_jax\[tracking\]'"):
    MetricWriter(str(tmp_path), enabled=True, config=tiny_config(tracking="mlflow:sqlite:///x.db"))
  assert not (tmp_path / "metrics.jsonl").exists()  # refused before writing anything
