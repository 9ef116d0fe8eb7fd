"""A train split kept on the device (data/on_device.py) trains exactly as the host reader."""
import jax
import numpy as np
import pytest

from cnn_jax.data import input_pipeline, on_device
from cnn_jax.training import trainer
from helpers import random_split, tiny_config


def leaves_close(a, b, atol=0.0):
  return all(np.allclose(x, y, rtol=0, atol=atol) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_index_batches_are_the_host_readers_batches():
  data = random_split(100)
  host = input_pipeline.TrainBatch(data, 16, 6, seed=3, pp="")
  index = list(on_device.index_batches(data, 16, 3, steps_per_epoch=6, start_step=4, num_steps=14))
  assert len(index) == 10
  for step, b in zip(range(4, 14), index):
    np.testing.assert_array_equal(data.images[b["index"]], host(step)["image"])
    np.testing.assert_array_equal(data.labels[b["index"]], host(step)["label"])


@pytest.mark.slow  # 20 s: two trainings and a resume; the batches' equality is checked above
def test_on_device_equals_host_reader_and_resumes(tmp_path, caplog):
  train, val = random_split(256), random_split(64, seed=1)
  common = dict(augment="pad_crop(2)|flip_lr", num_epochs=2)
  host = trainer.train_and_evaluate(tiny_config(**common, **{"dataset.on_device": "never"}),
                                    str(tmp_path / "host"), train, val)
  caplog.set_level("INFO", logger="cnn_jax")
  cfg = tiny_config(**{**common, "num_epochs": 1, "dataset.on_device": "always"})
  trainer.train_and_evaluate(cfg, str(tmp_path / "dev"), train, val)
  assert "train split on the device" in caplog.text
  cfg.num_epochs = 2  # resume at the epoch boundary, on the device again
  dev = trainer.train_and_evaluate(cfg, str(tmp_path / "dev"), train, val)
  assert dev["final_step"] == host["final_step"] == 16
  # Same batches, same keys, same step: equal up to the fusion of the gather.
  assert leaves_close(dev["state"].params, host["state"].params, atol=1e-6)
  assert dev["validation"]["accuracy"] == host["validation"]["accuracy"]


def test_when_the_split_stays_on_the_host():
  data = random_split(64)
  assert on_device.use_on_device(tiny_config(), data, 1)
  for overrides, reason in [({"dataset.pp_train": "flip_lr"}, "pp_train"),
                            ({"parallel": "pmap"}, "pmap"),
                            ({"dataset.on_device_max_mb": 0}, "on_device_max_mb")]:
    cfg = tiny_config(**overrides)
    assert not on_device.use_on_device(cfg, data, 1)
    assert reason in on_device.why_not(cfg, data, 1)
    cfg.dataset.on_device = "always"  # insisting is an error that says why and what to do
    with pytest.raises(ValueError, match=f"{reason}.*on_device='auto'"):
      on_device.use_on_device(cfg, data, 1)
  assert not on_device.use_on_device(tiny_config(), data, 2)  # several processes
  with pytest.raises(ValueError, match="'auto', 'always' or 'never'"):
    on_device.use_on_device(tiny_config(**{"dataset.on_device": "yes"}), data, 1)
