"""`--help`, `--version` and `cnn-jax config`: what a newcomer types first."""
from __future__ import annotations

import re
from importlib import metadata

import pytest

from cnn_jax import cli, config as config_lib, config_doc


def _exit_code(argv: list[str]) -> int:
  try:
    return cli.main(argv)
  except SystemExit as e:  # argparse's --help exits through SystemExit(0)
    return int(e.code or 0)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help_that_exits_0(command, capsys):
  assert _exit_code([command, "--help"]) == 0
  out = capsys.readouterr().out
  assert command in out and len(out.splitlines()) >= 2, out


def test_train_help_lists_every_config_key_with_its_default(capsys):
  assert _exit_code(["train", "--help"]) == 0
  out = capsys.readouterr().out
  for key in config_lib.known_keys():
    assert re.search(rf"^[ *] {re.escape(key)} = ", out, re.M), key
  # A key that appears only in an error message before: now listed with its meaning.
  assert re.search(r"dataset\.max_train_examples = None +# for smoke runs", out)


def test_version(capsys):
  assert cli.main(["--version"]) == 0
  assert capsys.readouterr().out.startswith(f"cnn_jax {metadata.version('cnn_jax')} (jax ")


def test_config_prints_the_experiments_values_with_overrides_marked(capsys):
  assert cli.main(["config", "experiments/mnist_cnn.py:smoke",
                   "--config.optimizer.learning_rate=0.125"]) == 0
  lines = capsys.readouterr().out.splitlines()
  line = next(l for l in lines if " optimizer.learning_rate = " in l)
  assert line.startswith("* optimizer.learning_rate = 0.125")
  seed = next(l for l in lines if " seed = " in l)
  assert seed.startswith("  seed = 0"), "an unchanged key is not marked"
  assert len(lines) == len(config_lib.known_keys())


def test_config_refuses_a_typo_in_one_line(capsys):
  assert cli.main(["config", "experiments/mnist_cnn.py", "--config.optimizer.lr=1"]) == 2
  err = capsys.readouterr().err.strip()
  assert "optimizer.learning_rate" in err and "\n" not in err


def test_comments_are_read_from_base_config_source():
  comments = config_doc.key_comments()
  assert set(config_lib.known_keys()) <= set(comments)
  assert comments["optimizer.decay"] == "rmsprop"
  assert comments["optimizer.momentum"] == ""
  # A comment block above a key belongs to that key, followed by its own line's comment.
  assert comments["optimizer.decay_epochs"].startswith("piecewise: the rate is multiplied")
  assert comments["dataset.val_split"].startswith('"" : no validation')
