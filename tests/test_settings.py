"""Settings refused when the config is read, before any data loads or anything compiles
(each used to fail after an epoch of training, every epoch, or not at all)."""
import numpy as np
import pytest

from cnn_jax import config as config_lib
from helpers import tiny_config


@pytest.mark.parametrize("overrides,message", [
    ({"log_every_steps": 0}, "log_every_steps must be a positive integer, got 0"),
    ({"eval_every_epochs": 0}, "eval_every_epochs must be a positive integer"),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be a positive integer.*could never resume"),
    ({"dataset.max_eval_examples": 0}, "max_eval_examples must be a positive integer.*unset"),
    ({"optimizer.learning_rate": float("nan")}, "learning_rate must be a finite number >= 0"),
    ({"optimizer.learning_rate": float("inf")}, "learning_rate must be a finite number >= 0"),
    ({"optimizer.learning_rate": -0.1}, "learning_rate must be a finite number >= 0"),
    ({"best_metric": "acc"}, "best_metric='acc' is not a validation metric of a classification "
                             "run; it reports loss, accuracy, top5_accuracy. Did you mean "
                             "'accuracy'"),
])
def test_bad_setting_is_refused_with_what_to_do(overrides, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(tiny_config(**overrides))


def test_best_metric_names_follow_the_task():
  config_lib.validate(tiny_config(best_metric="top5_accuracy"))
  config_lib.validate(tiny_config(best_metric=""))  # no best/
  c = tiny_config(task="detection", best_metric="mAP50")
  config_lib.validate(c)
  config_lib.validate(tiny_config(task="detection", best_metric="AP50/raccoon"))
  with pytest.raises(ValueError, match="reports mAP50, mAP50_07, mAP, mAP75 and AP50/<class>"):
    config_lib.validate(tiny_config(task="detection", best_metric="accuracy"))
  config_lib.validate(tiny_config(task="localization", best_metric="mean_iou"))


def test_resuming_with_another_batch_size_is_refused(tmp_path):
  """The data position of a step depends on the batch size: a resume with another one
  silently trained other (and more) steps than the run had."""
  from cnn_jax.training import trainer
  from helpers import random_split
  train = random_split(96)
  trainer.train_and_evaluate(tiny_config("mlp", batch_size=32, num_epochs=1), str(tmp_path),
                             train, train)
  with pytest.raises(ValueError, match="batch_size: 32 -> 16.*new --workdir"):
    trainer.train_and_evaluate(tiny_config("mlp", batch_size=16, num_epochs=2), str(tmp_path),
                               train, train)
  r = trainer.train_and_evaluate(tiny_config("mlp", batch_size=32, num_epochs=2), str(tmp_path),
                                 train, train)  # the same batch: resumes
  assert r["final_step"] == 6


def test_restore_from_another_model_names_both(tmp_path):
  from cnn_jax.training import trainer
  from helpers import random_split
  train = random_split(64)
  trainer.train_and_evaluate(tiny_config("mlp", num_epochs=1), str(tmp_path / "mlp"), train, train)
  cfg = tiny_config("mnist_cnn", num_epochs=1, restore_from=str(tmp_path / "mlp"))
  with pytest.raises(ValueError, match="restore_from=.*mlp \\(model 'mlp'\\): its weights do not "
                                       "fit model 'mnist_cnn' \\(missing there: params/conv1"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "cnn"), train, train)
  cfg = tiny_config("mlp", num_epochs=1, restore_from=str(tmp_path / "mlp"))
  cfg.model_kwargs.hidden = (128, 32)  # a body of another width: refused, naming the shapes
  with pytest.raises(ValueError, match="other shapes: params/dense2/bias \\(64,\\) -> \\(32,\\)"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "mlp32"), train, train)


