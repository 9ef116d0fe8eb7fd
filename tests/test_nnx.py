"""cnn_jax.nnx: every zoo model as a Flax NNX module (nnx.bridge), checked against linen.

The reference is always the linen model's own `apply` with the same variables: outputs in
training and eval mode, the batch statistics a training-mode call leaves, one optimizer
step against `steps.train_step`, and a trained run's predictions against `cnn-jax predict`'s.
Everything runs eagerly (op by op): eager ops are compiled once per shape and shared by
all the models of this file, where one jitted program per model costs ~5x more to compile.
"""
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import cnn_jax
from cnn_jax import models
from cnn_jax import nnx as zoo_nnx
from cnn_jax.detection.backbones import TinyBackbone
from cnn_jax.detection.yolo_v2 import YOLOv2Head
from cnn_jax.training import optim, steps, train_state, trainer
from helpers import random_split, tiny_config

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

# The smallest square input each model takes (its last pool needs a 3x3 map); 32 or the
# registry's size if smaller for the others. Batch 2: batch statistics need two images.
MIN_SIZE = {"alexnet": 64, "zfnet": 64, "alexnet_original": 96}
# Cheap eagerly, and between them dense, conv, pool, batch norm, dropout and both ResNet
# block kinds (CIFAR option A here; the torchvision blocks are resnet18's, in SLOW).
FAST = ("mlp", "lenet5", "lenet_like", "mnist_cnn", "small_convnet", "tiny_cnn", "resnet20")
# The rest, under -m slow: big parameter counts (vgg, alexnet: 30-140M random numbers),
# deep stacks of distinct shapes to compile op by op (googlenet, the deeper ResNets).
SLOW = ("airbench", "alexnet", "alexnet_original", "zfnet", "darknet19", "googlenet",
        "resnet18", "resnet32", "resnet34", "resnet44", "resnet50", "resnet50_keras",
        "resnet56", "resnet101", "resnet110", "resnet152", "vgg11", "vgg11_bn", "vgg13",
        "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")


def input_shape(name):
  h, _, c = models.input_shape(name)
  s = MIN_SIZE.get(name, min(h, 32))
  return (s, s, c)


def random_variables(model, shape, seed=0):
  """Random values in the shapes `model.init` makes: weights N(0, 1/fan_in), batch-norm
  running means N(0, 0.1^2) and variances in [0.5, 2], so that eval mode's use of the
  running statistics shows (linen's init leaves them at 0 and 1). No init forward pass."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    kind = (path[0].key, path[-1].key)
    if kind == ("batch_stats", "var"):
      v = rng.uniform(0.5, 2.0, leaf.shape)
    elif kind[0] == "batch_stats":
      v = 0.1 * rng.standard_normal(leaf.shape)
    else:
      v = rng.standard_normal(leaf.shape) / np.sqrt(max(1, int(np.prod(leaf.shape[:-1]))))
    return jnp.asarray(v, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, models.abstract_variables(model, shape))


def assert_trees_close(got, want, rtol=1e-6):
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    w = np.asarray(w)
    assert np.all(np.isfinite(w))  # a comparison of infinities would prove nothing
    np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=rtol * (np.abs(w).max() + 1e-6))


def check_parity(name, **kwargs):
  """NNX module vs linen apply, same variables: train-mode output (same dropout key),
  batch statistics after it, then eval-mode output."""
  shape = input_shape(name)
  model = models.get_model(name, num_classes=10, **kwargs)
  variables = random_variables(model, shape)
  module = zoo_nnx.wrap(model, variables)
  x = jax.random.normal(jax.random.key(1), (2, *shape))
  key = jax.random.key(2)

  want, updates = model.apply(variables, x, train=True, rngs={"dropout": key},
                              mutable=["batch_stats"])
  assert_trees_close(module(x, rngs=key), want)  # a new module is in training mode
  after = zoo_nnx.to_linen_variables(module)
  assert_trees_close(after["params"], variables["params"], rtol=0)  # not moved by a call
  if "batch_stats" in variables:
    assert_trees_close(after["batch_stats"], updates["batch_stats"])
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                   after["batch_stats"], variables["batch_stats"])
    assert all(jax.tree_util.tree_leaves(moved))
  else:
    assert updates == {} and set(after) == {"params"}

  module.eval()
  assert_trees_close(module(x), model.apply(after, x, train=False))
  assert_trees_close(zoo_nnx.to_linen_variables(module), after, rtol=0)  # eval moves nothing


def test_every_registered_model_has_a_parity_test():
  assert sorted(FAST + SLOW) == models.names()


@pytest.mark.parametrize("name", FAST)
def test_nnx_module_computes_as_linen(name):
  check_parity(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_nnx_module_computes_as_linen_big_models(name):
  check_parity(name)


@pytest.mark.slow
def test_googlenet_aux_logits_and_bn_small_convnet():
  check_parity("googlenet", aux_logits=True)  # train mode returns (logits, aux1, aux2)
  check_parity("small_convnet", batch_norm=True)


def test_a_detector_through_wrap():
  """Detectors are not in the registry (they return dicts): `wrap` takes any linen module
  with the zoo's (x, train) call."""
  head = YOLOv2Head(TinyBackbone(), anchors=((0.2, 0.3), (0.5, 0.5)), num_classes=3, hidden=8)
  variables = random_variables(head, (32, 32, 3))  # tiny_cnn's layers: compiled already
  module = zoo_nnx.wrap(head, variables)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  want, updates = head.apply(variables, x, train=True, mutable=["batch_stats"])
  assert_trees_close(module(x), want)
  assert_trees_close(zoo_nnx.to_linen_variables(module)["batch_stats"], updates["batch_stats"])
  module.eval()
  assert_trees_close(module(x), head.apply({**variables, **updates}, x, train=False))


