"""Training-step, loss and evaluation lines that a one-token bug could change unseen.

Written against the surviving mutants of `benchmarks/mutation.py` (docs/testing.md): each
number here is worked out in numpy from the model's own weights and the documented key
derivation, never taken from the function under test. Models are one Dense layer on 2x2
images, so each test compiles one or two tiny programs.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from cnn_jax.training import losses, steps
from cnn_jax.training.train_state import create_train_state


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


# ------------------------------------------------------------------- losses
def test_losses_by_hand_on_a_batch():
  logits = np.array([[2.0, 1.0, 0.1, -1.0], [0.0, 0.5, 3.0, 0.2], [1.0, 0.5, 0.0, 2.0]],
                    np.float32)
  labels = np.array([0, 1, 1])
  lp = _log_softmax(logits)
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), -lp[np.arange(3), labels],
                             rtol=1e-6)
  # Smoothing 0.2 over 4 classes: 0.8 on the label + 0.05 everywhere.
  target = 0.8 * np.eye(4)[labels] + 0.05
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, 0.2),
                             -(target * lp).sum(-1), rtol=1e-6)
  probs = np.array([[0.5, 0.5, 0, 0], [0, 0, 1, 0], [0.25, 0.25, 0.25, 0.25]], np.float32)
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, probs), -(probs * lp).sum(-1),
                             rtol=1e-6)
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, probs, 0.4),
                             -((0.6 * probs + 0.1) * lp).sum(-1), rtol=1e-6)
  # Leading axes are kept: (2, 3) positions of 4 classes, the classes on the last axis.
  z = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
  y = np.array([[0, 3, 1], [2, 2, 0]])
  want = -np.take_along_axis(_log_softmax(z), y[..., None], -1)[..., 0]
  np.testing.assert_allclose(losses.cross_entropy(z, y), want, rtol=1e-6)
  # Top-k per example: the labels rank 1st, 2nd and 3rd.
  assert losses.topk_correct(logits, labels, 1).tolist() == [1.0, 0.0, 0.0]
  assert losses.topk_correct(logits, labels, 2).tolist() == [1.0, 1.0, 0.0]
  assert losses.topk_correct(logits, labels, 3).tolist() == [1.0, 1.0, 1.0]
  # k beyond the number of classes is every class: always correct.
  assert losses.topk_correct(logits, labels, 10).tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------- train_step
class _Lin(nn.Module):
  """Dense(6) on the flattened image; in train mode plus uniform noise drawn with the
  dropout key, so the key the step hands the model shows in the loss."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.Dense(6, name="head")(x.reshape((x.shape[0], -1)))
    return y + jax.random.uniform(self.make_rng("dropout"), y.shape) if train else y


def _keys(state):
  """The documented per-step keys: split(fold_in(rng, step)) -> (augmentation, dropout)."""
  aug, drop = jax.random.split(jax.random.fold_in(state.rng, state.step))
  return aug, drop


