"""The training loop: determinism, overfitting, eval masking, optimizers, metrics files."""
import functools
import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from cnn_jax.data.input_pipeline import eval_batches, train_batches
from cnn_jax.data.split import Split
from cnn_jax.training import losses, optim, setup, trainer
from cnn_jax.training.metric_writers import read_metrics
from helpers import random_split, tiny_config


def leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                  jax.tree_util.tree_leaves(b)))


def test_same_seed_same_result_and_files(tmp_path):
  train, test = random_split(256), random_split(100, seed=1)
  cfg = tiny_config(num_epochs=2)
  r1 = trainer.train_and_evaluate(cfg, str(tmp_path / "a"), train, test)
  r2 = trainer.train_and_evaluate(cfg, str(tmp_path / "b"), train, test)
  assert r1["final_step"] == 2 * (256 // 32)
  assert leaves_equal(r1["state"].params, r2["state"].params)
  cfg3 = tiny_config(num_epochs=2, seed=1)
  r3 = trainer.train_and_evaluate(cfg3, str(tmp_path / "c"), train, test)
  assert not leaves_equal(r1["state"].params, r3["state"].params)
  # metrics.jsonl, TensorBoard events, config and both checkpoint kinds are written
  lines = read_metrics(str(tmp_path / "a"))
  assert any("train/loss" in l for l in lines) and any("validation/accuracy" in l for l in lines)
  assert os.listdir(tmp_path / "a" / "tensorboard")
  assert json.load(open(tmp_path / "a" / "config.json"))["model"] == "mnist_cnn"
  assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["16", "8"]
  assert os.listdir(tmp_path / "a" / "best")


def test_eval_counts_every_example_once(tmp_path):
  # 100 examples with eval batch 48: two full batches and one padded batch of 4.
  train, test = random_split(64), random_split(100, seed=3)
  r = trainer.train_and_evaluate(tiny_config(), str(tmp_path), train, test)
  assert r["validation"]["num_examples"] == 100
  # Recompute the accuracy directly, without batching or padding.
  s = setup.setup(tiny_config(), train, test)
  state = r["state"]
  x = s.preprocess(jnp.asarray(test.images), jax.random.key(0), False)
  logits = s.model.apply({"params": state.params}, x, train=False)
  acc = float(jnp.mean(jnp.argmax(logits, -1) == test.labels))
  assert r["validation"]["accuracy"] == pytest.approx(acc, abs=1e-6)


def test_overfits_a_small_batch(tmp_path):
  data = random_split(64, seed=5)
  data = Split(data.images, np.random.RandomState(0).randint(0, 10, 64).astype(np.int32), 10)
  cfg = tiny_config(num_epochs=60, batch_size=64, eval_batch_size=64, log_every_steps=60,
                    eval_every_epochs=60)  # validation once, at the end
  cfg.model_kwargs.dropout_rate = 0.0
  r = trainer.train_and_evaluate(cfg, str(tmp_path), data, data)
  assert r["validation"]["accuracy"] == 1.0  # random labels memorised


def test_learns_a_learnable_task(tmp_path, capsys, caplog):
  train, test = random_split(512), random_split(200, seed=9)
  config = tiny_config("mlp", num_epochs=3, progress_bar=True)
  with caplog.at_level(logging.INFO, logger="cnn_jax"):
    r = trainer.train_and_evaluate(config, str(tmp_path), train, test)
  assert r["validation"]["accuracy"] > 0.9
  # One line says what the run runs on; off a terminal, plain progress lines, no tqdm bar.
  start = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training ")]
  assert start == [f"training mlp on {jax.device_count()} cpu device in 1 process, "
                   "parallel=sharded, float32, batch 32 (32 per device), 48 steps (3 epochs of 16)"]
  err = capsys.readouterr().err
  assert "\r" not in err, "no tqdm bar redraws in a file"
  for epoch, step in ((1, 16), (2, 32), (3, 48)):  # each epoch's end is written
    assert re.search(rf"^step {step}/48 \| epoch {epoch}/3 \| loss \d+\.\d{{4}} \| "
                     rf"acc \d\.\d{{4}} \| \d+ img/s \| ETA \d+s$", err, re.M), err


def test_batches_fixed_shape_and_seeded():
  data = random_split(100)
  epochs = lambda **kw: list(train_batches(data, 32, seed=0, steps_per_epoch=3,
                                           num_steps=kw.pop("num_steps", 6), **kw))
  a = epochs()
  assert len(a) == 6 and all(x["image"].shape == (32, 28, 28, 1) for x in a)
  assert all(np.array_equal(x["label"], y["label"]) for x, y in zip(a, epochs()))
  assert not all(np.array_equal(x["label"], y["label"]) for x, y in zip(a[:3], a[3:]))  # reshuffled
  # An epoch covers distinct examples; the batch of a step does not depend on where reading started.
  first = np.concatenate([x["image"] for x in a[:3]]).reshape(96, -1)
  assert len({r.tobytes() for r in first}) == 96
  resumed = epochs(start_step=2)
  assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(resumed, a[2:]))
  # A process holding an example more than the others (tfds.even_splits) takes only the
  # agreed number of steps, or the others would wait in a collective forever.
  agreed = list(train_batches(random_split(96), 32, seed=0, steps_per_epoch=2, num_steps=2))
  assert len(agreed) == 2
  with pytest.raises(ValueError, match="only 3 batches"):
    list(train_batches(data, 32, seed=0, steps_per_epoch=4, num_steps=4))
  ev = list(eval_batches(data, 32))
  assert [int(x["mask"].sum()) for x in ev] == [32, 32, 32, 4]