def test_an_overflowing_gradient_norm_stops_the_run(tmp_path):
  """Adam at lr 1e6: the loss stays finite (5e30) while the gradient norm is inf; the run
  used to "succeed" near chance with grad_norm=Infinity in its log."""
  from cnn_jax.training import guards, trainer
  from helpers import random_split
  train = random_split(128)
  cfg = tiny_config("small_convnet", num_epochs=1, log_every_steps=1)
  cfg.optimizer.learning_rate = 1e6
  with pytest.raises(guards.NonFiniteLossError, match="gradient norm became inf .*by step 2"):
    trainer.train_and_evaluate(cfg, str(tmp_path), train, train)


@pytest.mark.parametrize("flags,message", [
    (["--config.optimizer.lr=0.1"], "unknown config key 'optimizer.lr'.*Did you mean "
                                    "optimizer.learning_rate\\?"),
    (["--config.num_epochz=2"], "Did you mean num_epochs\\?"),
])
def test_train_flags_explained_in_one_line(flags, message, capsys, tmp_path):
  from cnn_jax import cli
  assert cli.main(["train", "--config", "experiments/mnist_cnn.py:smoke", "--workdir",
                   str(tmp_path), *flags]) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  import re
  assert re.search(message, err)


def test_config_file_errors_in_one_line(capsys, tmp_path):
  from cnn_jax import cli
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(arg=None):\n  return 1 +\n")
  for path, message in ((str(tmp_path / "nope.py"), "nope.py does not exist"),
                        (f"{bad}:smoke", "bad.py, line 2: invalid syntax")):
    assert cli.main(["train", f"--config={path}", "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_one_run_per_work_directory(tmp_path, caplog):
  """A second run on a busy work directory is refused; a dead run's lock is taken over."""
  import json
  import logging
  import os
  import socket
  import subprocess
  import sys
  import time
  from cnn_jax.training import trainer, workdir as workdir_lib
  from helpers import random_split
  train = random_split(64)
  wd = tmp_path / "run"
  wd.mkdir()
  lock = wd / workdir_lib.LOCK_FILE
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "started": 0}))
    with pytest.raises(RuntimeError, match=f"in use by another run \\(pid {sleeper.pid} on host"):
      trainer.train_and_evaluate(tiny_config("mlp"), str(wd), train, train)
    assert not (wd / "checkpoints").exists()  # refused before anything was written
  finally:
    sleeper.kill()  # not reaped yet: a zombie, as under a shell or a sweep that has not waited
  try:
    def state():
      with open(f"/proc/{sleeper.pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
    deadline = time.monotonic() + 30
    while state() != "Z" and time.monotonic() < deadline:  # dead, still in the table
      time.sleep(0.01)
    assert state() == "Z"
    with caplog.at_level(logging.WARNING, logger="cnn_jax"):  # its process is gone now
      trainer.train_and_evaluate(tiny_config("mlp"), str(wd), train, train)
  finally:
    sleeper.wait()
  assert "taking over the lock of a run that is gone" in caplog.text
  assert not lock.exists()  # released at the end
  lock.write_text(json.dumps({"host": "another-host", "pid": os.getpid(), "started": 0}))
  with pytest.raises(RuntimeError, match="host another-host.*delete .*run.lock"):
    trainer.train_and_evaluate(tiny_config("mlp", num_epochs=2), str(wd), train, train)


def test_all_checkpoints_corrupt_is_refused_not_restarted(tmp_path, caplog):
  """Every step unreadable used to mean a silent restart from step 0 over the set-aside history."""
  import glob
  import shutil
  from cnn_jax.training import trainer
  from helpers import empty_array_files, random_split
  train = random_split(96)
  cfg = tiny_config("mlp", num_epochs=1, checkpoint_every_steps=1, keep_checkpoints=2)
  trainer.train_and_evaluate(cfg, str(tmp_path), train, train)
  empty_array_files(f"{tmp_path}/checkpoints/*")
  cfg.num_epochs = 2
  for _ in range(2):  # and again: the set-aside steps still say what happened
    with pytest.raises(RuntimeError, match="every checkpoint in .*checkpoints is corrupt.*move"):
      trainer.train_and_evaluate(cfg, str(tmp_path), train, train)
  assert len(glob.glob(f"{tmp_path}/checkpoints/corrupt-*")) == 2
  shutil.move(tmp_path / "checkpoints", tmp_path / "checkpoints.broken")
  assert trainer.train_and_evaluate(cfg, str(tmp_path), train, train)["final_step"] == 6


def test_metrics_after_a_resume_hold_each_step_once(tmp_path):
  """A run killed after logging past its last checkpoint logged those steps again on resume:
  a curve read from metrics.jsonl went back in time. They now move to metrics.superseded.jsonl."""
  import json
  import shutil
  from cnn_jax.training import trainer
  from helpers import random_split
  train = random_split(96)
  cfg = tiny_config("mlp", num_epochs=2, checkpoint_every_steps=1, keep_checkpoints=10,
                    log_every_steps=1)
  trainer.train_and_evaluate(cfg, str(tmp_path), train, train)
  for step in (4, 5, 6):  # as if killed right after step 6 was logged, before its saves
    shutil.rmtree(tmp_path / "checkpoints" / str(step))
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "train/lo')  # and the last line cut short
  trainer.train_and_evaluate(cfg, str(tmp_path), train, train)
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_steps = [l["step"] for l in lines if "train/loss" in l]
  assert train_steps == [1, 2, 3, 4, 5, 6]
  assert [l["step"] for l in lines if "validation/loss" in l] == [3, 6]
  old = (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in old[:-1] if "train/loss" in l] == [4, 5, 6]
  assert old[-1] == '{"step": 6, "train/lo'


def test_eval_with_a_corrupt_best_falls_back_to_the_latest(tmp_path, caplog):
  """`cnn-jax eval` on a damaged best/ printed a 416-line traceback with no path."""
  import logging
  from cnn_jax.training import trainer
  from helpers import empty_array_files, random_split
  train = random_split(96)
  cfg = tiny_config("mlp", num_epochs=2)
  r = trainer.train_and_evaluate(cfg, str(tmp_path), train, train)
  empty_array_files(f"{tmp_path}/best/*")
  from cnn_jax import checkpoint as ckpt_lib
  with caplog.at_level(logging.WARNING, logger="cnn_jax"):
    tree, meta, step = ckpt_lib.load_checkpoint(str(tmp_path))
  assert step == r["final_step"] and f"{tmp_path}/best cannot be read" in caplog.text
  assert "pass --which latest" in caplog.text
  np.testing.assert_array_equal(tree["params"]["head"]["kernel"],
                                r["state"].params["head"]["kernel"])


def test_prepare_without_network_or_raw_files_fails_in_seconds(tmp_path, monkeypatch):
  """It retried downloads for 206 s before failing."""
  import socket
  import time
  from cnn_jax.data import tfds_data

  def offline(*args, **kwargs):
    raise OSError("Network is unreachable")
  monkeypatch.setattr(socket, "create_connection", offline)
  for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
    monkeypatch.delenv(k, raising=False)
  start = time.time()
  with pytest.raises(tfds_data.DatasetUnavailableError, match="(?s)no network.*train-images-idx3-ubyte.gz.*--raw_dir"):
    tfds_data.prepare("fashion_mnist", str(tmp_path))
  assert time.time() - start < 10


def test_a_run_whose_every_step_is_skipped_stops(tmp_path, caplog):
  """skip_nonfinite_steps with every step skipped trained on silently (9.9% at the end)."""
  import logging
  from cnn_jax.training import guards, trainer
  from helpers import random_split
  train = random_split(128)
  cfg = tiny_config("mlp", num_epochs=9, log_every_steps=1, skip_nonfinite_steps=True)
  cfg.optimizer.name, cfg.optimizer.schedule, cfg.optimizer.learning_rate = "sgd", "piecewise", 0.01
  cfg.optimizer.decay_epochs, cfg.optimizer.decay_factors = (1,), (1e38,)  # from step 5 on: inf
  with caplog.at_level(logging.WARNING, logger="cnn_jax"):
    with pytest.raises(guards.NonFiniteLossError, match="last 20 steps \\(to step 2[45]\\)"):
      trainer.train_and_evaluate(cfg, str(tmp_path), train, train)
  assert "100% of the last 1 steps were skipped" in caplog.text


def test_a_relative_workdir_loads(tmp_path, monkeypatch):
  """orbax reads only absolute paths: `cnn-jax eval --workdir runs/a` failed with
  "Checkpoint path should be absolute" (the loop resolves its own, the readers did not)."""
  from cnn_jax import checkpoint as ckpt_lib
  from cnn_jax.training import trainer
  from helpers import random_split
  train = random_split(64)
  trainer.train_and_evaluate(tiny_config("mlp"), str(tmp_path / "runs" / "a"), train, train)
  monkeypatch.chdir(tmp_path)
  for which in ("best", "latest"):
    assert ckpt_lib.load_checkpoint("runs/a", which)[2] == 2


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MiB tmpfs (root only); skipped, with the reason, where it cannot be mounted."""
  import subprocess
  mount = tmp_path / "disk"
  mount.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if done.returncode:
    pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode})")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def full_disk_config(async_save):
  # mlp state: params + 2 Adam moments, about 1.3 MB a checkpoint; 3 MiB hold two.
  return tiny_config("mlp", num_epochs=3, checkpoint_every_steps=1, keep_checkpoints=3,
                     log_every_steps=1, async_checkpointing=async_save)


def finished_steps(folder):
  """The steps orbax committed in a checkpoint folder (it renames a step's tmp folder to <step>)."""
  return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.exists() else set()


def record_saves(monkeypatch, checkpoints):
  """Spy on the loop's saves: {step: the state handed to the save} and the steps committed
  in `checkpoints` before each save (a committed step is deleted only when `keep` newer
  ones are committed, so none is missed)."""
  from cnn_jax import checkpoint as ckpt_lib
  from state_compare import saved_arrays
  states, committed = {}, set()

  def spy(real):
    def save(self, state, meta, *args, **kwargs):
      committed.update(finished_steps(checkpoints))
      states[meta["step"]] = saved_arrays(ckpt_lib.state_to_tree(state))
      return real(self, state, meta, *args, **kwargs)
    return save
  monkeypatch.setattr(ckpt_lib.Checkpoints, "save", spy(ckpt_lib.Checkpoints.save))
  monkeypatch.setattr(ckpt_lib.Checkpoints, "save_best", spy(ckpt_lib.Checkpoints.save_best))
  return states, committed


@pytest.fixture(scope="module")
def roomy_disk_run(tmp_path_factory):
  """The full-disk test's run on a disk with room, once, when first asked for: its state
  at every step and at the end."""
  from cnn_jax import checkpoint as ckpt_lib
  from cnn_jax.training import trainer
  from helpers import random_split
  from state_compare import saved_arrays
  done = {}

  def run():
    if not done:
      workdir = tmp_path_factory.mktemp("roomy") / "run"
      with pytest.MonkeyPatch.context() as mp:
        states, _ = record_saves(mp, workdir / "checkpoints")
        r = trainer.train_and_evaluate(full_disk_config(False), str(workdir), random_split(96),
                                       random_split(96))
      done.update(states=states, final=saved_arrays(ckpt_lib.state_to_tree(r["state"])))
    return done["states"], done["final"]
  return run


@pytest.mark.parametrize("async_save", [False, True])
def test_a_full_disk_is_survived(small_disk, caplog, monkeypatch, roomy_disk_run, async_save):
  """A full disk used to kill the run (metrics.jsonl raised ENOSPC) and lose its metrics;
  each failed save left a tmp folder eating what space was left. Then the run survived in a
  flood: a line per failed save and per cleanup, orbax's and asyncio's tracebacks, and
  tensorstore's "Event loop is closed" through sys.unraisablehook (197 tracebacks in 4,117
  lines for a CLI run); one line per kind of failure now, and no traceback. (tensorstore's
  "Event loop is closed" arrives from its threads at any later time, in whatever test runs
  then: counted in test_resume_policy's fresh-process test, not here.) Removing a failed
  save's folder while tensorstore still wrote into it ended 2 of 8 runs ("Directory not
  empty"). What was saved is whole: every checkpoint left restores, bit for bit, to the
  state the run had at its step, which a run on a roomy disk had too; none committed is lost."""
  import glob
  import json
  import logging
  import subprocess
  from cnn_jax import checkpoint as ckpt_lib
  from cnn_jax.training import trainer
  from helpers import random_split
  from state_compare import assert_same_saved, saved_arrays
  train, run = random_split(96), small_disk / "run"
  states, committed = record_saves(monkeypatch, run / "checkpoints")
  with caplog.at_level(logging.INFO):
    r = trainer.train_and_evaluate(full_disk_config(async_save), str(run), train, train)
  assert r["final_step"] == 9  # the run went on to its end
  problems = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
  failed_saves = [m for m in problems if "checkpoint at step" in m and "failed" in m]
  assert len(failed_saves) == 1 and "more failures of this kind are counted" in failed_saves[0]
  assert len(problems) <= 5, problems  # saves, their summary, TensorBoard, metrics.jsonl twice
  assert [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()] == []
  assert not glob.glob(f"{run}/*/*.orbax-checkpoint-tmp*")  # no half-written saves
  text = (run / "metrics.jsonl").read_text()
  assert text == "" or text.endswith("\n")  # no torn last line
  steps = [json.loads(l)["step"] for l in text.splitlines()]  # every line whole
  assert steps == sorted(steps)
  # The disk frees up. Nothing committed was lost: the newest `keep` are all there.
  subprocess.run(["mount", "-o", "remount,size=64m", "tmpfs", str(small_disk)], check=True)
  left = finished_steps(run / "checkpoints")
  committed |= left
  assert left and set(sorted(committed)[-3:]) <= left, (sorted(committed), sorted(left))
  # Each restores to the state the run had at its step, the roomy run's at that step.
  roomy, roomy_final = roomy_disk_run()
  assert_same_saved(saved_arrays(ckpt_lib.state_to_tree(r["state"])), roomy_final)
  for which, step in [("latest", s) for s in sorted(left)] + [("best", None)]:
    tree, meta, got = ckpt_lib.load_checkpoint(str(run), which, step)
    assert meta["step"] == got and int(tree["step"]) == got
    assert_same_saved(saved_arrays(tree), states[got])
    assert_same_saved(saved_arrays(tree), roomy[got])


def test_a_dead_tensorboard_writer_never_blocks_training(tmp_path, caplog):
  """tensorboardX's event thread dies on a write error (a full disk) and its 10-event queue
  is then never read: the 11th event blocked the loop forever (the full-disk test hung)."""
  import logging
  import threading
  from cnn_jax.training.metric_writers import MetricWriter
  w = MetricWriter(tmp_path, enabled=True)
  events = next(iter(w._tb.all_writers.values())).event_writer

  def no_room(event):
    raise OSError(28, "No space left on device")
  events._ev_writer.write_event = no_room
  done = threading.Event()

  def log_many():
    for step in range(40):
      w.write(step, {"loss": 1.0, "accuracy": 0.5}, "train")
    w.flush()
    w.close()
    done.set()
  with caplog.at_level(logging.ERROR, logger="cnn_jax"):
    threading.Thread(target=log_many, daemon=True).start()
    assert done.wait(30), "the metric writer blocked on TensorBoard's dead event thread"
  assert caplog.text.count("TensorBoard's event writer") == 1
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 40  # the JSON lines go on


def test_metric_lines_wait_for_room_and_none_is_torn(tmp_path, monkeypatch, caplog):
  import errno
  import json
  import logging
  import os
  from cnn_jax.training.metric_writers import MetricWriter
  w = MetricWriter(tmp_path, enabled=True, tensorboard=False)
  real = os.write
  state = {"room": 0}  # bytes the disk still takes; None: unlimited

  def write(fd, data):
    if state["room"] is None:
      return real(fd, data)
    if state["room"] == 0:
      raise OSError(errno.ENOSPC, "No space left on device")
    n = real(fd, data[:state["room"]])
    state["room"] -= n
    return n
  monkeypatch.setattr(os, "write", write)
  with caplog.at_level(logging.WARNING, logger="cnn_jax"):
    w.write(1, {"loss": 1.0}, "train")           # no room at all
    state["room"] = 10
    w.write(2, {"loss": 2.0}, "train")           # room for 10 bytes: a torn line on disk
    state["room"] = None
    w.write(3, {"loss": 3.0}, "train")           # room again: everything, once, in order
    w.close()
  steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3]
  assert caplog.text.count("cannot write") == 1 and "is written again" in caplog.text
  # A run that ends while the disk is still full: the part of a line the disk took is taken
  # back (it stayed, torn, at the end of the file), the line waits, then is printed.
  w = MetricWriter(tmp_path, enabled=True, tensorboard=False)
  state["room"] = 10
  w.write(4, {"loss": 4.0}, "train")
  state["room"] = 0
  w.close()
  text = (tmp_path / "metrics.jsonl").read_text()
  assert text.endswith("\n") and [json.loads(l)["step"] for l in text.splitlines()] == [1, 2, 3]


def test_redoing_a_step_whose_best_save_exists_is_no_error(tmp_path, caplog):
  """Resumed from an older step, the run reaches an epoch end whose best/ save exists:
  that logged a false 'saving the best checkpoint ... failed (StepAlreadyExists)'."""
  import logging
  import shutil
  from cnn_jax.training import trainer
  from helpers import random_split
  train = random_split(96)
  cfg = tiny_config("mlp", num_epochs=2, checkpoint_every_steps=1, keep_checkpoints=10,
                    best_metric="loss")
  trainer.train_and_evaluate(cfg, str(tmp_path), train, train)
  assert (tmp_path / "best" / "6").exists()
  for step in (5, 6):
    shutil.rmtree(tmp_path / "checkpoints" / str(step))
  with caplog.at_level(logging.ERROR, logger="cnn_jax"):
    assert trainer.train_and_evaluate(cfg, str(tmp_path), train, train)["final_step"] == 6
  assert "failed" not in caplog.text


def test_predict_inputs(tmp_path, capsys):
  """Folders expanded (sorted, images only), --top validated, a truncated file named, and a
  resized or converted input said so in one line."""
  from PIL import Image
  from cnn_jax import cli
  from cnn_jax.training import trainer
  from helpers import random_split
  train = random_split(64)
  trainer.train_and_evaluate(tiny_config("mnist_cnn"), str(tmp_path / "run"), train, train)
  images = tmp_path / "images"
  images.mkdir()
  Image.fromarray(train.images[0][..., 0]).save(images / "b_digit.png")
  Image.new("RGB", (100, 80), (200, 10, 10)).save(images / "a_colour.jpg")
  (images / "notes.txt").write_text("not an image")
  assert cli.main(["predict", "--workdir", str(tmp_path / "run"), str(images), "--top", "2"]) == 0
  out = capsys.readouterr().out.splitlines()
  heads = [l for l in out if "predicted in" in l]
  assert [h.split(":")[0] for h in heads] == [str(images / "a_colour.jpg"), str(images / "b_digit.png")]
  assert "(converted from RGB to grey; 100x80 brought to 28x28 (bilinear resize))" in heads[0]
  assert "(" not in heads[1].split("seconds")[1]  # a stored-size grey digit: nothing changed
  assert len(out) == 2 + 2 * 2
  assert cli.main(["predict", "--workdir", str(tmp_path / "run"), str(images), "--top", "-3"]) == 1
  assert "--top must be a positive number of classes, got -3" in capsys.readouterr().err
  cut = images / "cut.jpg"
  data = (images / "a_colour.jpg").read_bytes()
  cut.write_bytes(data[:len(data) // 2])
  assert cli.main(["predict", "--workdir", str(tmp_path / "run"), str(cut)]) == 1
  assert f"cannot read image {cut}" in capsys.readouterr().err