def test_train_step_by_hand_with_preprocess_mix_and_smoothing():
  """One SGD step: preprocess with the augmentation key in train mode, a mix with
  fold_in(augmentation key, MIX_STREAM) and its soft labels in the loss (smoothed), the
  dropout key in the model, accuracies on the hard labels, grad_norm, step + 1."""
  lr, smoothing = 0.5, 0.1
  state = create_train_state(_Lin(), optax.sgd(lr), jax.random.key(3), (2, 2, 1))
  state = state.replace(step=7)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 2, 2, 1)).astype(np.float32)
  labels = np.array([2, 0, 5], np.int32)
  soft = rng.dirichlet(np.ones(6), 3).astype(np.float32)

  def preprocess(x, key, train):
    assert train is True
    return 2.0 * x + jax.random.uniform(key, ())

  def mix(x, y, key):
    return x - jax.random.uniform(key, ()), jnp.asarray(soft)

  new, m = jax.jit(lambda s, b: steps.train_step(s, b, preprocess=preprocess, mix=mix,
                                                 label_smoothing=smoothing))(
      state, {"image": images, "label": labels})
  aug, drop = _keys(state)
  x = (2.0 * images + float(jax.random.uniform(aug, ()))
       - float(jax.random.uniform(jax.random.fold_in(aug, 0x6D6978), ()))).reshape(3, 4)
  w = np.asarray(state.params["head"]["kernel"], np.float64)
  b = np.asarray(state.params["head"]["bias"], np.float64)
  # The model's train-mode noise under the documented dropout key (noise does not depend
  # on the weights, so the gradient below is x^T dz as for a plain Dense layer).
  noise = (_Lin().apply({"params": state.params}, x.reshape(3, 2, 2, 1), train=True,
                        rngs={"dropout": drop}) - (x @ w + b))
  logits = x @ w + b + np.asarray(noise, np.float64)
  target = (1 - smoothing) * soft + smoothing / 6
  lp = _log_softmax(logits)
  assert float(m["loss"]) == pytest.approx(-(target * lp).sum(-1).mean(), rel=1e-5)
  order = np.argsort(-logits, -1)
  assert float(m["accuracy"]) == pytest.approx((order[:, 0] == labels).mean())
  assert float(m["top5_accuracy"]) == pytest.approx((order[:, :5] == labels[:, None]).any(-1).mean())
  assert 0 < float(m["top5_accuracy"]) and float(m["accuracy"]) < 1  # both counts matter
  dz = (np.exp(lp) - target) / 3  # d mean CE / d logits
  gw, gb = x.T @ dz, dz.sum(0)
  np.testing.assert_allclose(new.params["head"]["kernel"], w - lr * gw, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.params["head"]["bias"], b - lr * gb, rtol=1e-5, atol=1e-6)
  assert float(m["grad_norm"]) == pytest.approx(np.sqrt((gw ** 2).sum() + (gb ** 2).sum()),
                                                rel=1e-5)
  assert int(new.step) == 8 and "skipped" not in m and "main_loss" not in m
  with pytest.raises(ValueError, match="custom loss_fn"):
    steps.train_step(state, {"image": images, "label": labels}, mix=mix,
                     loss_fn=lambda out, b: (0.0, {}))


class _BNNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
    x = nn.Dense(4, name="head")(x)
    return nn.BatchNorm(use_running_average=not train, name="bn2")(x)


def test_train_step_batch_stats_frozen_and_skipped():
  """Batch statistics move in train mode, except under a frozen prefix; a step whose
  gradient is not finite (apply_if_finite) keeps params and statistics: skipped = 1."""
  state = create_train_state(_BNNet(), optax.apply_if_finite(optax.sgd(0.1), 10),
                             jax.random.key(0), (2, 2, 1))
  step = jax.jit(lambda s, b: steps.train_step(s, b, frozen=("bn1",)))
  images = np.random.default_rng(1).normal(3.0, 1.0, size=(4, 2, 2, 1)).astype(np.float32)
  labels = np.array([0, 1, 2, 3], np.int32)
  new, m = step(state, {"image": images, "label": labels})
  assert float(m["skipped"]) == 0.0
  for k in ("mean", "var"):
    np.testing.assert_array_equal(new.batch_stats["bn1"][k], state.batch_stats["bn1"][k])
  assert not np.allclose(new.batch_stats["bn2"]["var"], state.batch_stats["bn2"]["var"])
  assert not np.allclose(new.params["head"]["kernel"], state.params["head"]["kernel"])
  bad = images.copy()
  bad[0, 0, 0, 0] = np.nan
  same, m = step(new, {"image": bad, "label": labels})
  assert float(m["skipped"]) == 1.0
  for a, b in zip(jax.tree_util.tree_leaves((same.params, same.batch_stats)),
                  jax.tree_util.tree_leaves((new.params, new.batch_stats))):
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------- eval
def test_eval_step_and_flip_by_hand():
  """Sums over the real rows (mask) of loss, top-1 and top-5; flip averages the logits of
  the image and its mirror (width reversed); preprocess runs in eval mode."""
  state = create_train_state(_Lin(), optax.sgd(0.1), jax.random.key(1), (2, 2, 1))
  rng = np.random.default_rng(2)
  images = rng.normal(size=(3, 2, 2, 1)).astype(np.float32)
  labels = np.array([1, 4, 0], np.int32)
  mask = np.array([1.0, 1.0, 0.0], np.float32)
  w = np.asarray(state.params["head"]["kernel"], np.float64)
  b = np.asarray(state.params["head"]["bias"], np.float64)

  def preprocess(x, key, train):
    assert train is False
    return x + 1.0

  x = images + 1.0
  logits = 0.5 * (x.reshape(3, 4) @ w + x[:, :, ::-1].reshape(3, 4) @ w) + b
  assert not np.allclose(logits, x.reshape(3, 4) @ w + b)  # the mirror changes the logits
  got = jax.jit(lambda s, bt: steps.eval_step(s, bt, preprocess=preprocess, flip=True))(
      state, {"image": images, "label": labels, "mask": mask})
  ce = -_log_softmax(logits)[np.arange(3), labels]
  order = np.argsort(-logits, -1)
  assert float(got["loss"]) == pytest.approx((ce * mask).sum(), rel=1e-5)
  assert float(got["correct"]) == ((order[:, 0] == labels) * mask).sum()
  assert float(got["top5_correct"]) == ((order[:, :5] == labels[:, None]).any(-1) * mask).sum()
  assert float(got["count"]) == 2.0
  # No mask: every row counts; no flip: the image alone.
  got = jax.jit(steps.eval_step)(state, {"image": images, "label": labels})
  logits = images.reshape(3, 4) @ w + b
  assert float(got["loss"]) == pytest.approx(-_log_softmax(logits)[np.arange(3), labels].sum(),
                                             rel=1e-5)
  assert float(got["count"]) == 3.0


