"""cnn-jax sweep: the search-space grammar, the worker loop (no trial lost or counted twice
when a worker dies, simulated), trials as ordinary runs, pruning. Real worker processes
(SIGKILL and restart, --workers 2): test_sweep_workers.py; a SLURM array: test_slurm.py."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from optuna.trial import TrialState

from cnn_jax import run_dir, runs
from cnn_jax.sweep import command, space, study as study_lib, summary, trial as trial_lib
from cnn_jax.training import trainer

from helpers import random_split

ROOT = os.path.join(os.path.dirname(__file__), "..")

EXPERIMENT = textwrap.dedent('''
    from cnn_jax.config import base_config, smoke_variant

    def get_config(arg=None):
      c = smoke_variant(base_config())
      c.model = "mlp"
      c.progress_bar = False
      c.num_epochs = EPOCHS
      c.batch_size = 16
      c.eval_batch_size = 32
      c.log_every_steps = 2
      c.dataset.on_device = "never"
      c.tensorboard_samples = 0  # one compilation less per trial
      c.dataset.test_split = ""
      return c

    def get_sweep(arg=None):
      return {"space": {"optimizer.learning_rate": "loguniform(1e-3, 1e-1)"}, "trials": 2}
    ''')


def _experiment(tmp_path, epochs=1, extra=""):
  path = tmp_path / "exp.py"
  path.write_text(EXPERIMENT.replace("EPOCHS", str(epochs)) + extra)
  return str(path)


@pytest.fixture(scope="module")
def data():
  """(train, validation): 48 / 32 synthetic 28x28 images, 3 steps an epoch."""
  return random_split(48), random_split(32, seed=1)


def _open(workdir, config, *flags):
  args, rest = command._parser().parse_known_args(
      ["--config", config, "--workdir", str(workdir), "--seed", "0", "--heartbeat", "1", *flags])
  spec, declared = command.build_spec(args, rest)
  return (spec, *command.open_study(args, spec, declared))


def _work(spec, study, storage, n, workdir, data):
  return study_lib.work(study, storage, n, lambda t, f: trial_lib.run(
      t, f, spec, storage, str(workdir), data, poll_s=0.05), poll_s=0.2)


# --- the grammar ------------------------------------------------------------------------

def test_space_forms_and_their_optuna_distributions():
  got = space.parse_space(["optimizer.learning_rate=loguniform(1e-4, 1e-1)",
                           "label_smoothing=uniform(0, 0.2)", "batch_size=int(16, 64, 16)",
                           "augment=choice('pad_crop(2)', '')", "optimizer.name=choice(adam, sgd)"])
  assert got["optimizer.learning_rate"].args == (1e-4, 1e-1)
  assert got["label_smoothing"].args == (0.0, 0.2)  # floats, though written as 0
  assert got["batch_size"].grid() == [16, 32, 48, 64]
  assert got["augment"].args == ("pad_crop(2)", "")
  assert got["optimizer.name"].args == ("adam", "sgd")  # bare words are strings
  trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask()
  values = {k: p.suggest(trial) for k, p in got.items()}
  assert 1e-4 <= values["optimizer.learning_rate"] <= 1e-1
  assert values["batch_size"] in (16, 32, 48, 64)
  d = trial.distributions
  assert d["optimizer.learning_rate"].log and not d["label_smoothing"].log
  assert d["batch_size"].step == 16


@pytest.mark.parametrize("text,message", [
    ("optimizer.learning_rate", "expected KEY=KIND"),
    ("optimizer.learning_rate=gauss(0, 1)", "unknown kind 'gauss'"),
    ("optimizer.learning_rate=loguniform(0, 1)", "A > 0"),
    ("optimizer.learning_rate=uniform(1, 0.5)", "need A < B"),
    ("batch_size=int(16, 64.5)", "integers"),
    ("optimizer.learnig_rate=uniform(0, 1)", "did you mean optimizer.learning_rate"),
])
def test_space_errors_say_what_is_wrong(text, message):
  with pytest.raises(ValueError, match=message):
    space.parse_space([text])


def test_grid_needs_finite_values():
  with pytest.raises(ValueError, match="continuous: write"):
    space.parse("optimizer.learning_rate=uniform(0.1, 0.2)").grid()


def test_mnist_best_declares_its_sweep(tmp_path):
  """experiments/mnist_best.py's get_sweep: its space, and a validation split to select on
  (the recipe itself trains on all of train)."""
  args, _ = command._parser().parse_known_args(
      ["--config", os.path.join(ROOT, "experiments", "mnist_best.py"), "--workdir", "W"])
  spec, declared = command.build_spec(args, [])  # no database: nothing else is opened
  assert declared["trials"] == 16 and declared["pruner"] == "median"
  assert spec.metric == "validation/accuracy" and spec.direction == "maximize"
  assert set(spec.space) == {"optimizer.learning_rate", "label_smoothing"}
  c = spec.config_for({"optimizer.learning_rate": 4e-3, "label_smoothing": 0.05})
  assert (c.dataset.train_split, c.dataset.val_split) == ("train[:90%]", "train[90%:]")
  assert c.optimizer.learning_rate == 4e-3 and c.label_smoothing == 0.05
  assert c.num_epochs == 7 and c.model == "small_convnet"  # the recipe otherwise


def test_sweep_without_validation_split_is_refused(tmp_path):
  config = _experiment(tmp_path)
  with pytest.raises(ValueError, match="no validation split"):
    _open(tmp_path / "W", config, "--config.dataset.val_split=")


def test_a_study_of_another_sweep_is_refused(tmp_path):
  """The same sweep joins its study (a fixed tuple, stored as a JSON list, is the same);
  another space is refused."""
  config = _experiment(tmp_path, extra=textwrap.dedent('''
      def get_sweep(arg=None):
        return {"space": {"optimizer.learning_rate": "loguniform(1e-3, 1e-1)"},
                "config": {"dataset.image_size": (28, 28)}}
      '''))
  _open(tmp_path / "W", config)
  _open(tmp_path / "W", config)  # a restart, or a second SLURM array task
  with pytest.raises(ValueError, match="sweeps something else: space"):
    _open(tmp_path / "W", config, "--space", "label_smoothing=uniform(0, 0.2)")


# --- the worker loop, with stand-in trials (no training) ---------------------------------

def _study(tmp_path, heartbeat=60, grace=None):
  storage = study_lib.open_storage(f"sqlite:///{tmp_path}/study.db", heartbeat, grace)
  study = optuna.create_study(storage=storage, study_name="sweep",
                              sampler=optuna.samplers.RandomSampler(seed=0))
  return study, storage


def _ask(study, storage, worker):
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # heartbeats outside Study.optimize
    trial = study.ask()
  trial.suggest_float("x", 0, 1)
  trial.set_user_attr("worker", worker)
  storage.record_heartbeat(trial._trial_id)
  return trial


def _zombie():
  """A process that has exited but is not reaped yet (its Popen is never waited on)."""
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
    time.sleep(0.01)
  return proc


def test_dead_workers_trials_are_failed_and_requeued_once(tmp_path):
  """A trial whose worker process on this host is gone (or a zombie: killed, not reaped)
  is re-queued at once; one on another host once its heartbeat is older than the grace
  period; a beating one is left alone."""
  study, storage = _study(tmp_path, heartbeat=1, grace=1)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  zombie = _zombie()
  here = os.uname().nodename
  silent = _ask(study, storage, {"host": "elsewhere", "pid": 1})
  time.sleep(2.5)  # the database's clock counts whole seconds
  gone = _ask(study, storage, {"host": here, "pid": dead.pid})  # its heartbeat is fresh
  unreaped = _ask(study, storage, {"host": here, "pid": zombie.pid})
  beating = _ask(study, storage, {"host": "elsewhere", "pid": 1})
  failed = study_lib.fail_dead(study, storage)
  assert sorted(failed) == [silent.number, gone.number, unreaped.number] == [0, 1, 2]
  assert study_lib.fail_dead(study, storage) == []  # once: the copies are not failed again
  trials = study.get_trials()
  assert [t.state for t in trials[:4]] == [TrialState.FAIL] * 3 + [TrialState.RUNNING]
  assert beating.number == 3
  copies = trials[4:]
  assert [t.state for t in copies] == [TrialState.WAITING] * 3
  assert sorted(t.system_attrs["failed_trial"] for t in copies) == [0, 1, 2]
  for c in copies:
    assert c.params == trials[c.system_attrs["failed_trial"]].params
  zombie.wait()


def test_dead_workers_run_lock_is_cleared_a_live_ones_kept(tmp_path):
  zombie = _zombie()
  for holder, cleared in [({"host": "elsewhere", "pid": os.getpid()}, True),
                          ({"host": os.uname().nodename, "pid": zombie.pid}, True),
                          ({"host": os.uname().nodename, "pid": os.getpid()}, False)]:
    (tmp_path / "run.lock").write_text(json.dumps(holder))
    trial_lib._clear_dead_lock(str(tmp_path), 0)
    assert (tmp_path / "run.lock").exists() != cleared, holder
  zombie.wait()


def test_worker_loop_counts_each_parameter_set_once(tmp_path):
  """3 slots: one trial pruned, one failing (a result: the sweep goes on), one complete; a
  trial asked for in the instant another worker took the last slot is dropped unrun."""
  study, storage = _study(tmp_path)
  outcomes = iter([optuna.TrialPruned(), FloatingPointError("loss is nan"), 0.75])
  ran = []

  def run(trial, frozen):
    ran.append(trial.number)
    trial.suggest_float("x", 0, 1)
    out = next(outcomes)
    if isinstance(out, Exception):
      raise out
    return out
  ask = study.ask

  def ask_after_another_worker():  # the other worker takes slot 3 between count and ask
    if len(study.get_trials()) == 2:
      other = ask()
      other.suggest_float("x", 0, 1)
      study.tell(other, 0.5)
    return ask()
  study.ask = ask_after_another_worker
  did = study_lib.work(study, storage, 3, run, poll_s=0.1)
  assert did == {"complete": 0, "pruned": 1, "failed": 1, "resumed": 0}
  assert ran == [0, 1]
  states = [(t.number, t.state, t.user_attrs.get("surplus")) for t in study.get_trials()]
  assert states == [(0, TrialState.PRUNED, None), (1, TrialState.FAIL, None),
                    (2, TrialState.COMPLETE, None), (3, TrialState.FAIL, True)]
  assert "FloatingPointError: loss is nan" in study.get_trials()[1].user_attrs["error"]
  assert [r["trial"] for r in summary.rows(study)] == [0, 1, 2]


def test_a_stopped_worker_puts_its_trial_back(tmp_path):
  """SIGTERM / SIGUSR1 mid-trial (the trainer checkpointed): the trial fails, a copy with
  its parameters waits, and the worker stops; the next worker runs the copy."""
  study, storage = _study(tmp_path)

  def stopped(trial, frozen):
    trial.suggest_float("x", 0, 1)
    raise study_lib.Requeue(RuntimeError("received SIGTERM"), 143)
  with pytest.raises(study_lib.Requeue):
    study_lib.work(study, storage, 1, stopped)
  seen = []

  def finish(trial, frozen):
    seen.append((study_lib.original_number(frozen), trial.suggest_float("x", 0, 1)))
    return 1.0
  did = study_lib.work(study, storage, 1, finish)
  assert did == {"complete": 1, "pruned": 0, "failed": 0, "resumed": 1}
  first, copy = study.get_trials()
  assert (first.state, copy.state) == (TrialState.FAIL, TrialState.COMPLETE)
  assert seen == [(0, first.params["x"])] and copy.params == first.params


# --- sweeps -----------------------------------------------------------------------------

def _dead_trial(spec, study, storage, tmp_path):
  """What SIGKILL leaves: trial 0 RUNNING, its worker process gone, its run directory with
  a lock naming the dead process. Returns (the trial's learning rate, its directory)."""
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # heartbeats outside Study.optimize
    trial = study.ask()
  lr = spec.space["optimizer.learning_rate"].suggest(trial)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  trial.set_user_attr("worker", {"host": os.uname().nodename, "pid": dead.pid})
  storage.record_heartbeat(trial._trial_id)
  run = tmp_path / "W" / "trials" / "0000"
  run.mkdir(parents=True)
  (run / "run.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
  return lr, run


def test_two_trial_sweep_after_a_dead_worker(tmp_path, data):
  """A 2-trial sweep whose first trial's worker died: the next worker fails that trial,
  runs its parameters again in its directory, then the second; each parameter set ends
  COMPLETE once, the database says so, each trial is a run and the summary lists both."""
  spec, study, storage, n = _open(tmp_path / "W", _experiment(tmp_path))
  assert n == 2 and storage.url == f"sqlite:///{tmp_path}/W/study.db"
  lr0, run0 = _dead_trial(spec, study, storage, tmp_path)
  did = _work(spec, study, storage, n, tmp_path / "W", data)
  assert did == {"complete": 2, "pruned": 0, "failed": 0, "resumed": 1}
  # The database on disk (a fresh connection): trial 0 failed, its copy (1) and 2 complete.
  again = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path}/W/study.db")
  trials = again.get_trials()
  assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 2
  assert trials[1].params == trials[0].params == {"optimizer.learning_rate": lr0}
  assert trials[1].system_attrs["failed_trial"] == 0
  assert trials[1].user_attrs["workdir"] == str(run0)
  assert trials[2].user_attrs["workdir"] == str(tmp_path / "W" / "trials" / "0002")
  lr2 = trials[2].params["optimizer.learning_rate"]
  assert lr2 != lr0 and 1e-3 <= lr2 <= 1e-1
  for t in trials[1:]:
    run = t.user_attrs["workdir"]
    results = json.loads(open(os.path.join(run, "results.json")).read())
    assert t.value == results["validation"]["accuracy"]
    config = json.loads(open(os.path.join(run, "config.json")).read())
    assert config["optimizer"]["learning_rate"] == t.params["optimizer.learning_rate"]
    assert t.intermediate_values == {1: t.value}  # the per-epoch report
  text = summary.write(again, str(tmp_path / "W"), spec.metric,
                       {"optimizer.learning_rate": (1e-3, 1e-1, True)})
  best = max(trials[1:], key=lambda t: t.value)
  assert f"best: trial {best.number}" in text
  rows = (tmp_path / "W" / "summary.csv").read_text().splitlines()
  assert len(rows) == 3 and rows[0].startswith("trial,resumed_from,state,value")
  assert rows[1].startswith("1,0,COMPLETE,") and rows[2].startswith("2,,COMPLETE,")
  assert (tmp_path / "W" / "sweep.png").stat().st_size > 5000


@pytest.mark.slow
def test_dead_worker_trial_resumes_from_its_checkpoint(tmp_path, data):
  """As above, the killed run having saved a checkpoint (step 2 or later of 6): its copy
  resumes from it."""
  spec, study, storage, _ = _open(tmp_path / "W", _experiment(tmp_path, epochs=2))
  lr, run = _dead_trial(spec, study, storage, tmp_path)
  (run / "run.lock").unlink()
  c = spec.config_for({"optimizer.learning_rate": lr})
  c.checkpoint_every_steps = 2
  with pytest.raises(trainer.guards.Preempted):  # stops after its step-2 checkpoint
    _preempt_after_first_checkpoint(c, run, data)
  did = _work(spec, study, storage, 1, tmp_path / "W", data)
  assert did == {"complete": 1, "pruned": 0, "failed": 0, "resumed": 1}
  trials = study.get_trials()
  assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
  assert trials[1].params == trials[0].params
  history = [json.loads(l) for l in (run / "config_history.jsonl").read_text().splitlines()]
  assert [h["resumed"] for h in history] == [False, True]  # from the killed run's checkpoint
  assert history[0]["step"] == 0 and 2 <= history[1]["step"] < 6


def _preempt_after_first_checkpoint(config, run, data):
  """Train until the first checkpoint, then SIGUSR1 (the trainer saves and stops)."""
  import threading

  def signal_when_saved():
    while not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir()):
      time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGUSR1)
  threading.Thread(target=signal_when_saved, daemon=True).start()
  trainer.train_and_evaluate(config, str(run), *data)


class _PruneAfterFirstReport(optuna.pruners.BasePruner):
  def prune(self, study, trial):
    return bool(trial.intermediate_values)


def test_pruned_trial_stops_at_the_pruners_word(tmp_path, data):
  spec, study, storage, _ = _open(tmp_path / "W", _experiment(tmp_path, epochs=4))
  study.pruner = _PruneAfterFirstReport()
  did = _work(spec, study, storage, 1, tmp_path / "W", data)
  assert did["pruned"] == 1
  t = study.get_trials()[0]
  assert t.state == TrialState.PRUNED
  run = tmp_path / "W" / "trials" / "0000"
  steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert max(steps) < 4 * 3  # stopped before its 4 epochs of 3 steps
  assert set(t.intermediate_values) <= {1, 2, 3} and 1 in t.intermediate_values
  assert not (run / "results.json").exists()
  # `cnn-jax runs` calls it pruned (not "preempted": resuming it is not wanted), says why
  row = runs.summarize(run_dir.Run(str(run)))
  assert row["status"] == "pruned" and "pruned by the sweep's pruner after validation" in \
      row["error"]