def test_get_model_initializes_the_linen_layout_from_rngs():
  module = zoo_nnx.get_model("tiny_cnn", rngs=nnx.Rngs(0), num_classes=7)
  assert isinstance(module, nnx.Module) and module.use_running_average is False
  variables = zoo_nnx.to_linen_variables(module)
  want = models.abstract_variables(models.get_model("tiny_cnn", num_classes=7), (32, 32, 3))
  assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), variables) == \
      jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), want)
  assert all(float(jnp.std(k)) > 0 for k in jax.tree_util.tree_leaves(variables["params"])
             if k.ndim > 1)  # random kernels, not zeros
  same = zoo_nnx.to_linen_variables(zoo_nnx.get_model("tiny_cnn", rngs=nnx.Rngs(0), num_classes=7))
  other = zoo_nnx.to_linen_variables(zoo_nnx.get_model("tiny_cnn", rngs=nnx.Rngs(1), num_classes=7))
  assert_trees_close(same, variables, rtol=0)
  assert not np.allclose(other["params"]["head"]["kernel"], variables["params"]["head"]["kernel"])
  # NNX's Param / BatchStat split, as nnx.Optimizer(wrt=nnx.Param) sees it.
  n_params = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
  assert sum(a.size for a in jax.tree_util.tree_leaves(nnx.state(module, nnx.Param))) == n_params


def test_from_linen_round_trip_and_wrong_weights():
  model = models.get_model("mnist_cnn")
  variables = random_variables(model, (28, 28, 1))
  module = zoo_nnx.from_linen("mnist_cnn", variables)
  assert_trees_close(zoo_nnx.to_linen_variables(module), variables, rtol=0)
  with pytest.raises(ValueError, match="head/kernel: got"):
    zoo_nnx.from_linen("mnist_cnn", variables, num_classes=5)
  with pytest.raises(ValueError, match="missing"):
    zoo_nnx.from_linen("lenet5", variables)
  with pytest.raises(TypeError, match="ZooModule"):
    zoo_nnx.to_linen_variables(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))


def test_train_flag_follows_nnx_modes_and_the_call_argument():
  model = models.get_model("mnist_cnn")  # dropout: train and eval outputs differ
  variables = random_variables(model, (28, 28, 1))
  module = zoo_nnx.wrap(model, variables)
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  key = jax.random.key(3)
  evald = model.apply(variables, x, train=False)
  trained = model.apply(variables, x, train=True, rngs={"dropout": key})
  assert not np.allclose(evald, trained)
  module.eval()
  np.testing.assert_array_equal(module(x), evald)
  np.testing.assert_array_equal(module(x, train=True, rngs=key), trained)  # one call
  np.testing.assert_array_equal(module(x), evald)  # still in eval mode
  module.train()
  np.testing.assert_array_equal(module(x, rngs=key), trained)
  np.testing.assert_array_equal(module(x, train=False), evald)
  # Its own stream: two calls draw two masks, and the same seed draws the same masks.
  a, b = module(x), module(x)
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(zoo_nnx.wrap(model, variables)(x), a)
  module.set_attributes(deterministic=True)  # dropout off, batch norm training: no such net
  with pytest.raises(ValueError, match="one train flag"):
    module(x)