def test_topk_correct_over_any_leading_shape():
  """(2, 3, 4) logits: the classes are the last axis, k is capped at 4 classes, each of the
  six positions ranked by hand."""
  logits = np.array([[[4, 3, 2, 1], [1, 2, 3, 4], [2, 4, 1, 3]],
                     [[1, 4, 3, 2], [3, 1, 4, 2], [4, 1, 2, 3]]], np.float32)
  labels = np.array([[1, 3, 2], [0, 2, 0]])
  # ranks of the labels: [[2, 1, 4], [4, 1, 1]]
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 1), [[0, 1, 0], [0, 1, 1]])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 2), [[1, 1, 0], [0, 1, 1]])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 3), [[1, 1, 0], [0, 1, 1]])
  np.testing.assert_array_equal(losses.topk_correct(logits, labels, 5), np.ones((2, 3)))


def test_top1_top5_and_defaults_by_hand():
  """Seven classes, so top-1 / top-2 and top-4 / top-5 / top-6 all differ on this batch:
  the train step's accuracy and top-5 accuracy and the eval step's counts are checked
  against a numpy ranking. Without label_smoothing the loss is plain cross entropy;
  eval_logits without `flip` scores the image alone."""
  import types
  logits = np.array([[7, 6, 5, 4, 3, 2, 1],     # label 0: rank 1
                     [7, 6, 5, 4, 3, 2, 1],     # label 1: rank 2
                     [1, 2, 3, 4, 5, 7, 6],     # label 2: rank 5
                     [1, 2, 3, 4, 5, 7, 6],     # label 3: rank 4
                     [7, 6, 5, 4, 3, 2, 1]],    # label 5: rank 6
                    np.float32)
  labels = np.array([0, 1, 2, 3, 5])
  rank = (np.argsort(-logits, axis=1) == labels[:, None]).argmax(1) + 1
  assert rank.tolist() == [1, 2, 5, 4, 6]
  loss, m = steps.classification_loss(jnp.asarray(logits), {"label": jnp.asarray(labels)})
  assert float(m["accuracy"]) == pytest.approx(0.2)
  assert float(m["top5_accuracy"]) == pytest.approx(0.8)
  assert float(loss) == pytest.approx(-_log_softmax(logits)[np.arange(5), labels].mean(),
                                      rel=1e-6)
  state = types.SimpleNamespace(apply_fn=lambda v, x, train: x.reshape(x.shape[0], -1),
                                params={}, batch_stats={})
  sums = steps.eval_step(state, {"image": jnp.asarray(logits), "label": jnp.asarray(labels)})
  assert (float(sums["correct"]), float(sums["top5_correct"]), float(sums["count"])) == \
      (1.0, 4.0, 5.0)
  np.testing.assert_array_equal(
      steps.eval_logits(lambda v, x, train: x.reshape(x.shape[0], -1), {},
                        jnp.asarray(logits)[:, None, :, None]), logits)


