"""config.dtype="bfloat16": every zoo model and detection head computes in bfloat16 while
parameters, optimizer state, batch-norm statistics and the loss stay float32 (mixed
precision, as the Flax ImageNet example's half_precision), and training tracks float32.

The zoo-wide checks trace shapes only (jax.make_jaxpr), so the 138M-parameter VGGs cost
nothing; the small models and one pair of short training runs compute.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

import cnn_jax
from cnn_jax import config as config_lib
from cnn_jax import detection, models
from cnn_jax.checkpoint import load_checkpoint
from cnn_jax.detection.yolo_v2 import YOLOv2Head
from cnn_jax.training import setup, trainer
from cnn_jax.training.metric_writers import read_metrics
from helpers import random_split, tiny_config

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)
COMPUTE_OPS = ("conv_general_dilated", "dot_general")
RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def _operand_dtypes(jaxpr):
  """(primitive, operand dtypes) of every conv and matmul, sub-jaxprs included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in COMPUTE_OPS:
      yield eqn.primitive.name, tuple(jnp.dtype(v.aval.dtype) for v in eqn.invars)
    for v in eqn.params.values():
      for sub in v if isinstance(v, (tuple, list)) else (v,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _operand_dtypes(inner)


def _trace(model, shape):
  """Trace init on a training forward pass: (conv / matmul operand dtypes, (outputs,
  variables)) without computing anything."""
  run = lambda x: model.init_with_output(RNGS, x, train=True)  # noqa: E731
  jaxpr, shapes = jax.make_jaxpr(run, return_shape=True)(
      jax.ShapeDtypeStruct((2, *shape), jnp.float32))
  return list(_operand_dtypes(jaxpr.jaxpr)), shapes


def _dtypes(tree):
  return {jnp.dtype(leaf.dtype) for leaf in jax.tree_util.tree_leaves(tree)}


def _check_mixed_precision(model, shape):
  ops, (out, variables) = _trace(model, shape)
  assert ops, "no convolution or matmul traced"
  wrong = [(name, dts) for name, dts in ops if set(dts) != {BF16}]
  assert not wrong, f"{len(wrong)} of {len(ops)} convs / matmuls not in bfloat16: {wrong[:3]}"
  assert _dtypes(variables) == {F32}                 # params (and batch_stats) float32
  assert _dtypes(out) == {F32}                       # logits / head outputs float32


@pytest.mark.parametrize("name", models.names())
def test_every_model_computes_in_bf16_with_float32_variables(name):
  _check_mixed_precision(models.get_model(name, dtype=jnp.bfloat16), models.input_shape(name))


def test_detection_heads_compute_in_bf16_with_float32_outputs():
  bf16 = jnp.bfloat16
  anchors = ((0.2, 0.3), (0.5, 0.5))
  for model in (YOLOv2Head(detection.TinyBackbone((8, 16), dtype=bf16), anchors, 3, hidden=8,
                           dtype=bf16),
                detection.Localizer(detection.TinyBackbone((8, 16), dtype=bf16), 3, hidden=8,
                                    dtype=bf16),
                detection.YOLOHead(detection.TinyBackbone((8, 16), dtype=bf16), grid_size=4,
                                   num_classes=3, hidden=8, dtype=bf16)):
    _check_mixed_precision(model, (32, 32, 3))


@pytest.mark.parametrize("name", ["mnist_cnn", "tiny_cnn"])
def test_bf16_forward_close_to_fp32(name):
  """The same float32 variables give nearly the same logits in both dtypes (bf16 keeps 8
  significant bits), and the BN statistics a bf16 training pass writes are float32."""
  x = jax.random.normal(jax.random.key(2), (4, *models.input_shape(name)))
  fp32 = models.get_model(name)
  bf16 = models.get_model(name, dtype=jnp.bfloat16)

  @jax.jit
  def forward(x):  # one compile instead of one per op
    variables = fp32.init(RNGS, x, train=False)
    _, updates = bf16.apply(variables, x, train=True, mutable=["batch_stats"],
                            rngs={"dropout": RNGS["dropout"]})
    return (fp32.apply(variables, x, train=False), bf16.apply(variables, x, train=False),
            updates)

  want, got, updates = forward(x)
  assert got.dtype == F32 and _dtypes(updates) <= {F32}
  want, got = np.asarray(want), np.asarray(got)
  assert np.abs(got - want).max() <= 0.05 * np.abs(want).max() + 1e-3
  assert not np.array_equal(got, want)  # it did compute in bf16


def test_build_model_passes_config_dtype():
  cfg = tiny_config("tiny_cnn", dtype="bfloat16")
  assert setup.build_model(cfg, 10).dtype == jnp.bfloat16
  cfg.task, cfg.detection.anchors = "detection", ((0.3, 0.3),)
  det = setup.build_model(cfg, 3)
  assert det.dtype == jnp.bfloat16 and det.backbone.dtype == jnp.bfloat16
  cfg.task = "localization"
  loc = setup.build_model(cfg, 3)
  assert loc.dtype == jnp.bfloat16 and loc.backbone.dtype == jnp.bfloat16
  # A run saved before the key existed has no `dtype`: it is (and was) float32.
  old = ConfigDict({k: v for k, v in tiny_config("tiny_cnn").items() if k != "dtype"})
  assert "dtype" not in old and setup.build_model(old, 10).dtype == jnp.float32
  config_lib.validate(old)


def test_bad_dtype_is_a_clear_error():
  with pytest.raises(ValueError, match="dtype must be 'float32' or 'bfloat16'.*'float16'"):
    config_lib.validate(tiny_config(dtype="float16"))
  with pytest.raises(ValueError, match="dtype must be one of"):
    models.compute_dtype("bf16")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The same seed and data trained 36 steps (mnist_cnn, Adam) in float32 and in bfloat16."""
  train, val = random_split(384), random_split(64, seed=1)
  out = {}
  for dtype in ("float32", "bfloat16"):
    workdir = str(tmp_path_factory.mktemp(dtype))
    cfg = tiny_config("mnist_cnn", num_epochs=3, dtype=dtype, log_every_steps=4)
    result = trainer.train_and_evaluate(cfg, workdir, train, val)
    curve = [(m["step"], m["train/loss"]) for m in read_metrics(workdir) if "train/loss" in m]
    out[dtype] = dict(result=result, workdir=workdir, curve=curve)
  return out


def test_bf16_run_tracks_the_fp32_run(runs):
  fp32, bf16 = runs["float32"], runs["bfloat16"]
  steps, f = zip(*fp32["curve"])
  steps_b, b = zip(*bf16["curve"])
  f, b = np.array(f), np.array(b)
  assert steps == steps_b and len(steps) >= 8
  assert f[-1] < 0.5 * f[0] and b[-1] < 0.5 * b[0]      # both learn
  rel = np.abs(b - f) / f
  assert rel.max() < 0.10, f"bf16 train loss leaves the fp32 one: {list(zip(steps, f, b))}"
  assert not np.array_equal(f, b)                       # the bf16 run did run in bf16
  fv, bv = fp32["result"]["validation"], bf16["result"]["validation"]
  assert abs(bv["loss"] - fv["loss"]) / fv["loss"] < 0.15
  assert abs(bv["accuracy"] - fv["accuracy"]) <= 0.05


def test_bf16_checkpoint_holds_float32_params_and_optimizer_state(runs):
  workdir = runs["bfloat16"]["workdir"]
  tree, _, _ = load_checkpoint(workdir, "latest")
  floats = {k: {d for d in _dtypes(tree[k]) if jnp.issubdtype(d, jnp.floating)}
            for k in ("params", "opt_state")}
  assert floats == {"params": {F32}, "opt_state": {F32}}
  state = runs["bfloat16"]["result"]["state"]
  assert _dtypes(state.params) == {F32}
  model, variables, config = cnn_jax.load(workdir)  # rebuilt as trained: bf16 compute
  assert config.dtype == "bfloat16" and model.dtype == jnp.bfloat16
  x = jnp.zeros((1, 28, 28, 1))
  assert model.apply(variables, x, train=False).dtype == F32
