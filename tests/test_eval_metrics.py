"""Evaluation's loss and top-5 over exactly the real examples of padded batches, against
numpy; test_best's metrics are the best checkpoint's own.

tests/test_training.py::test_eval_counts_every_example_once checks the count and the top-1
accuracy only: a mask dropped from the loss or the top-5 sum (padded rows counted) or a
mean over the padded batch passed it.
"""
import jax
import numpy as np
import pytest
from scipy.special import log_softmax

from cnn_jax.training import evaluation, setup
from helpers import random_split, tiny_config


def numpy_metrics(logits, labels):
  """Mean cross-entropy, top-1 and top-5 accuracy, in float64 numpy."""
  logits = np.asarray(logits, np.float64)
  loss = -log_softmax(logits, axis=-1)[np.arange(len(labels)), labels]
  top5 = np.argsort(-logits, axis=-1)[:, :5]
  return {"loss": loss.mean(), "accuracy": float((top5[:, 0] == labels).mean()),
          "top5_accuracy": float((top5 == labels[:, None]).any(-1).mean())}


def test_padded_eval_loss_and_top5_cover_exactly_the_real_examples():
  # 100 examples in batches of 48: 48 + 48 + 4 real rows, 44 rows of padding (zero images,
  # label 0) in the last batch.
  data = random_split(100, seed=3)
  s = setup.setup(tiny_config("mlp"), random_split(64), data)
  state = s.compiled.init_state(jax.random.key(0))

  def logits_of(state, images):
    x = s.preprocess(np.asarray(images), jax.random.key(0), False)
    return np.asarray(s.model.apply({"params": state.params}, x, train=False))

  # Raise class 0 on the padding's zero image to the top, so that counting a padded row
  # would change the loss, the top-1 and the top-5 sums alike.
  pad_logits = logits_of(state, np.zeros((1,) + data.images.shape[1:], np.uint8))[0]
  params = jax.tree_util.tree_map(lambda a: a, state.params)
  params["head"]["bias"] = params["head"]["bias"].at[0].add(pad_logits.max() - pad_logits[0] + 1)
  state = state.replace(params=params)
  pad_logits = logits_of(state, np.zeros((1,) + data.images.shape[1:], np.uint8))

  got = evaluation.evaluate(s, state, data)
  want = numpy_metrics(logits_of(state, data.images), data.labels)
  assert got["num_examples"] == 100
  for k in ("loss", "accuracy", "top5_accuracy"):
    assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
  # The check has teeth: the 44 padded rows, counted, would move every metric.
  padded = numpy_metrics(np.concatenate([logits_of(state, data.images),
                                         np.repeat(pad_logits, 44, 0)]),
                         np.concatenate([data.labels, np.zeros(44, np.int64)]))
  for k in ("loss", "accuracy", "top5_accuracy"):
    assert abs(padded[k] * 144 / 100 - want[k]) > 1e-3, k  # sum over 144 rows / 100
    assert abs(padded[k] - want[k]) > 1e-3, k                # mean over 144 rows
  assert 0.0 < want["accuracy"] < want["top5_accuracy"] < 1.0