def test_cross_entropy_and_topk_by_hand():
  logits = jnp.array([[2.0, 1.0, 0.1]])
  p = np.exp([2.0, 1.0, 0.1]) / np.exp([2.0, 1.0, 0.1]).sum()
  assert float(losses.cross_entropy(logits, jnp.array([0]))[0]) == pytest.approx(-np.log(p[0]), rel=1e-6)
  smoothed = (1 - 0.3) * np.eye(3)[0] + 0.3 / 3
  assert float(losses.cross_entropy(logits, jnp.array([0]), 0.3)[0]) == pytest.approx(
      -(smoothed * np.log(p)).sum(), rel=1e-6)
  logits = jnp.array([[0.1, 0.5, 0.2, 0.9, 0.3, 0.0, 0.8]])
  assert float(losses.topk_correct(logits, jnp.array([1]), 1)[0]) == 0.0
  assert float(losses.topk_correct(logits, jnp.array([1]), 3)[0]) == 1.0  # 0.9, 0.8, 0.5
  assert float(losses.topk_correct(logits, jnp.array([4]), 3)[0]) == 0.0


def test_schedules_by_value():
  c = ConfigDict(dict(learning_rate=0.1, schedule="warmup_cosine", warmup_epochs=1,
                      end_learning_rate=0.0))
  s = optim.make_schedule(c, steps_per_epoch=10, num_epochs=5)
  assert float(s(0)) == 0.0 and float(s(10)) == pytest.approx(0.1)
  assert float(s(30)) == pytest.approx(0.05, rel=1e-5) and float(s(50)) == pytest.approx(0.0, abs=1e-7)
  c = ConfigDict(dict(learning_rate=0.1, schedule="piecewise", decay_epochs=(2, 4),
                      decay_factors=(0.1, 0.5)))
  s = optim.make_schedule(c, 10, 5)
  assert [float(s(t)) for t in (19, 20, 39, 40)] == pytest.approx([0.1, 0.01, 0.01, 0.005])
  c = ConfigDict(dict(learning_rate=1.0, schedule="onecycle"))
  s = optim.make_schedule(c, 10, 10)
  vals = np.array([float(s(t)) for t in range(100)])
  assert vals.argmax() == 30 and vals.max() == pytest.approx(1.0, rel=1e-3) and vals[0] < 0.1
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.make_schedule(ConfigDict(dict(learning_rate=1.0, schedule="linearr")), 1, 1)
  # Warmup as long as the run: optax's "requires positive decay_steps" before; now says which keys.
  with pytest.raises(ValueError, match="warmup_epochs=3 leaves no steps.*num_epochs=1"):
    optim.make_schedule(ConfigDict(dict(learning_rate=0.1, schedule="warmup_cosine",
                                        warmup_epochs=3)), 4, 1)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_reduces_a_quadratic(name):
  c = ConfigDict(dict(name=name, learning_rate=0.05, schedule="constant", momentum=0.9,
                      weight_decay=1e-4, nesterov=False, b1=0.9, b2=0.999, decay=0.9))
  tx, _ = optim.make_optimizer(c, 10, 1)
  params = {"w": jnp.ones((3, 3)), "b": jnp.ones(3)}
  loss = lambda p: sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(p))
  state = tx.init(params)
  start = loss(params)
  for _ in range(20):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert loss(params) < 0.5 * start


