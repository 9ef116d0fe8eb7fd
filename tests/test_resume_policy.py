"""What the same work directory's command, run again with another config, may change.

Before: a changed optimizer.weight_decay set every healthy checkpoint aside as corrupt-*;
a changed learning rate was silently accepted (config.json overwritten, no warning); a
finished run's command run again appended its test lines again.
"""
import glob
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from cnn_jax import checkpoint as ckpt_lib
from cnn_jax.training import resume, setup, trainer
from helpers import random_split, tiny_config

TRAIN = random_split(64)


def base(**kw):
  """mlp, cosine over num_epochs, 2 steps an epoch, a checkpoint every step."""
  return tiny_config("mlp", **{"num_epochs": 1, "checkpoint_every_steps": 1,
                              "optimizer.schedule": "cosine", **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One finished 1-epoch run, copied by each test."""
  d = tmp_path_factory.mktemp("trained") / "run"
  r = trainer.train_and_evaluate(base(), str(d), TRAIN, TRAIN, TRAIN)
  return d, r


@pytest.fixture
def run(trained, tmp_path):
  shutil.copytree(trained[0], tmp_path / "run")
  return tmp_path / "run"


def test_changed_optimizer_structure_is_refused_not_set_aside(run):
  """weight_decay adds a link to the optimizer chain: another opt_state structure. Both
  steps used to be renamed corrupt-* and the run called corrupt."""
  cfg = base()
  cfg.optimizer.weight_decay = 1e-4
  template = setup.setup(cfg, TRAIN, TRAIN, TRAIN).compiled.init_state(jax.random.key(0))
  ckpts = ckpt_lib.Checkpoints(run, keep=3, best_metric=None, async_save=False)
  with pytest.raises(ValueError) as e:
    ckpt_lib.restore_latest_good(ckpts, template, cfg)
  ckpts.close()
  msg = str(e.value)
  assert "\n" not in msg
  assert f"{run}/checkpoints/2: its saved opt_state has another structure than this config" in msg
  assert "optimizer.weight_decay: 0.0 -> 0.0001" in msg and "nothing was set aside" in msg
  assert f"--config.restore_from={run}" in msg
  assert sorted(os.listdir(run / "checkpoints")) == ["1", "2"]  # nothing renamed


def test_a_changed_learning_rate_is_refused_before_anything_compiles(run, monkeypatch):
  before = (run / "config.json").read_text()
  monkeypatch.setattr(trainer, "setup", lambda *a: pytest.fail("set up before refusing"))
  cfg = base(num_epochs=2)
  cfg.optimizer.learning_rate = 0.5
  cfg.optimizer.weight_decay = 1e-4
  with pytest.raises(ValueError) as e:
    trainer.train_and_evaluate(cfg, str(run), TRAIN, TRAIN, TRAIN)
  assert str(e.value) == (
      f"resuming {run} with changed settings (optimizer.learning_rate: 0.001 -> 0.5; "
      "optimizer.weight_decay: 0.0 -> 0.0001): a resume continues the run as it was configured. "
      "Run with the saved values; or continue with these, recorded in config_history.jsonl, with "
      f"--config.resume_changes=allow; or start a new run with --workdir NEW "
      f"(--config.restore_from={run} for its weights)")
  assert (run / "config.json").read_text() == before  # not overwritten
  cfg = base(num_epochs=2, resume_changes="allow")
  cfg.model = "mnist_cnn"  # never, even allowed
  with pytest.raises(ValueError, match=r"model: 'mlp' -> 'mnist_cnn'\), which no resume can"):
    trainer.train_and_evaluate(cfg, str(run), TRAIN, TRAIN, TRAIN)


def test_what_a_resume_may_change(tmp_path):
  """Unit: safe keys and more epochs pass; fewer epochs, the seed, the data need 'allow'."""
  (tmp_path / "checkpoints" / "2").mkdir(parents=True)
  (tmp_path / "config.json").write_text(base(num_epochs=3).to_json_best_effort())
  from etils import epath
  wd = epath.Path(tmp_path)
  r = resume.check(base(num_epochs=5, log_every_steps=7, progress_bar=True,
                        **{"dataset.workers": 2}), wd)
  assert r.changes == {"dataset.workers": (0, 2), "log_every_steps": (2, 7),
                       "num_epochs": (3, 5), "progress_bar": (False, True)}
  for key, value in [("num_epochs", 2), ("seed", 1), ("dataset.max_train_examples", 100),
                     ("optimizer.schedule", "constant"), ("label_smoothing", 0.1)]:
    with pytest.raises(ValueError, match=f"changed settings \\({key}: .* -> {value!r}\\)"):
      resume.check(base(**{"num_epochs": 3, key: value}), wd)
    assert resume.check(base(**{"num_epochs": 3, "resume_changes": "allow", key: value}),
                        wd).changes
  with pytest.raises(ValueError, match="resume_changes must be 'refuse' or 'allow'"):
    from cnn_jax import config as config_lib
    config_lib.validate(base(resume_changes="yes"))


def test_allowed_changes_and_more_epochs_are_recorded(run, caplog):
  cfg = base(num_epochs=2, resume_changes="allow")
  cfg.optimizer.learning_rate = 0.002
  with caplog.at_level(logging.INFO, logger="cnn_jax"):
    r = trainer.train_and_evaluate(cfg, str(run), TRAIN, TRAIN, TRAIN)
  assert r["final_step"] == 4
  # cosine over 1 epoch (2 steps) at 1e-3: 0 at step 2; over 2 epochs at 2e-3: 1e-3 there.
  assert ("num_epochs 1 -> 2: the cosine learning-rate schedule is defined over num_epochs and "
          "is stretched to 2 epochs: the learning rate at step 2 moves from 0 to 0.001 (its end "
          "moves from step 2 to step 4)") in caplog.text
  history = [json.loads(l) for l in (run / "config_history.jsonl").read_text().splitlines()]
  assert [h["step"] for h in history] == [0, 2] and [h["resumed"] for h in history] == [False, True]
  assert history[1]["changed"] == {"num_epochs": [1, 2], "optimizer.learning_rate": [0.001, 0.002],
                                   "resume_changes": ["refuse", "allow"]}
  assert history[0]["config"]["optimizer"]["learning_rate"] == 0.001  # the old one is kept
  saved = json.loads((run / "config.json").read_text())
  assert saved["optimizer"]["learning_rate"] == 0.002 and saved["num_epochs"] == 2


def test_a_finished_run_run_again_writes_nothing(run, trained, caplog):
  """Its test lines were appended again on each rerun (4 copies after 3 reruns)."""
  files = {p: open(p, "rb").read() for p in glob.glob(f"{run}/**/*", recursive=True)
           if os.path.isfile(p)}
  with caplog.at_level(logging.INFO, logger="cnn_jax"):
    r = trainer.train_and_evaluate(base(), str(run), TRAIN, TRAIN, TRAIN)
  after = {p: open(p, "rb").read() for p in glob.glob(f"{run}/**/*", recursive=True)
           if os.path.isfile(p)}
  assert after == files  # metrics.jsonl, TensorBoard, config: not one byte more
  lines = [l for l in caplog.text.splitlines() if "already finished" in l]
  test = trained[1]["test"]
  assert len(lines) == 1 and f"already finished (step 2 of 2), nothing was written" in lines[0]
  assert f"test loss {test['loss']:.4f} accuracy {test['accuracy']:.4f}" in lines[0]
  assert r["test"] == test and r["final_step"] == 2
  np.testing.assert_array_equal(r["state"].params["head"]["kernel"],
                                trained[1]["state"].params["head"]["kernel"])


DAMAGED_RESUME = """
import glob, logging, os, sys
sys.path.insert(0, {tests!r})
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from helpers import random_split, tiny_config
from cnn_jax.training import trainer
train, run = random_split(64), {run!r}
cfg = tiny_config("mlp", num_epochs=1, checkpoint_every_steps=1)
trainer.train_and_evaluate(cfg, run, train, train)
if {damage!r} == "manifest":
  for f in glob.glob(run + "/checkpoints/2/state/**/manifest.ocdbt", recursive=True):
    open(f, "wb").close()
else:
  os.truncate(max(glob.glob(run + "/checkpoints/2/state/ocdbt.process_0/d/*"),
                  key=os.path.getsize), 100)
cfg.num_epochs = 2
print("final step", trainer.train_and_evaluate(cfg, run, train, train)["final_step"])
import gc, time
for _ in range(3):  # what the failed read left, collected and ended: its reports come now
  gc.collect()
  time.sleep(0.2)
"""


@pytest.mark.slow  # a fresh subprocess each (~12 s): a guard, the CLI counts are the evidence
@pytest.mark.parametrize("damage", ["manifest", "data"])
def test_an_unreadable_checkpoint_is_one_line_without_tracebacks(tmp_path, damage):
  """An empty OCDBT manifest: orbax, asyncio and tensorstore added 23-90 tracebacks
  ("Event loop is closed" through sys.unraisablehook, from tensorstore's threads, at any
  later time: hence a fresh process) to our one line. Truncated array data: orbax's
  abandoned read coroutines report their errors when collected."""
  import subprocess
  import sys
  code = DAMAGED_RESUME.format(tests=os.path.dirname(__file__), run=str(tmp_path / "run"),
                               damage=damage)
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  out = done.stdout + done.stderr
  assert done.returncode == 0 and "final step 4" in out, out[-3000:]
  assert out.count("Traceback") == 0 and out.count("Exception ignored") == 0, out[-3000:]
  assert out.count("is corrupt or incomplete") == 1 and "resumed from step 1" in out


def test_a_missing_restore_from_says_it_does_not_exist(tmp_path, caplog):
  cfg = base(restore_from=str(tmp_path / "nope"))
  with caplog.at_level(logging.INFO, logger="cnn_jax"):
    with pytest.raises(FileNotFoundError, match=f"config.restore_from={tmp_path}/nope does not "
                                                "exist: give the --workdir of a trained run"):
      trainer.train_and_evaluate(cfg, str(tmp_path / "w"), TRAIN, TRAIN, TRAIN)
  assert "best/" not in caplog.text
  with pytest.raises(FileNotFoundError, match="nope does not exist"):
    ckpt_lib.load_checkpoint(str(tmp_path / "nope"))


def test_a_setting_the_runs_optimizer_never_reads_is_no_change():
  """A run saved with the old piecewise default decay_epochs=(5, 8) and a cosine schedule
  resumes under the new default (None): the cosine run never read it. A piecewise run,
  which did, is still refused; so is momentum for an optimizer that uses it."""
  saved = json.loads(base(**{"optimizer.schedule": "cosine"}).to_json_best_effort())
  saved["optimizer"]["decay_epochs"], saved["optimizer"]["b1"] = [5, 8], 0.5
  now = base(**{"optimizer.schedule": "cosine", "optimizer.name": "momentum"})
  saved["optimizer"]["name"] = "momentum"
  assert resume.config_changes(saved, now) == {}
  saved["optimizer"]["momentum"] = 0.5
  assert resume.config_changes(saved, now) == {"optimizer.momentum": (0.5, 0.9)}
  saved["optimizer"]["schedule"] = "piecewise"
  assert set(resume.config_changes(saved, now)) == {
      "optimizer.momentum", "optimizer.schedule", "optimizer.decay_epochs"}
