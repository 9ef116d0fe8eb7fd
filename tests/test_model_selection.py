"""Model selection on validation data, test reported apart; `cnn-jax eval` on a real split."""
import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnn_jax import checkpoint as ckpt_lib
from cnn_jax import cli, config as config_lib
from cnn_jax.data.split import Split
from cnn_jax.training import evaluation, setup as setup_lib, trainer
from cnn_jax.training.metric_writers import read_metrics
from helpers import random_split, tiny_config


def test_default_splits_hold_out_validation_from_train():
  ds = config_lib.base_config().dataset
  assert (ds.train_split, ds.val_split, ds.test_split) == ("train[:90%]", "train[90%:]", "test")


def test_best_is_chosen_on_validation_and_test_reported_apart(tmp_path):
  train, val, test = random_split(256), random_split(60, seed=1), random_split(50, seed=2)
  # Validation labels half noise: its accuracy moves from epoch to epoch.
  noisy = np.random.RandomState(3).randint(0, 10, 30).astype(np.int32)
  val = Split(val.images, np.concatenate([val.labels[:30], noisy]), 10)
  r = trainer.train_and_evaluate(tiny_config("mlp", num_epochs=3), str(tmp_path), train, val, test)
  assert r["validation"]["num_examples"] == 60 and r["test"]["num_examples"] == 50
  lines = read_metrics(str(tmp_path))
  val_acc = {l["step"]: l["validation/accuracy"] for l in lines if "validation/accuracy" in l}
  assert len(val_acc) == 3  # one validation per epoch; test only once, at the end
  assert sum("test/accuracy" in l for l in lines) == 1
  best_step = max(val_acc, key=lambda s: (val_acc[s], s))  # a tie keeps the later step
  assert r["test_best"]["step"] == best_step
  _, meta, step = ckpt_lib.load_checkpoint(str(tmp_path), "best")
  assert step == best_step and meta["validation"]["accuracy"] == val_acc[best_step]
  assert "test" not in json.dumps(meta.get("validation", {}))


def test_test_best_reports_the_best_checkpoints_own_metrics(tmp_path):
  """test_best is an evaluation of the best-on-validation checkpoint on the test split:
  here (best_metric="loss") that is epoch 2 of 3, so reporting the final state's metrics
  under test_best, or another step's, fails."""
  train, val, test = random_split(256), random_split(60, seed=1), random_split(50, seed=2)
  noisy = np.random.RandomState(3).randint(0, 10, 30).astype(np.int32)
  val = Split(val.images, np.concatenate([val.labels[:30], noisy]), 10)
  cfg = tiny_config("mlp", num_epochs=3, best_metric="loss")
  r = trainer.train_and_evaluate(cfg, str(tmp_path), train, val, test)
  val_loss = {l["step"]: l["validation/loss"] for l in read_metrics(str(tmp_path))
              if "validation/loss" in l}
  best_step = min(val_loss, key=val_loss.get)
  assert r["test_best"]["step"] == best_step != r["final_step"]
  variables, _, step = ckpt_lib.load_checkpoint(str(tmp_path), "best")
  assert step == best_step
  s = setup_lib.setup(cfg, train, val, test)
  state = evaluation.with_variables(s.compiled.init_state(jax.random.key(0)), variables)
  want = evaluation.evaluate(s, state, test)
  assert {k: v for k, v in r["test_best"].items() if k != "step"} == pytest.approx(want,
                                                                                   rel=1e-6)
  assert r["test_best"]["loss"] != pytest.approx(r["test"]["loss"], rel=1e-3)


def test_best_loss_keeps_the_lowest_loss(tmp_path):
  """best_metric='loss' must minimise (it used to keep the worst checkpoint)."""
  assert config_lib.best_mode(tiny_config(best_metric="loss")) == "min"
  assert config_lib.best_mode(tiny_config(best_metric="top5_accuracy")) == "max"
  assert config_lib.best_mode(tiny_config(best_metric="loss", best_mode="max")) == "max"
  train, val = random_split(128), random_split(40, seed=1)
  cfg = tiny_config("mlp", num_epochs=4, best_metric="loss")
  cfg.optimizer.learning_rate = 0.05  # large enough that validation loss goes up and down
  trainer.train_and_evaluate(cfg, str(tmp_path), train, val)
  losses = {l["step"]: l["validation/loss"] for l in read_metrics(str(tmp_path))
            if "validation/loss" in l}
  assert len(set(losses.values())) == 4
  _, meta, step = ckpt_lib.load_checkpoint(str(tmp_path), "best")
  assert step == min(losses, key=losses.get), (losses, step)


def test_no_validation_split_means_no_best_and_eval_uses_latest(tmp_path):
  train, test = random_split(64), random_split(30, seed=2)
  r = trainer.train_and_evaluate(tiny_config(), str(tmp_path), train, None, test)
  assert "validation" not in r and "test_best" not in r and r["test"]["num_examples"] == 30
  assert not (tmp_path / "best").exists()
  assert ckpt_lib.load_checkpoint(str(tmp_path), "best")[2] == r["final_step"]


@pytest.mark.slow  # 10 s through the CLI; the tests above make the same choice in-process
def test_cli_train_then_eval_on_the_test_split(tmp_path, capsys):
  data_dir = str(tmp_path / "data")
  tfds.testing.DummyMnist(data_dir=data_dir, file_format="array_record").download_and_prepare()
  common = ["--config.dataset.name=dummy_mnist", f"--config.dataset.data_dir={data_dir}"]
  rc = cli.main(["train", "--config", "experiments/mnist_mlp.py:smoke", "--workdir",
                 str(tmp_path / "run"), *common, "--config.batch_size=6",
                 "--config.eval_batch_size=8", "--config.num_epochs=2",
                 "--config.progress_bar=False"])
  out = capsys.readouterr().out
  assert rc == 0, out
  trained = json.loads(out[out.index("{"):])
  assert trained["validation"]["num_examples"] == 2    # train[90%:] of 20
  assert trained["test"]["num_examples"] == 20
  rc = cli.main(["eval", "--workdir", str(tmp_path / "run"), "--data_dir", data_dir])
  out = capsys.readouterr().out
  assert rc == 0, out
  ev = json.loads(out[out.index("{"):])
  assert ev["split"] == "test" and ev["which"] == "best" and ev["num_examples"] == 20
  assert ev["loss"] == pytest.approx(trained["test_best"]["loss"], rel=1e-6)
  rc = cli.main(["eval", "--workdir", str(tmp_path / "run"), "--data_dir", data_dir,
                 "--split", "validation", "--which", "latest"])
  ev = json.loads(capsys.readouterr().out)
  assert rc == 0 and ev["split"] == "train[90%:]" and ev["num_examples"] == 2
  assert ev["loss"] == pytest.approx(trained["validation"]["loss"], rel=1e-6)