# ------------------------------------------------------------------- evaluation
def _stub_setup(task="classification", test_data=None):
  """A Setup stand-in whose eval step sums made-up per-example numbers of the labels, so
  evaluate's own arithmetic (batches, sums, means) is what the test sees."""
  import types
  from cnn_jax.config import base_config
  config = base_config()
  config.task, config.eval_batch_size, config.dataset.pp_eval = task, 4, ""

  def eval_step(state, batch):
    m, y = batch["mask"], batch["label"].astype(np.float64)
    if task == "localization":
      return {"loss": (y * m).sum(), "correct": m.sum(), "iou": (0.5 * m).sum(),
              "iou50": 0.0, "count": m.sum(), "no_object": 1.0}
    return {"loss": (y * m).sum(), "correct": ((y % 2 == 0) * m).sum(),
            "top5_correct": ((y < 5) * m).sum(), "count": m.sum()}

  return types.SimpleNamespace(config=config, batch_options=lambda: {}, test_data=test_data,
                               compiled=types.SimpleNamespace(eval_step=eval_step,
                                                              put_batch=lambda b: b))


def test_evaluate_means_over_every_example_by_hand(monkeypatch):
  """10 examples in batches of 4 (3 batches, the last with 2 real rows): the means are
  over exactly the 10; one example divides by 1; localization gets its own means. The
  batch count a process proposes to the others (all run the largest) is ceil(10 / 4)."""
  from cnn_jax import parallel
  from cnn_jax.training import evaluation
  from helpers import random_split
  proposed = []
  monkeypatch.setattr(parallel, "agree", lambda value, reduce: proposed.append(value) or value)
  data = random_split(10, shape=(2, 2, 1))
  y = data.labels.astype(np.float64)
  got = evaluation.evaluate(_stub_setup(), None, data)
  assert proposed == [3] and isinstance(proposed[0], int)
  assert got == pytest.approx({"loss": y.mean(), "accuracy": (y % 2 == 0).mean(),
                               "top5_accuracy": (y < 5).mean(), "num_examples": 10.0})
  one = random_split(1, shape=(2, 2, 1), seed=5)
  assert one.labels[0] > 0
  got = evaluation.evaluate(_stub_setup(), None, one)
  assert got["loss"] == float(one.labels[0]) and got["num_examples"] == 1.0
  with pytest.raises(ValueError, match="nothing to evaluate: the split has 0 examples"):
    evaluation.evaluate(_stub_setup(), None, random_split(0, shape=(2, 2, 1)))
  got = evaluation.evaluate(_stub_setup("localization"), None, data)
  assert got["loss"] == pytest.approx(y.mean()) and got["mean_iou"] == pytest.approx(0.5)
  assert got["num_without_object"] == 3.0  # one per batch from the stub
  assert evaluation.describe({"loss": 0.5, "accuracy": 0.25, "mAP": 0.125, "num_examples": 7,
                              "lr": 3.0}) == "loss 0.5000 accuracy 0.2500 mAP 0.1250 (7 examples)"
  assert evaluation.describe({"mean_iou": 1.0}) == "mean_iou 1.0000 (0 examples)"


def test_evaluate_and_restore_dispatch_box_tasks(monkeypatch):
  from cnn_jax.detection import task as detection_task
  from cnn_jax.training import evaluation
  monkeypatch.setattr(detection_task, "evaluate", lambda s, state, data: {"mAP": 0.5})
  monkeypatch.setattr(detection_task, "restore_backbone", lambda state, v: ("backbone", v))
  s = _stub_setup("detection")
  assert evaluation.evaluate(s, None, None) == {"mAP": 0.5}
  assert evaluation.restore_weights(s, None, {"params": 1}) == ("backbone", {"params": 1})


def _plain_state():
  from cnn_jax.training.train_state import TrainState
  params = {"a": {"k": jnp.zeros((2, 2))}, "b": {"k": jnp.zeros(3)}, "c": {"k": jnp.zeros(1)},
            "d": {"k": jnp.zeros(1)}}
  return TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1),
                           batch_stats={"bn": {"mean": jnp.zeros(2)}}, rng=jax.random.key(0))


