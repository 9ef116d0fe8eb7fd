"""Data parallelism: one training loop, two ways to spread it over devices.

* ``sharded`` (default): `jax.jit` over a 1-D ("data",) device `Mesh`. The batch is
  sharded along its first axis, the state is replicated, and XLA inserts the gradient
  all-reduce. The loop only ever names the "data" axis (batch `P("data")`, state
  `P()`), so a later "model" axis is a second mesh dimension plus parameter specs,
  without touching the loop.
* ``pmap``: `jax.pmap` over the local devices with axis name "batch". The state goes
  in with `in_axes=None` and comes back with `out_axes=None` (replicated, no manual
  replicate / unreplicate); `train_step` averages gradients, metrics and batch-norm
  statistics with `lax.pmean`.

Both call the same `steps.train_step` / `steps.eval_step`.
"""
from __future__ import annotations

import collections
import functools
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

PMAP_AXIS = "batch"
DATA_AXIS = "data"
MODES = ("sharded", "pmap")


def make_mesh(devices: Any = None) -> Mesh:
  """A 1-D mesh over all (global) devices with the single axis "data".

  `jax.make_mesh` (it orders devices for the interconnect). Its axes default to Explicit
  sharding in jax 0.10, where reshaping a batch sharded along its first axis is an
  error; the steps rely on XLA propagating shardings, so the axis is Auto.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def _host_local(x: Any) -> bool:
  """An array on this process's devices only (on one process, every array is)."""
  return isinstance(x, jax.Array) and x.is_fully_addressable


def global_view(tree: Any) -> Any:
  """`tree` as orbax saves it: arrays over every process's devices. Under pmap on several
  processes the state is host-local (each process holds the whole, replicated value on its
  own devices), which orbax refuses to save ("Cannot serialize host local jax.Array"): each
  such leaf becomes one array replicated over all devices. Global arrays (sharded mode),
  and everything on a single process, pass unchanged."""
  if jax.process_count() == 1:
    return tree
  mesh = make_mesh()
  return jax.tree_util.tree_map(
      lambda x: multihost_utils.host_local_array_to_global_array(x, mesh, P())
      if _host_local(x) else x, tree)


def restore_shardings(tree: Any) -> Optional[Any]:
  """Where orbax restores `tree`'s leaves: None (their own shardings) unless some are
  host-local on several processes (pmap), which are restored replicated over all devices
  and then brought back with `host_local_view`."""
  if jax.process_count() == 1 or not any(map(_host_local, jax.tree_util.tree_leaves(tree))):
    return None
  everywhere = NamedSharding(make_mesh(), P())
  return jax.tree_util.tree_map(
      lambda x: everywhere if _host_local(x) else getattr(x, "sharding", None), tree)


def host_local_view(restored: Any, like: Any) -> Any:
  """The leaves of `restored` whose counterpart in `like` is host-local, as host-local
  arrays again (the inverse of `global_view`)."""
  if jax.process_count() == 1:
    return restored
  mesh = make_mesh()
  return jax.tree_util.tree_map(
      lambda r, x: multihost_utils.global_array_to_host_local_array(r, mesh, P())
      if _host_local(x) else r, restored, like)


def agree(value: int, reduce: Callable[[list[int]], int]) -> int:
  """The same integer on every process: `reduce` (min / max) over all processes' values.

  Used wherever processes must take the same branch (steps per epoch, eval batches, a
  signal, which checkpoint to restore), or one of them waits forever in a collective.
  """
  if jax.process_count() == 1:
    return int(value)
  return int(reduce(np.asarray(multihost_utils.process_allgather(np.int32(value))).tolist()))


def check_batch_size(global_batch: int, what: str = "batch_size") -> int:
  """Per-process batch; errors if the device count does not divide the global batch."""
  if global_batch <= 0:
    raise ValueError(f"{what} must be a positive integer, got {global_batch}")
  n_dev, n_proc = jax.device_count(), jax.process_count()
  if global_batch % n_dev:
    raise ValueError(
        f"{what}={global_batch} is not divisible by the {n_dev} devices; use a multiple of "
        f"{n_dev} (e.g. {max(n_dev, global_batch // n_dev * n_dev)}).")
  return global_batch // n_proc