@pytest.mark.parametrize("name,kwargs", [("mlp", {"dropout_rate": 0.5}),  # dropout
                                         ("tiny_cnn", {})])  # batch norm
def test_nnx_optimizer_steps_equal_train_step(name, kwargs):
  """Two steps of nnx.Optimizer with the project's loss and optimizer (momentum with
  weight decay, from config) equal two `steps.train_step`s: parameters, batch statistics
  and loss, with the dropout key train_step draws for each step."""
  shape = models.input_shape(name)
  model = models.get_model(name, num_classes=10, **kwargs)
  cfg = tiny_config(name).optimizer
  cfg.name, cfg.learning_rate, cfg.weight_decay = "momentum", 0.05, 5e-4
  tx, _ = optim.make_optimizer(cfg, steps_per_epoch=10, num_epochs=1)
  state = train_state.create_train_state(model, tx, jax.random.key(0), shape)
  module = zoo_nnx.from_linen(name, train_state.variables_of(state), num_classes=10, **kwargs)
  optimizer = nnx.Optimizer(module, tx, wrt=nnx.Param)

  @nnx.jit
  def nnx_step(module, optimizer, batch, dropout_key):
    def loss_fn(module):
      return steps.classification_loss(module(batch["image"], rngs=dropout_key), batch)[0]
    loss, grads = nnx.value_and_grad(loss_fn)(module)
    optimizer.update(module, grads)
    return loss

  linen_step = jax.jit(steps.train_step)
  rng = np.random.default_rng(0)
  for _ in range(2):
    batch = {"image": jnp.asarray(rng.standard_normal((4, *shape)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 4), jnp.int32)}
    loss = nnx_step(module, optimizer, batch, steps.step_rngs(state)[1])
    before = state.params
    state, metrics = linen_step(state, batch)
    np.testing.assert_allclose(loss, metrics["loss"], rtol=1e-6)
  assert_trees_close(zoo_nnx.to_linen_variables(module), train_state.variables_of(state),
                     rtol=1e-5)
  assert not np.allclose(before["head"]["kernel"], state.params["head"]["kernel"])


def test_checkpoint_predicts_as_cnn_jax_predict(tmp_path):
  """A 2-step run of the project's trainer: the NNX module from its checkpoint gives the
  probabilities of `cnn_jax.load(...).predict`, the Predictor `cnn-jax predict` prints
  (the run's preprocessing applied first). The mlp has dropout: a module left in training
  mode would not."""
  workdir = str(tmp_path / "w")
  cfg = tiny_config("mlp", num_epochs=1, model_kwargs={"dropout_rate": 0.5})
  trainer.train_and_evaluate(cfg, workdir, random_split(64), random_split(32, seed=2))
  module = zoo_nnx.from_workdir(workdir)
  assert module.use_running_average and module.deterministic  # loaded in eval mode
  run = cnn_jax.load(workdir)
  images = random_split(4, seed=3).images
  got = np.asarray(jax.nn.softmax(module(run.preprocess(images))))
  np.testing.assert_allclose(got, run.predict(images), rtol=1e-5, atol=1e-7)


def readme_nnx_example():
  """The README's python block that uses cnn_jax.nnx."""
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  found = [b for b in blocks if "cnn_jax import nnx" in b]
  assert len(found) == 1, "README should hold one python example of cnn_jax.nnx"
  return found[0]


def test_readme_nnx_example_runs_and_trains():
  namespace = {}
  exec(compile(readme_nnx_example(), str(README), "exec"), namespace)  # noqa: S102
  model, optimizer = namespace["model"], namespace["optimizer"]
  assert isinstance(model.backbone, zoo_nnx.ZooModule) and int(optimizer.step[...]) == 3
  # The parent's .eval() reached the zoo backbone, whose weights and statistics trained.
  assert model.backbone.use_running_average and model.backbone.deterministic
  fresh = namespace["Classifier"](num_classes=5, rngs=nnx.Rngs(0))
  before, after = (zoo_nnx.to_linen_variables(m.backbone) for m in (fresh, model))
  assert not np.allclose(before["params"]["conv1"]["kernel"], after["params"]["conv1"]["kernel"])
  assert not np.allclose(before["batch_stats"]["bn1"]["mean"], after["batch_stats"]["bn1"]["mean"])