def test_restore_weights_checks_every_variable():
  from cnn_jax.training import evaluation
  s = _stub_setup()
  s.config.model = "m"
  state = _plain_state()
  tail = ("). Restore from a run of the same model; for a new head use "
          "cnn_jax.transfer.replace_head")
  with pytest.raises(ValueError) as e:
    evaluation.restore_weights(s, state, {"params": {}})
  assert str(e.value) == ("config.restore_from=restore_from: its weights do not fit model 'm' "
                          "(missing there: params/a/k, params/b/k, params/c/k ...") + tail
  odd = {"params": {"a": {"k": np.ones((3, 3))}, "b": {"k": np.ones(4)}, "c": {"k": np.ones(2)},
                    "d": {"k": np.ones(1)}, "e": {"k": np.ones(1)}},
         "batch_stats": {"bn": {"mean": np.ones(2)}}}
  with pytest.raises(ValueError) as e:
    evaluation.restore_weights(s, state, odd, source="/runs/x")
  assert str(e.value) == (
      "config.restore_from=/runs/x: its weights do not fit model 'm' (not in this model: "
      "params/e/k; other shapes: params/a/k (3, 3) -> (2, 2), params/b/k (4,) -> (3,), "
      "params/c/k (2,) -> (1,)") + tail
  good = jax.tree_util.tree_map(lambda a: np.ones(a.shape), {"params": state.params,
                                                             "batch_stats": state.batch_stats})
  new = evaluation.restore_weights(s, state, good)
  assert float(new.params["a"]["k"][0, 0]) == 1.0 and float(new.batch_stats["bn"]["mean"][0]) == 1.0
  kept = evaluation.with_variables(state, {"params": good["params"]})
  assert kept.batch_stats is state.batch_stats and kept.params is good["params"]


def _head_state(head_kernel=(1, 1, 4, 10)):
  from cnn_jax.training.train_state import TrainState
  params = {"body": {"kernel": jnp.zeros((3, 3, 1, 4))},
            "head": {"kernel": jnp.full(head_kernel, 7.0), "bias": jnp.full((10,), 7.0)}}
  return TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1),
                           batch_stats={"bn": {"mean": jnp.zeros(4)}}, rng=jax.random.key(0))


def _source(**shapes):
  """Ones in the shapes of _head_state's variables, some replaced by `shapes`
  ("params/head/bias": (5,)); a shape of None drops the variable, new paths are added."""
  from flax import traverse_util
  flat = {"params/body/kernel": (3, 3, 1, 4), "params/head/kernel": (1, 1, 4, 10),
          "params/head/bias": (10,), "batch_stats/bn/mean": (4,)}
  flat.update(shapes)
  return traverse_util.unflatten_dict({k: np.ones(v) for k, v in flat.items() if v},
                                      sep="/")


def test_restore_weights_replaces_only_a_classifier_head(caplog):
  """A source of another class count: every variable restored but the head's, which keeps
  its fresh init, and the log says so. Anything more than the head's output width (a body
  shape, an inner head axis, a rank, a batch statistic, a missing or extra variable) is
  refused with the list of what differs."""
  from cnn_jax.training import evaluation
  s = _stub_setup()
  s.config.model = "m"
  state = _head_state()
  with caplog.at_level("INFO", logger="cnn_jax"):
    new = evaluation.restore_weights(
        s, state, _source(**{"params/head/kernel": (1, 1, 4, 5), "params/head/bias": (5,)}),
        source="/runs/x")
  np.testing.assert_array_equal(new.params["body"]["kernel"], 1.0)
  np.testing.assert_array_equal(new.batch_stats["bn"]["mean"], 1.0)
  np.testing.assert_array_equal(new.params["head"]["kernel"], 7.0)
  np.testing.assert_array_equal(new.params["head"]["bias"], 7.0)
  assert new.params["head"]["kernel"].shape == (1, 1, 4, 10)
  assert ("restore_from /runs/x: head 'head' keeps its fresh init (params/head/kernel "
          "(1, 1, 4, 5) -> (1, 1, 4, 10), params/head/bias (5,) -> (10,)); every other "
          "variable restored") in caplog.text
  head = {"params/head/kernel": (1, 1, 4, 5), "params/head/bias": (5,)}
  refused = {
      "other shapes: params/body/kernel (3, 3, 1, 8) -> (3, 3, 1, 4), params/head/kernel":
          {**head, "params/body/kernel": (3, 3, 1, 8)},
      "other shapes: params/head/kernel (1, 1, 8, 5) -> (1, 1, 4, 10)":
          {**head, "params/head/kernel": (1, 1, 8, 5)},
      "other shapes: params/head/kernel (4, 5) -> (1, 1, 4, 10)":
          {**head, "params/head/kernel": (4, 5)},
      "batch_stats/bn/mean (5,) -> (4,)": {**head, "batch_stats/bn/mean": (5,)},
      "missing there: params/body/kernel; other shapes": {**head, "params/body/kernel": None},
      "(not in this model: params/extra/w; other shapes": {**head, "params/extra/w": (2,)},
  }
  for message, shapes in refused.items():
    with pytest.raises(ValueError, match="do not fit model 'm'") as e:
      evaluation.restore_weights(s, state, _source(**shapes))
    assert message in str(e.value), (message, str(e.value))
  # At most three names per kind, then " ...": three missing show all three, four show three.
  with pytest.raises(ValueError) as e:
    evaluation.restore_weights(s, state, {"params": {}, "batch_stats": {"bn": {"mean": np.ones(4)}}})
  assert "(missing there: params/body/kernel, params/head/kernel, params/head/bias). " in \
      str(e.value)
  with pytest.raises(ValueError) as e:
    evaluation.restore_weights(s, state, {"params": {}})
  assert "(missing there: params/body/kernel, params/head/kernel, params/head/bias ...). " in \
      str(e.value)


