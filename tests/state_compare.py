"""Bit-for-bit comparison of whole training states, for the resume tests.

A resumed run equals an uninterrupted one only if every array of its TrainState does:
params, batch_stats (batch norm's running statistics, which no loss sees), the optimizer
state, the step and the rng key. `state_arrays` flattens a state into named numpy arrays
(and its tree structure into a string) so that it can also cross a process boundary (.npz).
"""
from typing import Any

import jax
import numpy as np

from cnn_jax import checkpoint as ckpt_lib

PARTS = ckpt_lib.STATE_FIELDS  # step, params, batch_stats, opt_state, rng


def state_arrays(state: Any) -> dict[str, np.ndarray]:
  """Every leaf of the state as saved (rng as key data) by its path ("state/['params']..."),
  and "treedef": the tree structure with the key's implementation."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(ckpt_lib.state_to_tree(state))
  flat = {"state/" + jax.tree_util.keystr(path): np.asarray(v) for path, v in leaves}
  assert len(flat) == len(leaves)  # no two leaves share a name
  flat["treedef"] = np.asarray(f"{treedef} rng:{jax.random.key_impl(state.rng)}")
  return flat


def describe_difference(x: np.ndarray, y: np.ndarray) -> Any:
  if (x.dtype, x.shape) != (y.dtype, y.shape):
    return f"{x.dtype}{x.shape} vs {y.dtype}{y.shape}"
  return float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
  """Same names, same tree structure, and every array of the same dtype, shape and bits."""
  assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
  assert str(a["treedef"]) == str(b["treedef"])
  for part in PARTS:  # each of them is there to compare, batch_stats too
    assert any(k.startswith(f"state/['{part}']") for k in a), (part, sorted(a))
  differ = {k: describe_difference(a[k], b[k]) for k in a if k != "treedef" and (
      (a[k].dtype, a[k].shape) != (b[k].dtype, b[k].shape) or not np.array_equal(a[k], b[k]))}
  assert not differ, differ


def assert_same_state(a: Any, b: Any) -> None:
  """Two TrainStates equal bit for bit (see assert_same_arrays)."""
  assert_same_arrays(state_arrays(a), state_arrays(b))


def _name(key: Any) -> str:
  return str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))


def saved_arrays(tree: Any) -> dict[str, np.ndarray]:
  """A state tree by leaf path, spelled alike for a live state (`checkpoint.state_to_tree`:
  namedtuples) and one read back from a checkpoint (dicts and lists): "opt_state/0/mu/..."."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  flat = {"/".join(_name(k) for k in path): np.asarray(v) for path, v in leaves}
  assert len(flat) == len(leaves)
  return flat


def assert_same_saved(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
  """Same leaf paths, and every array of the same dtype, shape and bits."""
  assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
  differ = {k: describe_difference(a[k], b[k]) for k in a
            if (a[k].dtype, a[k].shape) != (b[k].dtype, b[k].shape) or not np.array_equal(a[k], b[k])}
  assert not differ, differ
