"""Load a trained run for inference: `cnn_jax.load(workdir)` -> (model, variables, config).

Reading is `checkpoint.load_checkpoint` (the one checkpoint reader); the model is built
from the saved config the way training built it (`training.setup.build_model`).
Nothing under `training/` imports this module, so there is no import circle.
"""
from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from cnn_jax.checkpoint import load_checkpoint, load_variables, variables_from_tree

__all__ = ["load", "load_run", "load_checkpoint", "load_variables"]


def load_run(workdir: str, which: str = "best"
             ) -> tuple[Any, dict[str, Any], ConfigDict, dict[str, Any]]:
  """(model, variables, config, meta) of a run; meta has data_shape, epoch, metrics."""
  from cnn_jax.training import setup
  tree, meta, _ = load_checkpoint(workdir, which)
  config = ConfigDict(meta["config"])
  config.parallel = "sharded"  # inference runs without pmap's cross-device batch norm
  model = setup.build_model(config, int(meta["num_classes"]))
  return model, variables_from_tree(tree), config, meta


def load(workdir: str, which: str = "best") -> tuple[Any, dict[str, Any], ConfigDict]:
  """The model, its variables and the config of a finished (or running) run."""
  return load_run(workdir, which)[:3]