@dataclass
class Compiled:
  """The compiled pieces the loop needs, whatever the parallel mode."""
  mode: str
  init_state: Callable[[jax.Array], Any]
  train_step: Callable[[Any, dict], tuple[Any, dict]]
  eval_step: Callable[[Any, dict], dict]
  put_batch: Callable[[dict], dict]
  state_sharding: Any
  # (state, data, {"index"}) -> (state, metrics): the train step on the batch gathered
  # from a split kept on the device (`data.on_device`); sharded mode only, else None.
  train_from_index: Optional[Callable[[Any, dict, dict], tuple[Any, dict]]] = None
  replicated: Any = None  # where on_device keeps the split


def compile_steps(mode: str, init_fn: Callable[[jax.Array], Any], train_fn: Callable,
                  eval_fn: Callable, mesh: Mesh | None = None) -> Compiled:
  """Compile init / train / eval for `mode`.

  train_fn(state, batch, axis_name=...) and eval_fn(state, batch, axis_name=...) are the
  pure steps with everything else bound.
  """
  if mode == "sharded":
    mesh = mesh or make_mesh()
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    state_sharding = jax.tree_util.tree_map(lambda _: replicated, abstract)
    init = jax.jit(init_fn, out_shardings=state_sharding)
    train = jax.jit(functools.partial(train_fn, axis_name=None),
                    in_shardings=(state_sharding, batch_sharding),
                    out_shardings=(state_sharding, replicated), donate_argnums=0)
    evaluate = jax.jit(functools.partial(eval_fn, axis_name=None),
                       in_shardings=(state_sharding, batch_sharding), out_shardings=replicated)

    def train_gathered(state, data, index_batch):
      batch = {k: v[index_batch["index"]] for k, v in data.items()}
      return train_fn(state, batch, axis_name=None)

    train_from_index = jax.jit(train_gathered, donate_argnums=0,
                               in_shardings=(state_sharding, replicated, batch_sharding),
                               out_shardings=(state_sharding, replicated))

    def put_batch(batch):
      return {k: jax.make_array_from_process_local_data(batch_sharding, v)
              for k, v in batch.items()}

    return Compiled(mode, init, train, evaluate, put_batch, state_sharding, train_from_index,
                    replicated)

  if mode == "pmap":
    n_local = jax.local_device_count()
    local = jax.make_mesh((n_local,), (PMAP_AXIS,), axis_types=(AxisType.Auto,),
                          devices=jax.local_devices())
    per_device = NamedSharding(local, P(PMAP_AXIS))
    init = jax.jit(init_fn)
    train = jax.pmap(functools.partial(train_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
                     in_axes=(None, 0), out_axes=(None, None))
    evaluate = jax.pmap(functools.partial(eval_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
                        in_axes=(None, 0), out_axes=None)

    def put_batch(batch):
      # (n_local, per_device, ...) with row i already on local device i: the copy starts
      # now (asynchronously, so prefetch overlaps it with the running step), and pmap
      # finds each slice where it needs it.
      return {k: jax.device_put(v.reshape((n_local, v.shape[0] // n_local) + v.shape[1:]),
                                per_device) for k, v in batch.items()}

    return Compiled(mode, init, train, evaluate, put_batch, None)

  raise ValueError(f"unknown parallel mode {mode!r}; choose one of {MODES}")


def prefetch(batches: Iterable[dict], put: Callable[[dict], dict], size: int = 2) -> Iterator[dict]:
  """Yield device batches while the next `size` are already being copied to the devices.

  Transfers are asynchronous, so with a queue of two the device never waits for the
  host as long as the host can produce batches as fast as the device consumes them.
  """
  queue: collections.deque = collections.deque()
  it = iter(batches)
  for batch in itertools.islice(it, size):
    queue.append(put(batch))
  while queue:
    yield queue.popleft()
    for batch in itertools.islice(it, 1):
      queue.append(put(batch))
