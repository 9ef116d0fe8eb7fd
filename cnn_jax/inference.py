"""Load a trained run for inference: `cnn_jax.load(workdir)` -> (model, variables, config)."""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from ml_collections import ConfigDict


def _manager(workdir: str, which: str) -> ocp.CheckpointManager:
  sub = {"best": "best", "latest": "checkpoints"}.get(which)
  if sub is None:
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  path = os.path.join(os.path.abspath(workdir), sub)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no {which} checkpoints in {workdir} (looked for {path}); "
                            "train first with `cnn-jax train --workdir ...`")
  return ocp.CheckpointManager(
      path, item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(create=False, read_only=True))


def load_checkpoint(workdir: str, which: str = "best", step: Optional[int] = None
                    ) -> tuple[dict[str, Any], dict[str, Any], int]:
  """(state tree as numpy, meta, step) of the best (or latest) checkpoint of a run."""
  mngr = _manager(workdir, which)
  if which == "best" and step is None:
    step = mngr.best_step() or mngr.latest_step()
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"the {which} checkpoint directory of {workdir} holds no step")
  # Restore onto this process's first device whatever mesh the run was saved from, so a
  # checkpoint of 8 GPUs (or 2 hosts) loads on a laptop.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                                  mngr.item_metadata(step)["state"])
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                        meta=ocp.args.JsonRestore()))
  mngr.close()
  return restored["state"], restored["meta"], step


def _variables(tree: dict[str, Any]) -> dict[str, Any]:
  """The model variables of a restored state tree: params and batch_stats, as numpy."""
  variables = {"params": tree["params"]}
  if tree.get("batch_stats"):
    variables["batch_stats"] = tree["batch_stats"]
  return jax.tree_util.tree_map(np.asarray, variables)


def load_variables(workdir: str, which: str = "best") -> dict[str, Any]:
  """params and batch_stats only (the optimizer state is dropped)."""
  return _variables(load_checkpoint(workdir, which)[0])


def load(workdir: str, which: str = "best") -> tuple[Any, dict[str, Any], ConfigDict]:
  """The model, its variables and the config of a finished (or running) run."""
  from cnn_jax.training import trainer
  tree, meta, _ = load_checkpoint(workdir, which)
  config = ConfigDict(meta["config"])
  config.parallel = "sharded"  # inference runs without pmap's cross-device batch norm
  model = trainer.build_model(config, int(meta["num_classes"]))
  return model, _variables(tree), config