def test_sgd_weight_decay_is_l2_on_kernels_only():
  c = ConfigDict(dict(name="sgd", learning_rate=0.1, schedule="constant", weight_decay=0.5))
  tx, _ = optim.make_optimizer(c, 1, 1)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5)  # -lr * wd * w
  np.testing.assert_allclose(updates["bias"], 0.0)


def test_gradient_accumulation_equals_big_batch(tmp_path):
  train = random_split(64)
  big = tiny_config("mlp", batch_size=64, eval_batch_size=64)
  acc = tiny_config("mlp", batch_size=16, eval_batch_size=64)
  acc.optimizer.accumulate_steps = 4
  big.optimizer.name = acc.optimizer.name = "sgd"
  big.optimizer.learning_rate = acc.optimizer.learning_rate = 0.1
  rb = trainer.train_and_evaluate(big, str(tmp_path / "b"), train, train)
  # The same 64 examples in 4 micro-batches of 16: MultiSteps averages their gradients.
  ra = trainer.train_and_evaluate(acc, str(tmp_path / "a"), train, train)
  for x, y in zip(jax.tree_util.tree_leaves(rb["state"].params),
                  jax.tree_util.tree_leaves(ra["state"].params)):
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_eval_batches_can_pad_to_an_agreed_count():
  data = random_split(10)
  batches = list(eval_batches(data, 4, num_batches=5))
  assert [int(b["mask"].sum()) for b in batches] == [4, 4, 2, 0, 0]
  assert all(b["image"].shape == (4, 28, 28, 1) for b in batches)


@pytest.mark.slow  # 10 s of training: in the slow run to keep the default under 8 min
def test_accumulation_schedule_counts_updates_not_micro_steps():
  """Cosine over 2 epochs of 40 micro-steps with k=4: 20 updates, from the peak down to 0.

  MultiSteps advances the inner schedule once per update; built over micro-steps, the
  last update used to apply 0.92 of the peak rate instead of about 0.
  """
  cfg = ConfigDict({"name": "sgd", "learning_rate": 1.0, "schedule": "cosine",
                    "accumulate_steps": 4})
  tx, lr_at = optim.make_optimizer(cfg, steps_per_epoch=40, num_epochs=2)
  params = jnp.zeros(())
  state = tx.init(params)
  applied = []
  for step in range(80):
    updates, state = tx.update(jnp.ones(()), state, params)
    if step % 4 == 3:  # every 4th micro-step applies the averaged gradient
      applied.append((step, -float(updates)))
  assert len(applied) == 20
  expected = [0.5 * (1 + np.cos(np.pi * u / 20)) for u in range(20)]
  np.testing.assert_allclose([a for _, a in applied], expected, atol=1e-6)
  assert applied[-1][1] < 0.01
  # What the loop logs is the rate the update applied.
  np.testing.assert_allclose([lr_at(step) for step, _ in applied], expected, atol=1e-6)


def test_logged_train_means_cover_every_step(tmp_path):
  """A checkpoint step between log steps must not drop steps from the next logged mean."""
  train = random_split(256)
  cfg = tiny_config("mlp", num_epochs=1, log_every_steps=4, checkpoint_every_steps=3)
  cfg.optimizer.learning_rate = 0.0  # losses then depend on the batch only
  r = trainer.train_and_evaluate(cfg, str(tmp_path), train, train)
  lines = [l for l in read_metrics(str(tmp_path)) if "train/loss" in l]
  assert [l["step"] for l in lines] == [4, 8]
  assert [l["train/steps"] for l in lines] == [4, 4]
  # The mean of each interval's per-step losses, recomputed batch by batch.
  s = setup.setup(cfg, train, train)
  state = s.compiled.init_state(jax.random.key(cfg.seed))
  per_step = []
  for batch in train_batches(train, 32, cfg.seed, steps_per_epoch=8, num_steps=8):
    state, m = s.compiled.train_step(state, s.compiled.put_batch(batch))
    per_step.append(float(m["loss"]))
  np.testing.assert_allclose([l["train/loss"] for l in lines],
                             [np.mean(per_step[:4]), np.mean(per_step[4:8])], rtol=1e-5)
  assert r["final_step"] == 8


