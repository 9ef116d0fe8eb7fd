"""tfds input pipeline on mock data, offline errors (preprocessing: test_augment.py)."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnn_jax import cli
from cnn_jax.data import input_pipeline, tfds_data
from cnn_jax.training import trainer
from helpers import tiny_config


def test_one_training_run_on_tfds_mock_data(tmp_path):
  cfg = tiny_config("lenet5", **{"dataset.image_size": (32, 32)})
  with tfds.testing.mock_data(num_examples=70):
    r = trainer.train_and_evaluate(cfg, str(tmp_path))
  assert r["final_step"] == 70 // 32
  assert r["validation"]["num_examples"] == 70


def test_split_shards_cover_each_example_once(tmp_path):
  # A real (tiny) array_record data set: the mock source ignores split slicing.
  tfds.testing.DummyMnist(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  load = lambda **kw: tfds_data.load_split("dummy_mnist", "train", data_dir=str(tmp_path), **kw)
  parts = [load(process_index=i, process_count=3) for i in range(3)]
  whole = load()
  assert [len(p) for p in parts] == [7, 7, 6] and len(whole) == 20
  np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), whole.images)
  np.testing.assert_array_equal(np.concatenate([p.labels for p in parts]), whole.labels)


def test_unprepared_data_set_says_which_files_to_put_where(tmp_path):
  with pytest.raises(tfds_data.DatasetUnavailableError) as e:
    tfds_data.prepare("mnist", data_dir=str(tmp_path), raw_dir=str(tmp_path / "raw"))
  msg = str(e.value)
  assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "raw") in msg
  with pytest.raises(tfds_data.DatasetUnavailableError, match="raw_dir"):
    tfds_data.prepare("fashion_mnist", data_dir=str(tmp_path), allow_download=False)


def test_unknown_data_set_name():
  with pytest.raises(ValueError, match="Did you mean: mnist"):
    tfds_data.prepare("mnistt")


def test_cli_train_reports_missing_data(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv("CNN_JAX_RAW_DIR", raising=False)
  rc = cli.main(["train", "--config", "experiments/mnist_mlp.py:smoke", "--workdir",
                 str(tmp_path / "w"), f"--config.dataset.data_dir={tmp_path}",
                 "--config.dataset.allow_download=False"])
  assert rc == 1
  assert "t10k-labels-idx1-ubyte.gz" in capsys.readouterr().err


SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")


@pytest.mark.slow  # 45 s: preparing both data sets from the original files
@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "fashion_mnist")),
                    reason="original MNIST / Fashion-MNIST files not in ../shared/datasets")
def test_prepare_mnist_and_fashion_mnist_offline_into_one_data_dir(tmp_path):
  # Both ship files with the same names: each must get its own extraction cache.
  pytest.importorskip("tensorflow")
  for name in ("mnist", "fashion_mnist"):
    tfds_data.prepare(name, data_dir=str(tmp_path), raw_dir=os.path.join(SHARED, name),
                           allow_download=False)
  mnist = tfds_data.load_split("mnist", "test", data_dir=str(tmp_path), max_examples=10)
  fashion = tfds_data.load_split("fashion_mnist", "test", data_dir=str(tmp_path),
                                      max_examples=10)
  assert mnist.images.shape == fashion.images.shape == (10, 28, 28, 1)
  assert not np.array_equal(mnist.images, fashion.images)
  full_m = tfds_data.load_split("mnist", "test", data_dir=str(tmp_path))
  full_f = tfds_data.load_split("fashion_mnist", "test", data_dir=str(tmp_path))
  assert len(full_m) == len(full_f) == 10_000
  assert np.bincount(full_m.labels).tolist()[:3] == [980, 1135, 1032]  # MNIST test class counts
  assert np.bincount(full_f.labels).tolist() == [1000] * 10            # Fashion-MNIST: balanced


def test_in_memory_splits_are_shared_out_per_process(monkeypatch):
  """Suspected and confirmed: splits passed to train_and_evaluate were used whole by every
  process (setup: "used as they are"), so P processes each read every example and
  evaluation counted each one P times. Now each process evaluates its share, as for files,
  and reads its own part of each global training batch."""
  from cnn_jax import parallel
  from cnn_jax.data import sources
  from cnn_jax.training import setup as setup_lib
  from helpers import random_split
  train, test = random_split(10, seed=1), random_split(7, seed=2)
  shares = [sources.process_shares({"train": train, "validation": None, "test": test}, i, 2)
            for i in range(2)]
  assert [len(s["train"]) for s in shares] == [5, 5] and [len(s["test"]) for s in shares] == [3, 4]
  assert all(s["validation"] is None for s in shares)
  np.testing.assert_array_equal(np.concatenate([s["test"].images for s in shares]), test.images)
  np.testing.assert_array_equal(np.concatenate([s["train"].labels for s in shares]),
                                train.labels)
  assert sources.process_shares({"train": train}, 0, 1)["train"] is train
  # setup hands in-memory splits through it with this process's index and count: here
  # simulated as process 1 of 2 (the steps are not compiled).
  real = sources.process_shares
  seen = []

  def as_process_1_of_2(splits, index, count):
    seen.append((index, count))
    return real(splits, 1, 2)
  monkeypatch.setattr(sources, "process_shares", as_process_1_of_2)
  monkeypatch.setattr(parallel, "compile_steps", lambda *a, **kw: None)
  cfg = tiny_config("mlp", model_input_shape=(28, 28, 1), batch_size=4, eval_batch_size=4)
  s = setup_lib.setup(cfg, train, None, test)
  assert seen == [(0, 1)]
  # The train split stays whole: each process reads its part of every global batch
  # (input_pipeline.TrainBatch), so the batches do not depend on the process count.
  assert s.train_data is train
  np.testing.assert_array_equal(s.test_data.images, test.images[3:])
  assert s.steps_per_epoch == 10 // 4
