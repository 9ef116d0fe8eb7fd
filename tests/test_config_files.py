"""`cnn-jax train --config FILE.py:VARIANT`: a config that cannot be built is one line."""
import pytest

from cnn_jax import cli


def train_err(config, tmp_path, capsys):
  rc = cli.main(["train", "--config", config, "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in err, err
  return rc, lines[0]


def test_an_unknown_variant_lists_the_known_ones(tmp_path, capsys):
  """It printed ml_collections' "Error whilst parsing config file" and a traceback."""
  rc, line = train_err("experiments/cifar10_resnet20.py:nosuchvariant", tmp_path, capsys)
  assert rc == 2 and line == (
      "cnn-jax train: invalid flags: experiments/cifar10_resnet20.py:nosuchvariant: unknown "
      "variant 'nosuchvariant' of this experiment; it has: smoke, cpu (or none)")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("body,expected", [
    ("def get_config():\n  return base_config()\n",
     "{file} has no variants (its get_config takes no argument): drop ':x'"),
    ("def get_config(arg=None):\n  return {'a': base_config()}[arg]\n",
     "{file}:x: get_config('x') failed: KeyError: 'x'"),
    ("c = base_config()\n", "{file} has no get_config(arg=None) function")])
def test_a_config_without_declared_variants_says_what_failed(tmp_path, capsys, body, expected):
  file = tmp_path / "exp.py"
  file.write_text("from cnn_jax.config import base_config\n" + body)
  rc, line = train_err(f"{file}:x", tmp_path, capsys)
  assert rc == 2 and line == "cnn-jax train: invalid flags: " + expected.format(file=file)
