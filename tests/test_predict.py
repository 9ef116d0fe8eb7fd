"""cnn-jax predict on image files, from a trained run."""
from PIL import Image

from cnn_jax import cli
from cnn_jax.training import trainer
from helpers import random_split, tiny_config


def test_predict_prints_top5_with_probabilities(tmp_path, capsys):
  train = random_split(256)
  cfg = tiny_config("mlp", num_epochs=3)
  trainer.train_and_evaluate(cfg, str(tmp_path / "w"), train, random_split(64, seed=2))
  label = int(train.labels[0])
  img = Image.fromarray(train.images[0][..., 0]).resize((56, 56))  # resized back to 28x28
  img.save(tmp_path / "digit.png")
  assert cli.main(["predict", "--workdir", str(tmp_path / "w"), str(tmp_path / "digit.png")]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert "predicted in" in lines[0] and len(lines) == 6
  probs = [float(l.split("%")[0]) for l in lines[1:]]
  assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.0 + 1e-6
  assert lines[1].split(": ")[1] == str(label)  # the bright bar's row is the class
  assert cli.main(["predict", "--workdir", str(tmp_path / "w"), str(tmp_path / "nope.png")]) == 1
