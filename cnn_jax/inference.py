"""Load a trained run: `cnn_jax.load(workdir)` -> a `TrainedRun` (model, variables, config, ...).

Reading is `checkpoint.load_checkpoint` (the one checkpoint reader); the model is built
from the saved config the way training built it (`training.setup.build_model`), and
checked against the saved weights by shape (`jax.eval_shape`, nothing computed) before
anything runs: a config edited after training (an unknown or mistyped `model_kwargs`
entry) is one line naming the key and the file, not a traceback from inside flax.
Nothing under `training/` imports this module, so there is no import circle.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from etils import epath
from ml_collections import ConfigDict

from cnn_jax import models, predict
from cnn_jax.checkpoint import SUBDIRS, load_checkpoint, load_variables, variables_from_tree
from cnn_jax.training import setup
from cnn_jax.trained_run import TrainedRun
from cnn_jax.training.workdir import is_remote
from cnn_jax.weights import compare_variables

__all__ = ["TrainedRun", "load", "load_run", "load_checkpoint", "load_variables"]


def meta_file(workdir: str, which: str, step: int) -> str:
  """The file the run's config was read from: <workdir>/best|checkpoints/<step>/meta/metadata."""
  for sub in (SUBDIRS[which], SUBDIRS["latest"], SUBDIRS["best"]):
    path = epath.Path(workdir) / sub / str(step) / "meta" / "metadata"
    if path.exists():
      return str(path)
  return f"{workdir}/{SUBDIRS[which]}/{step}/meta/metadata"


def _one_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def _build(config: ConfigDict, num_classes: int, input_shape: Optional[Any]) -> tuple[Any, Any]:
  """(model, its abstract variables or None when the input shape is unknown)."""
  model = setup.build_model(config, num_classes)
  want = models.abstract_variables(model, input_shape) if input_shape else None
  return model, want


def build_checked(config: ConfigDict, meta: dict[str, Any], variables: Any, where: str) -> Any:
  """The run's model, built from its saved config and checked to fit `variables`; a
  config that does not build it, or builds one the weights do not fit, is a ValueError
  naming the `model_kwargs` key and `where` (the file the config came from)."""
  kwargs = config.get("model_kwargs")
  if kwargs is not None and not isinstance(kwargs, (dict, ConfigDict)):
    raise ValueError(f"{where}: config.model_kwargs must be a mapping of constructor "
                     f"arguments, got {kwargs!r}")
  kwargs = dict(kwargs or {})
  num_classes, shape = int(meta["num_classes"]), meta.get("input_shape")
  task = config.get("task", "classification")
  if task == "classification" and config.model in models.names():
    takes = models.constructor_args(config.model) - {"name", "parent"}  # flax's own
    unknown = sorted(set(kwargs) - takes)
    if unknown:
      raise ValueError(f"{where}: model_kwargs.{unknown[0]} is not an argument of model "
                       f"{config.model!r} (it takes {', '.join(sorted(takes))}); fix or remove it")
  try:
    model, want = _build(config, num_classes, shape)
  except Exception as e:  # noqa: BLE001 - name the key that breaks it, not flax's frames
    for key in kwargs:  # which key alone breaks it
      alone = config.copy_and_resolve_references()
      alone.model_kwargs = ConfigDict({key: kwargs[key]})
      try:
        _build(alone, num_classes, shape)
      except Exception:  # noqa: BLE001
        raise ValueError(f"{where}: model_kwargs.{key}={kwargs[key]!r} does not build model "
                         f"{config.model!r} ({_one_line(e)}); fix or remove it") from None
    raise ValueError(f"{where}: the saved config does not build model {config.model!r} "
                     f"({_one_line(e)})") from None
  if want is not None:
    missing, unexpected, reshaped = compare_variables(want, variables)
    if missing or unexpected or reshaped:
      first = (f"{reshaped[0][0]}: saved {reshaped[0][1]}, built {reshaped[0][2]}" if reshaped
               else f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
      keys = f"model_kwargs {kwargs}" if kwargs else f"model {config.model!r}"
      raise ValueError(f"{where}: the saved weights do not fit the model its config builds "
                       f"({keys}; {first}, {len(missing) + len(unexpected) + len(reshaped)} "
                       "variable(s) differ); was the config edited after training?")
  return model


# The command that uses a run of each task.
TASK_COMMANDS = {"classification": "predict", "detection": "detect", "localization": "eval"}


def load_run(workdir: str, which: str = "best", task: Optional[str] = None
             ) -> tuple[Any, dict[str, Any], ConfigDict, dict[str, Any]]:
  """(model, variables, config, meta) of a run; meta has data_shape, epoch, metrics.

  task: the task the caller handles (e.g. "classification" for predict); a run of another
  task is a one-line error naming the command for it, before its model is built."""
  tree, meta, step = load_checkpoint(workdir, which)
  config = ConfigDict(meta["config"])
  got = config.get("task", "classification")  # runs saved before tasks existed classify
  if task is not None and got != task:
    raise ValueError(f"the run in {workdir} is a {got} run, not a {task} one: use "
                     f"`cnn-jax {TASK_COMMANDS.get(got, 'eval')} --workdir {workdir} ...` for it")
  config.parallel = "sharded"  # inference runs without pmap's cross-device batch norm
  variables = variables_from_tree(tree)
  model = build_checked(config, meta, variables, meta_file(workdir, which, step))
  return model, variables, config, meta


def load(workdir: str, which: str = "best", task: Optional[str] = None) -> TrainedRun:
  """A finished (or running) run: `cnn_jax.load(workdir)`, the one public way in.

  `which`: "best" (the best-on-validation checkpoint) or "latest". The result unpacks as
  `model, variables, config = run` and, for a classifier, has `class_names`,
  `preprocess`, `predict(images)` and `top_k(images, k)` (trained_run.py). `task`: the
  task the caller handles; a run of another task is a one-line error naming its command.
  """
  if not is_remote(workdir) and not os.path.isdir(workdir):
    raise FileNotFoundError(f"no work directory {workdir}")
  model, variables, config, meta = load_run(workdir, which, task)
  classifier = config.get("task", "classification") == "classification"
  predictor = predict.from_run(model, variables, config, meta) if classifier else None
  return TrainedRun(str(workdir), model, variables, config, dict(meta), predictor)
