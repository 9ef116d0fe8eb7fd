"""Transfer learning: new heads, frozen parameters and BN statistics, and a localizer
trained on synthetic shapes."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from cnn_jax import detection, models, transfer
from cnn_jax.data import synthetic
from cnn_jax.training import steps
from cnn_jax.training.train_state import TrainState


def flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


@pytest.fixture(scope="module")
def resnet20():
  model = models.get_model("resnet20", num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  # Non-trivial statistics, so "unchanged" means something.
  variables["batch_stats"] = jax.tree_util.tree_map(
      lambda s: s + 0.1, variables["batch_stats"])
  return model, variables


def test_replace_head_keeps_backbone(resnet20):
  model, variables = resnet20
  new_model, new_vars = transfer.replace_head(model, variables, 4, jax.random.key(1))
  assert new_model.num_classes == 4
  assert new_vars["params"]["head"]["kernel"].shape == (64, 4)
  assert not np.any(new_vars["params"]["head"]["bias"])
  old, new = flat(variables), flat(new_vars)
  assert set(old) == set(new)
  for k in old:
    if "/head/" not in k:
      np.testing.assert_array_equal(new[k], old[k], err_msg=k)
  out = new_model.apply(new_vars, jnp.ones((2, 32, 32, 3)), train=False)
  assert out.shape == (2, 4)


@pytest.mark.parametrize("name", models.names())
def test_replace_head_on_every_registered_model(name):
  """Every zoo classifier is named `head`, so replace_head works on all of them.

  Variables are zeros of the abstract shapes (np.zeros does not touch the memory of a
  138M-parameter VGG); everything but the head must come back as the very same array.
  """
  model = models.get_model(name)
  shape = models.input_shape(name)
  abstract = models.abstract_variables(model, shape)
  variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  new_model, new_vars = transfer.replace_head(model, variables, 3, jax.random.key(1))
  assert new_model.num_classes == 3
  head = new_vars["params"]["head"]
  assert head["kernel"].shape[-1] == 3 and np.any(head["kernel"])
  if name != "airbench":  # airbench's head has no bias, as in airbench94
    assert head["bias"].shape == (3,) and not np.any(head["bias"])
  old, new = flat(variables), flat(new_vars)
  assert set(old) == set(new)
  for k in old:
    if not k.startswith("params/head/"):
      assert new[k] is old[k], k
  out = jax.eval_shape(lambda v, x: new_model.apply(v, x, train=False), new_vars,
                       jax.ShapeDtypeStruct((2, *shape), jnp.float32))
  assert out.shape == (2, 3)


def test_freeze_mask_matches_whole_components():
  params = {"layer1": {"w": 0}, "layer10": {"w": 0}, "layer1_0": {"conv1": {"kernel": 0}},
            "head": {"kernel": 0}}
  mask = transfer.freeze_mask(params, ["layer1", "layer1_0/conv1"])
  assert mask == {"layer1": {"w": True}, "layer10": {"w": False},
                  "layer1_0": {"conv1": {"kernel": True}}, "head": {"kernel": False}}
  with pytest.raises(ValueError, match="match no parameter"):
    transfer.freeze_mask(params, ["layer2"])
  assert transfer.all_but(params, ["head"]) == ["layer1", "layer10", "layer1_0"]


def test_frozen_params_and_batch_stats_are_bit_identical(resnet20):
  model, variables = resnet20
  model, variables = transfer.replace_head(model, variables, 5, jax.random.key(1))
  params, stats = variables["params"], variables["batch_stats"]
  trainable = ["layer3_2", "head"]                 # last block and the new head
  frozen = transfer.all_but(params, trainable)
  tx = transfer.freeze(optax.sgd(0.1, momentum=0.9), params, frozen)
  # The one train step every run uses, with the frozen prefixes.
  step = jax.jit(functools.partial(steps.train_step, frozen=tuple(frozen)))
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats=stats,
                            rng=jax.random.key(0))
  rs = np.random.RandomState(0)
  for i in range(3):
    x = jnp.asarray(rs.normal(size=(8, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(rs.randint(0, 5, 8))
    state, _ = step(state, {"image": x, "label": y})
  p, s = state.params, state.batch_stats

  for tree_before, tree_after in ((params, p), (stats, s)):
    before, after = flat(tree_before), flat(tree_after)
    for k in before:
      if k.split("/")[0] in frozen:
        assert np.array_equal(before[k], after[k]), f"frozen {k} changed"
  assert not np.array_equal(params["head"]["kernel"], p["head"]["kernel"])
  assert not np.array_equal(params["layer3_2"]["conv2"]["kernel"], p["layer3_2"]["conv2"]["kernel"])
  assert not np.array_equal(stats["layer3_2"]["bn2"]["mean"], s["layer3_2"]["bn2"]["mean"])
  # Without restore_frozen a train-mode pass would have moved the frozen statistics.
  _, upd = model.apply({"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"])
  assert not np.array_equal(upd["batch_stats"]["bn1"]["mean"], s["bn1"]["mean"])


def test_frozen_backbone_localizer_keeps_stats(resnet20):
  """Localizer(frozen_backbone=True) runs BN in inference mode: no stats to restore."""
  model, variables = resnet20
  backbone = models.get_model("resnet20", include_top=False)
  loc = detection.Localizer(backbone, num_classes=3, frozen_backbone=True)
  v = loc.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  v = {"params": {**v["params"], "backbone": {k: w for k, w in variables["params"].items()
                                                if k != "head"}},
       "batch_stats": {"backbone": variables["batch_stats"]}}
  (logits, boxes), upd = loc.apply(v, jnp.ones((4, 32, 32, 3)), train=True,
                                   mutable=["batch_stats"])
  assert logits.shape == (4, 3) and boxes.shape == (4, 4)
  for k, a in flat(upd["batch_stats"]).items():
    np.testing.assert_array_equal(a, flat(v["batch_stats"])[k])


def test_make_shapes():
  d = synthetic.make_shapes(64, 32, seed=3)
  assert d["image"].shape == (64, 32, 32, 3) and d["image"].dtype == np.float32
  assert set(np.unique(d["label"])) == {0, 1, 2}
  cx, cy, w, h = d["box"].T
  assert np.all((cx - w / 2 >= 0) & (cx + w / 2 <= 1) & (cy - h / 2 >= 0) & (cy + h / 2 <= 1))
  np.testing.assert_array_equal(synthetic.make_shapes(64, 32, seed=3)["image"], d["image"])


@pytest.mark.slow  # a training (8 s); freezing itself: test_frozen_params_and_batch_stats_are_bit_identical
def test_config_freeze_keeps_a_subtree_through_a_run(tmp_path):
  """config.freeze goes through the optimizer and the one train step of every run."""
  from cnn_jax.training import trainer
  from helpers import random_split, tiny_config
  train = random_split(128)
  a = trainer.train_and_evaluate(tiny_config("mlp", seed=3), str(tmp_path / "a"), train, train)
  cfg = tiny_config("mlp", seed=3, freeze=("dense1",))
  b = trainer.train_and_evaluate(cfg, str(tmp_path / "b"), train, train)
  init = jax.jit(lambda r: models.get_model("mlp", num_classes=10).init(
      {"params": jax.random.split(r)[0], "dropout": jax.random.split(r)[0]},
      jnp.zeros((1, 28, 28, 1)), train=False))(jax.random.key(3))["params"]
  for k in ("kernel", "bias"):
    np.testing.assert_array_equal(b["state"].params["dense1"][k], init["dense1"][k])
    assert not np.array_equal(a["state"].params["dense1"][k], init["dense1"][k])
  assert not np.array_equal(b["state"].params["head"]["kernel"], init["head"]["kernel"])