def test_restore_source_reads_weight_files_and_checkpoints(monkeypatch):
  from cnn_jax import checkpoint
  from cnn_jax.training import evaluation
  from cnn_jax.weights import files
  monkeypatch.setattr(files, "load_weights_file", lambda path, model: {"file": (path, model)})
  monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path: (
      {"params": {"w": path}}, {"config": {"model": "resnet18"}}, None))
  config = ConfigDict({"restore_from": "/w/resnet18-f37072fd.pth", "model": "resnet18"})
  assert evaluation.restore_source(config) == (
      {"file": ("/w/resnet18-f37072fd.pth", "resnet18")},
      "/w/resnet18-f37072fd.pth (weights file)")
  config.restore_from = "/runs/a/checkpoints/7"
  variables, what = evaluation.restore_source(config)
  assert variables["params"] == {"w": "/runs/a/checkpoints/7"}
  assert what == "/runs/a/checkpoints/7 (model 'resnet18')"


def test_best_state_and_test_report(monkeypatch, caplog):
  import types
  from cnn_jax import checkpoint
  from cnn_jax.training import evaluation
  from helpers import random_split
  state = _plain_state()
  none = types.SimpleNamespace(best=None)
  assert evaluation.best_state(None, state, none) == (None, None)
  no_step = types.SimpleNamespace(best=types.SimpleNamespace(best_step=lambda: None))
  assert evaluation.best_state(None, state, no_step) == (None, None)
  ckpts = types.SimpleNamespace(best=types.SimpleNamespace(best_step=lambda: 7))
  monkeypatch.setattr(checkpoint, "restore", lambda mngr, template, step: (("best", step), {}))
  assert evaluation.best_state(None, state, ckpts) == (("best", 7), 7)

  def broken(mngr, template, step):
    raise OSError("unreadable")
  monkeypatch.setattr(checkpoint, "restore", broken)
  assert evaluation.best_state(None, state, ckpts) == (None, None)
  assert "could not read the best checkpoint (step 7)" in caplog.text
  # test_report: nothing without test data; the final state's and the best's metrics.
  assert evaluation.test_report(_stub_setup(), state, ckpts) == {}
  data = random_split(6, shape=(2, 2, 1))
  s = _stub_setup(test_data=data)
  report = evaluation.test_report(s, state, ckpts)  # the best is unreadable: test only
  assert set(report) == {"test"} and report["test"]["num_examples"] == 6.0
  monkeypatch.setattr(checkpoint, "restore", lambda mngr, template, step: (template, {}))
  report = evaluation.test_report(s, state, ckpts)
  assert report["test_best"] == {**report["test"], "step": 7}


# ------------------------------------------------------------------- optimizers
G1 = {"kernel": np.array([[0.5, -1.0], [2.0, 0.25]], np.float32), "bias": np.array([1.0, -0.5], np.float32)}
G2 = {"kernel": np.array([[-0.5, 0.5], [1.0, 1.5]], np.float32), "bias": np.array([0.25, 2.0], np.float32)}
P0 = {"kernel": np.array([[1.0, 2.0], [-1.0, 0.5]], np.float32), "bias": np.array([0.5, -1.0], np.float32)}


def _two_updates(cfg, **kw):
  from cnn_jax.training import optim
  tx, _ = optim.make_optimizer(ConfigDict(cfg), 10, 1, **kw)
  state = tx.init(P0)
  u1, state = tx.update(G1, state, P0)
  u2, _ = tx.update(G2, state, P0)
  return u1, u2


