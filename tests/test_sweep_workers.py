"""cnn-jax sweep with real worker processes (slow): a `cnn-jax sweep` SIGKILLed mid-trial
and restarted completes each parameter set once, resuming the killed run; `--workers 2`
share one study on disjoint cores; workers starting together all open a new database.
The SLURM job array is in test_slurm.py."""
import json
import os
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from optuna.trial import TrialState

from cnn_jax.sweep import study as study_lib

ROOT = os.path.join(os.path.dirname(__file__), "..")
pytestmark = pytest.mark.slow


def _open_together(url):
  storage = study_lib.open_storage(url, 1)
  optuna.create_study(storage=storage, study_name="sweep", load_if_exists=True)


def test_workers_starting_together_all_open_the_new_database(tmp_path):
  """SLURM array tasks start at once: each creates the empty SQLite database's tables (it
  failed with "table ... already exists" / a UNIQUE constraint on alembic_version)."""
  import multiprocessing
  fork = multiprocessing.get_context("fork")  # the children touch only sqlite
  for round_ in range(2):
    url = f"sqlite:///{tmp_path}/study{round_}.db"
    procs = [fork.Process(target=_open_together, args=(url,)) for _ in range(3)]
    for p in procs:
      p.start()
    for p in procs:
      p.join(60)
    assert [p.exitcode for p in procs] == [0] * 3, round_
    assert len(optuna.load_study(study_name="sweep", storage=url).get_trials()) == 0


# --- real processes (slow) --------------------------------------------------------------

SUBPROCESS_EXPERIMENT = textwrap.dedent('''
    from cnn_jax.config import base_config

    def get_config(arg=None):
      c = base_config()
      c.model = "mlp"
      c.dataset.name = "dummy_mnist"  # 20 images: train[:90%] = 18, 4 steps of 4 an epoch
      c.dataset.data_dir = DATA_DIR
      c.batch_size, c.eval_batch_size = 4, 8
      c.num_epochs = EPOCHS
      c.progress_bar = False
      c.log_every_steps = 4
      c.checkpoint_every_steps = 8
      c.tensorboard_samples = 0
      return c
    ''')


@pytest.fixture(scope="module")
def dummy_mnist(tmp_path_factory):
  import tensorflow_datasets as tfds
  data_dir = tmp_path_factory.mktemp("data")
  tfds.testing.DummyMnist(data_dir=str(data_dir),
                          file_format="array_record").download_and_prepare()
  return str(data_dir)


def _sweep_cmd(tmp_path, data_dir, epochs, *flags):
  config = tmp_path / "exp.py"
  config.write_text(SUBPROCESS_EXPERIMENT.replace("DATA_DIR", repr(data_dir))
                    .replace("EPOCHS", str(epochs)))
  env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
  return [sys.executable, "-m", "cnn_jax.cli", "sweep", "--config", str(config), "--workdir",
          str(tmp_path / "W"), "--space", "optimizer.learning_rate=loguniform(1e-3, 1e-1)",
          "--seed", "0", "--heartbeat", "1", "--pruner", "none", *flags], env


def _validations(run) -> int:
  path = run / "metrics.jsonl"
  return path.read_text().count("validation/accuracy") if path.exists() else 0


def _committed(run) -> list[int]:
  """The steps of the run's finished checkpoints."""
  path = run / "checkpoints"
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if path.exists() else []


def _complete_once(trials):
  """Each parameter set COMPLETE exactly once; returns the complete trials."""
  done = [t for t in trials if t.state == TrialState.COMPLETE]
  params = [tuple(sorted(t.params.items())) for t in done]
  assert len(set(params)) == len(params), params
  return done


def test_sigkilled_worker_then_restart_completes_each_trial_once(tmp_path, dummy_mnist):
  cmd, env = _sweep_cmd(tmp_path, dummy_mnist, 40, "--trials", "2")
  run0 = tmp_path / "W" / "trials" / "0000"
  with open(tmp_path / "first.log", "w") as out:
    worker = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while _validations(run0) < 3 or not _committed(run0):  # 3 epochs done, a checkpoint
      assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
      time.sleep(0.1)
    worker.kill()  # SIGKILL: no checkpoint on the way out, no word to the database
    worker.wait()
  committed = _committed(run0)  # (a save still in flight when killed is not)
  url = f"sqlite:///{tmp_path}/W/study.db"
  killed = optuna.load_study(study_name="sweep", storage=url).get_trials()
  assert [t.state for t in killed] == [TrialState.RUNNING]

  again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  trials = optuna.load_study(study_name="sweep", storage=url).get_trials()
  assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 2
  assert trials[1].params == trials[0].params and trials[1].system_attrs["failed_trial"] == 0
  assert len(_complete_once(trials)) == 2
  history = [json.loads(l) for l in (run0 / "config_history.jsonl").read_text().splitlines()]
  assert [h["resumed"] for h in history] == [False, True]
  assert history[1]["step"] == max(committed), (committed, history[1]["step"])
  assert f"resumed from step {history[1]['step']}" in again.stderr
  assert "best: trial" in again.stdout and (tmp_path / "W" / "summary.csv").exists()


def test_two_local_workers_share_one_study_on_disjoint_cores(tmp_path, dummy_mnist):
  cmd, env = _sweep_cmd(tmp_path, dummy_mnist, 2, "--trials", "3", "--workers", "2")
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  trials = optuna.load_study(study_name="sweep",
                             storage=f"sqlite:///{tmp_path}/W/study.db").get_trials()
  assert len(_complete_once(trials)) == 3 and len(trials) == 3
  workers = {t.user_attrs["worker"]["pid"]: t.user_attrs["worker"]["cpus"] for t in trials}
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) >= 2:  # each worker pinned to its own half of the cores
    assert len(workers) == 2, workers
    a, b = workers.values()
    assert a and b and not set(a) & set(b) and sorted(a + b) == cores
  assert out.stdout.count("best: trial") == 1  # the summary, once, by the parent
