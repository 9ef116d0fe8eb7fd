"""Textbook models: parameter counts and output shapes as published, and the summary CLI."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import cli, models, summary


def test_mlp_has_109386_parameters():
  s = summary.summarize_by_name("mlp")
  assert s.total_params == 109_386
  assert [r.output_shape for r in s.rows] == [(784,), (128,), (64,), (10,)]


def test_lenet_like_matches_keras_summary():
  s = summary.summarize_by_name("lenet_like", (32, 32, 1))
  assert s.total_params == 81_194 and s.non_trainable_params == 0
  shapes = [r.output_shape for r in s.rows]
  assert shapes == [(30, 30, 6), (15, 15, 6), (13, 13, 16), (6, 6, 16), (576,), (120,), (84,), (10,)]
  assert [r.params for r in s.rows] == [60, 0, 880, 0, 0, 69_240, 10_164, 850]


def test_lenet5_layer_sizes_from_the_paper():
  s = summary.summarize_by_name("lenet5")
  by_name = {r.path: r for r in s.rows}
  assert by_name["C1"].output_shape == (28, 28, 6) and by_name["C1"].params == 156
  assert by_name["S2"].output_shape == (14, 14, 6)
  assert by_name["C3"].output_shape == (10, 10, 16)
  assert by_name["S4"].output_shape == (5, 5, 16)
  assert by_name["C5"].output_shape == (1, 1, 120) and by_name["C5"].params == 48_120
  assert by_name["F6"].output_shape == (84,) and s.output_shape == (10,)


def test_mnist_cnn_and_small_convnet_shapes():
  s = summary.summarize_by_name("mnist_cnn")
  assert {r.path: r.output_shape for r in s.rows}["flatten"] == (384,)
  assert s.total_params == 416 + 9_624 + 24_640 + 650
  s = summary.summarize_by_name("small_convnet")
  assert s.output_shape == (10,)
  assert s.total_params == 320 + 18_496 + 73_856 + 1152 * 10 + 10


def _is_small(name):
  return models.input_shape(name)[0] <= 32


@pytest.mark.parametrize("name", models.names())
def test_every_registered_model_runs_forward(name):
  """Logits (N, num_classes) in inference and training mode, for every registered model.

  Models on 32x32 or smaller inputs really run (and must give finite logits); the
  224-px ones go through jax.eval_shape, which traces the same code without the FLOPs.
  """
  model = models.get_model(name, num_classes=7)
  x = jax.random.normal(jax.random.key(0), (2, *models.input_shape(name)))
  rngs = {"params": jax.random.key(1), "dropout": jax.random.key(2)}

  def forward(x):
    v = model.init(rngs, x, train=False)
    infer = model.apply(v, x, train=False)
    train, _ = model.apply(v, x, train=True, rngs={"dropout": rngs["dropout"]},
                           mutable=["batch_stats"])
    return infer, train

  if _is_small(name):
    infer, train = forward(x)  # eager: per-op compiles are cached, jit would recompile all
    assert np.all(np.isfinite(infer)) and np.all(np.isfinite(train))
    assert float(jnp.std(infer)) > 0  # not a constant (e.g. all-zero) output
  else:
    infer, train = jax.eval_shape(forward, x)
  assert infer.shape == train.shape == (2, 7)
  assert infer.dtype == train.dtype == jnp.float32


def test_unknown_model_suggests_close_names():
  with pytest.raises(KeyError, match="Did you mean lenet5"):
    models.get_model("lenet")


def test_summary_cli(capsys):
  assert cli.main(["summary", "lenet_like", "--input", "32x32x1"]) == 0
  out = capsys.readouterr().out
  assert "Total params: 81,194" in out and "13x13x16" in out and "Trainable params: 81,194" in out
  assert cli.main(["summary", "lenet5", "--input", "8x8x1"]) == 1  # too small: clear error
  err = capsys.readouterr().err
  assert "C3" in err and "too small" in err