def _hand(name, g1, g2, p, lr, wd=0.0, decayed=True):
  """The first two updates of each optimizer at its documented defaults, in numpy."""
  g1, g2, p = (np.asarray(a, np.float64) for a in (g1, g2, p))
  if name == "sgd":
    return -lr * g1, -lr * g2
  if name in ("momentum", "nesterov"):
    t1, t2 = g1, g2 + 0.9 * g1
    if name == "nesterov":
      return -lr * (g1 + 0.9 * t1), -lr * (g2 + 0.9 * t2)
    return -lr * t1, -lr * t2
  if name in ("adam", "adamw"):
    b1, b2, eps = 0.9, 0.999, 1e-8
    m1, v1 = (1 - b1) * g1, (1 - b2) * g1 ** 2
    m2, v2 = b1 * m1 + (1 - b1) * g2, b2 * v1 + (1 - b2) * g2 ** 2
    u1 = m1 / (1 - b1) / (np.sqrt(v1 / (1 - b2)) + eps)
    u2 = m2 / (1 - b1 ** 2) / (np.sqrt(v2 / (1 - b2 ** 2)) + eps)
    w = wd * p if decayed else 0.0
    return -lr * (u1 + w), -lr * (u2 + w)
  if name == "rmsprop":
    n1 = 0.1 * g1 ** 2
    n2 = 0.9 * n1 + 0.1 * g2 ** 2
    return -lr * g1 / (np.sqrt(n1) + 1e-8), -lr * g2 / (np.sqrt(n2) + 1e-8)
  raise AssertionError(name)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"])
def test_optimizer_updates_by_hand_at_default_settings(name):
  """Each optimizer's first two updates with only name / learning_rate / schedule given,
  so the defaults (momentum 0.9, b1 0.9, b2 0.999, rmsprop decay 0.9 and no momentum,
  adamw weight decay on kernels only) are the ones checked."""
  cfg = {"name": name, "learning_rate": 0.1, "schedule": "constant"}
  if name == "adamw":
    cfg["weight_decay"] = 0.01
  u1, u2 = _two_updates(cfg)
  for k in ("kernel", "bias"):
    w1, w2 = _hand(name, G1[k], G2[k], P0[k], 0.1, cfg.get("weight_decay", 0.0),
                   decayed=k == "kernel")
    np.testing.assert_allclose(u1[k], w1, rtol=2e-5, atol=1e-7, err_msg=f"{name} {k} 1")
    np.testing.assert_allclose(u2[k], w2, rtol=2e-5, atol=1e-7, err_msg=f"{name} {k} 2")
  if name == "momentum":  # nesterov=True in the config makes 'momentum' Nesterov's
    u1, u2 = _two_updates({**cfg, "nesterov": True})
    np.testing.assert_allclose(u2["kernel"], _hand("nesterov", G1["kernel"], G2["kernel"],
                                                   P0["kernel"], 0.1)[1], rtol=2e-5)


def test_optimizer_wrappers_by_hand():
  """grad_clip_norm scales the gradient to that global norm; frozen prefixes get zero
  updates; skip_nonfinite drops non-finite updates however many come in a row."""
  from cnn_jax.training import optim
  norm = np.sqrt(sum((G1[k].astype(np.float64) ** 2).sum() for k in G1))
  u1, _ = _two_updates({"name": "sgd", "learning_rate": 0.1, "schedule": "constant",
                        "grad_clip_norm": 1.0})
  for k in G1:
    np.testing.assert_allclose(u1[k], -0.1 * G1[k] / norm, rtol=1e-5)
  u1, _ = _two_updates({"name": "sgd", "learning_rate": 0.1, "schedule": "constant"},
                       frozen=("bias",), params=P0)
  np.testing.assert_array_equal(u1["bias"], 0.0)
  np.testing.assert_allclose(u1["kernel"], -0.1 * G1["kernel"], rtol=1e-6)
  tx, lr = optim.make_optimizer(ConfigDict({"name": "sgd", "learning_rate": 0.1,
                                            "schedule": "constant"}), 10, 1, skip_nonfinite=True)
  update = jax.jit(tx.update)
  state = tx.init(P0)
  bad = jax.tree_util.tree_map(lambda g: np.full_like(g, np.nan), G1)
  for _ in range(70):
    u, state = update(bad, state, P0)
    np.testing.assert_array_equal(u["kernel"], 0.0)
  u, state = update(G1, state, P0)
  np.testing.assert_allclose(u["kernel"], -0.1 * G1["kernel"], rtol=1e-6)
  assert lr(0) == pytest.approx(0.1)


