"""Textbook models: parameter counts and output shapes as published, and the summary CLI."""
import jax
import jax.numpy as jnp
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


def test_every_registered_model_runs_forward():
  for name in ("mlp", "lenet5", "lenet_like", "mnist_cnn", "small_convnet"):
    m = models.get_model(name, num_classes=7)
    x = jnp.zeros((2, *models.input_shape(name)))
    v = m.init(jax.random.key(0), x, train=False)
    assert m.apply(v, x, train=False).shape == (2, 7)


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