def test_matmul_precision_reaches_the_compiled_step():
  cfg = tiny_config("mlp", matmul_precision="highest")
  s = setup.setup(cfg, random_split(64), random_split(16))
  state = s.compiled.init_state(jax.random.key(0))
  batch = s.compiled.put_batch(next(train_batches(random_split(64), 32, 0, steps_per_epoch=2, num_steps=2)))
  text = s.compiled.train_step.lower(state, batch).as_text()
  assert "HIGHEST" in text
  cfg = tiny_config("mlp")  # default: XLA's choice, no precision attribute
  s = setup.setup(cfg, random_split(64), random_split(16))
  state = s.compiled.init_state(jax.random.key(0))
  assert "HIGHEST" not in s.compiled.train_step.lower(state, batch).as_text()
  with pytest.raises(ValueError, match="matmul_precision must be one of"):
    setup.setup(tiny_config(matmul_precision="tf32"), random_split(64), random_split(16))


def test_deterministic_asks_xla_before_the_backend_starts(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  setup.request_determinism(tiny_config(deterministic=True))
  assert setup.DETERMINISTIC_FLAG in os.environ["XLA_FLAGS"]
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(ValueError, match="xla_gpu_deterministic_ops"):
    setup.check_determinism(tiny_config(deterministic=True))
  setup.check_determinism(tiny_config(deterministic=False))


def test_pmap_batches_are_put_on_the_devices():
  from cnn_jax import parallel
  c = parallel.compile_steps("pmap", lambda r: None, lambda s, b, axis_name: (s, {}),
                             lambda s, b, axis_name: {})
  out = c.put_batch({"image": np.zeros((8, 2, 2, 1), np.uint8)})["image"]
  assert isinstance(out, jax.Array)  # the copy has started; it used to stay in numpy
  assert out.shape == (jax.local_device_count(), 8 // jax.local_device_count(), 2, 2, 1)
  assert {s.device for s in out.addressable_shards} == set(jax.local_devices())


def test_aux_logits_train_with_weight_0_3():
  """Auxiliary classifiers add 0.3 x their cross entropy (GoogLeNet, Szegedy et al. 2015)."""
  import flax.linen as nn
  from cnn_jax import models
  from cnn_jax.training import steps
  from cnn_jax.training.train_state import create_train_state

  class AuxNet(nn.Module):  # GoogLeNet's output convention: a tuple in train mode only
    @nn.compact
    def __call__(self, x, train=False):
      x = x.reshape((x.shape[0], -1))
      logits = nn.Dense(5, name="head")(x)
      aux = (nn.Dense(5, name="aux1")(x), nn.Dense(5, name="aux2")(x))
      return (logits, *aux) if train else logits

  model = AuxNet()
  state = create_train_state(model, optax.sgd(0.0), jax.random.key(0), (4, 4, 1))
  batch = {"image": jnp.asarray(np.random.RandomState(0).normal(size=(6, 4, 4, 1)), jnp.float32),
           "label": jnp.asarray([1, 3, 0, 4, 2, 2])}
  _, m = jax.jit(steps.train_step)(state, batch)
  outs = model.apply({"params": state.params}, batch["image"], train=True)
  ce = [float(losses.cross_entropy(o, batch["label"]).mean()) for o in outs]
  assert float(m["main_loss"]) == pytest.approx(ce[0], rel=1e-6)
  assert float(m["loss"]) == pytest.approx(ce[0] + 0.3 * (ce[1] + ce[2]), rel=1e-6)
  # The zoo's GoogLeNet with aux heads goes through the same step (it used to crash).
  g = models.get_model("googlenet", num_classes=5, aux_logits=True)
  gstate = jax.eval_shape(lambda r: create_train_state(g, optax.sgd(0.1), r, (224, 224, 3)),
                          jax.random.key(0))
  gbatch = {"image": jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32),
            "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
  _, gm = jax.eval_shape(steps.train_step, gstate, gbatch)
  assert gm["loss"].shape == () and "main_loss" in gm


def test_metric_writer_does_not_import_torch(tmp_path):
  """tensorboardX imports torch whenever it is installed (1.3-2.4 s of every run's
  start-up); the writer hides it. Run in a fresh process: this one may have torch."""
  import subprocess
  import sys
  code = ("import sys; from cnn_jax.training.metric_writers import MetricWriter; "
          f"w = MetricWriter({str(tmp_path)!r}); w.write(1, {{'loss': 1.0}}, 'train'); w.close(); "
          "print('torch' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
