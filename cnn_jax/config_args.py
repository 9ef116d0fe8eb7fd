"""Train-style arguments (`--config FILE.py[:VARIANT] --config.KEY=VALUE`): checked, then parsed.

ml_collections' config flags report a broken experiment file as a 46-line traceback and an
unknown key as "invalid flags: lr"; the checks here say what is wrong in one line first.
Used by `cnn-jax train`, `cnn-jax config` and anything else that takes an experiment.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from typing import Optional, Sequence

from absl import flags
from ml_collections import ConfigDict, config_flags

from cnn_jax import config as config_lib

def config_problem(path: str) -> Optional[str]:
  """Why `FILE.py[:ARG]` gives no config, in one line (None: it does).

  ml_collections calls `get_config(*ARGS)` itself, but reports a failure there as a
  traceback inside its flag error. Here the file is run and get_config called the same
  way first: an unknown variant is the experiment's own message (`config.parse_arg` lists
  the known ones); any other failure is named with the call that failed.
  """
  file, *args = path.split(":")
  spec = importlib.util.spec_from_file_location("cnn_jax_experiment_config", file)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - any error in the file, said in one line
    return f"{file}: {type(e).__name__}: {e}"
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    return f"{file} has no get_config(arg=None) function"
  try:
    if args and not inspect.signature(get_config).parameters:
      return (f"{file} has no variants (its get_config takes no argument): "
              f"drop ':{':'.join(args)}'")
    get_config(*args)
  except ValueError as e:  # config.parse_arg: "unknown variant 'x' ...; it has: smoke"
    return f"{path}: {e}"
  except Exception as e:  # noqa: BLE001 - a config that cannot be built, in one line
    call = f"get_config({', '.join(map(repr, args))})"
    return f"{path}: {call} failed: {type(e).__name__}: {e}"
  return None


def flag_problem(argv: Sequence[str]) -> Optional[str]:
  """What is wrong with train's flags, said in one line before ml_collections tries them
  (it prints a 46-line traceback for a config file with a syntax error, and only
  "invalid flags: lr" for --config.optimizer.lr)."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None and "--config" in argv[:-1]:
    path = argv[list(argv).index("--config") + 1]
  if path:
    file = path.split(":")[0]  # experiments/x.py:smoke
    if not os.path.isfile(file):
      return f"config file {file} does not exist"
    try:
      with open(file) as f:
        compile(f.read(), file, "exec")
    except SyntaxError as e:
      return f"{file}, line {e.lineno}: {e.msg}: {(e.text or '').strip()}"
    problem = config_problem(path)
    if problem:
      return problem
  known = config_lib.known_keys()
  for a in argv:
    if a.startswith("--config."):
      key = a[len("--config."):].split("=", 1)[0]
      if key in known or key.split(".")[0] in config_lib.FREE_FORM:
        continue
      close = config_lib.suggest_keys(key)
      return (f"unknown config key {key!r} in {a!r}."
              + (f" Did you mean {', '.join(close)}?" if close else ""))
  return None


def parse(argv: Sequence[str], prog: str, workdir: bool) -> tuple[ConfigDict, Optional[str]]:
  """(config, workdir) from train-style flags, or raises ValueError with the one-line reason.

  The one parser of --config / --config.KEY flags: train and config read them the same way.
  """
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "experiment config file (Python)",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and logs", flag_values=fv)
  problem = flag_problem(argv)
  if problem:
    raise ValueError(f"invalid flags: {problem}")
  saved_argv, sys.argv = sys.argv, [prog, *argv]  # config_flags reads sys.argv too
  try:
    fv(sys.argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections reports an unknown --config.KEY with a "Did you mean" hint.
    msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    raise ValueError(f"invalid flags: {msg}") from None
  finally:
    sys.argv = saved_argv
  if fv.config is None or (workdir and fv.workdir is None):
    raise ValueError("--config and --workdir are required" if workdir else "--config is required")
  return fv.config, fv.workdir