def test_accumulation_and_nonfinite_defaults_by_hand():
  """accumulate_steps k: one sgd update every k micro-batches, of their mean gradient, zero
  updates between (k = 2 and 3); k = 1 (or the key absent) is the plain optimizer, whose
  state a checkpoint of a run without accumulation holds (no MultiSteps wrapper). Without
  skip_nonfinite a NaN gradient is applied, not silently dropped."""
  from cnn_jax.training import optim
  base = {"name": "sgd", "learning_rate": 0.1, "schedule": "constant"}
  for k in (2, 3):
    tx, lr = optim.make_optimizer(ConfigDict({**base, "accumulate_steps": k}), 12, 1)
    update, state = jax.jit(tx.update), tx.init(P0)
    grads = [G1, G2, jax.tree_util.tree_map(lambda g: 2 * g, G1)][:k]
    for i, g in enumerate(grads):
      u, state = update(g, state, P0)
      if i < k - 1:
        np.testing.assert_array_equal(u["kernel"], 0.0, err_msg=f"k={k} micro-step {i}")
    mean = sum(g["kernel"].astype(np.float64) for g in grads) / k
    np.testing.assert_allclose(u["kernel"], -0.1 * mean, rtol=1e-5, err_msg=f"k={k}")
    assert lr(k - 1) == pytest.approx(0.1)
  for cfg in (base, {**base, "accumulate_steps": 1}):
    tx, _ = optim.make_optimizer(ConfigDict(cfg), 12, 1)
    plain = optax.sgd(lambda step: 0.1).init(P0)  # a schedule, as the config builds
    assert jax.tree_util.tree_structure(tx.init(P0)) == jax.tree_util.tree_structure(plain)
  tx, _ = optim.make_optimizer(ConfigDict(base), 12, 1)
  bad = jax.tree_util.tree_map(lambda g: np.full_like(g, np.nan), G1)
  u, _ = jax.jit(tx.update)(bad, tx.init(P0), P0)
  assert np.isnan(np.asarray(u["kernel"])).all()


def test_schedule_checks_and_keys_by_hand():
  from cnn_jax.training import optim
  base = {"learning_rate": 0.1}
  for kw, message in ((dict(decay_epochs=(4, 4)), "decay_epochs must increase"),
                      (dict(decay_epochs=(4,), decay_factors=(0.0,)), "must be positive"),
                      (dict(decay_epochs=(True,)), "they must be numbers"),
                      (dict(decay_epochs=("4",)), "they must be numbers"),
                      (dict(decay_epochs=(4,), decay_factors=(None,)), "they must be numbers")):
    with pytest.raises(ValueError, match=message):
      optim.make_schedule(ConfigDict({**base, "schedule": "piecewise", **kw}), 10, 8)
  with pytest.raises(ValueError, match="decay_rate must be > 0"):
    optim.make_schedule(ConfigDict({**base, "schedule": "exponential", "decay_rate": "0.5"}),
                        10, 8)
  # decay_rate defaults to 0.95 per epoch; piecewise keys are checked only for piecewise.
  s = optim.make_schedule(ConfigDict({**base, "schedule": "exponential"}), 10, 8)
  assert float(s(10)) == pytest.approx(0.095, rel=1e-6)
  optim.make_schedule(ConfigDict({**base, "schedule": "cosine", "decay_epochs": (5, 3)}), 10, 8)
  # A run shorter than one update still has one step to decay over.
  s = optim.make_schedule(ConfigDict({**base, "schedule": "cosine"}), 0.25, 1)
  assert float(s(0)) == pytest.approx(0.1) and float(s(1)) == pytest.approx(0.0, abs=1e-9)
  assert optim.unused_keys({"name": "sgd", "schedule": "constant"}) == {
      "momentum", "b1", "b2", "decay", "end_learning_rate", "decay_epochs", "decay_factors",
      "decay_rate"}
  assert optim.unused_keys({"name": "adamw", "schedule": "piecewise"}) == {
      "momentum", "decay", "warmup_epochs", "end_learning_rate", "decay_rate"}
  assert optim.unused_keys(ConfigDict({"name": "rmsprop"})) == {
      "b1", "b2", "end_learning_rate", "decay_epochs", "decay_factors", "decay_rate"}
  with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
    optim.make_optimizer(ConfigDict({"name": "lion", **base, "schedule": "constant"}), 10, 1)
