"""ONNX through jax2onnx, for `cnn_jax.export`: the converter set up for the zoo's programs.

A leaf module (it imports nothing of cnn_jax), imported only when ONNX is asked for.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import pathlib
from typing import Any, Callable, Iterator

import jax
import jax.extend
import jax.numpy as jnp
from jax import lax

_FOREIGN_PLUGINS = ("jax2onnx.plugins.flax", "jax2onnx.plugins.equinox",
                    "jax2onnx.plugins.examples", "jax2onnx.plugins.dm_pix")
_LEFT_OUT = ("jax.numpy.shape",)  # makes jnp.shape(x) traced: flax's Dense cannot take it


@contextlib.contextmanager
def _jax2onnx() -> Iterator[Any]:
  """jax2onnx converting the traced lax program, with its JAX-primitive plugins only.

  Its Flax-module plugins swap flax.linen.max_pool for a keyword-only shim that fails on
  the zoo's positional, explicitly padded pooling, and its Equinox plugins build example
  models when imported (~30 s of small compilations on a 2-core CPU). So only the JAX
  plugins are imported, and plugins that something else in the process imported are left
  out of the registry while cnn_jax converts, as is the one that turns `jnp.shape(x)` into
  traced values (an ONNX Shape node; flax's nn.Dense sizes its kernel with it)."""
  try:
    import jax2onnx
    from jax2onnx.plugins import plugin_system as ps
  except ImportError as e:
    raise RuntimeError(f"ONNX export needs jax2onnx, onnx and onnxruntime ({e}): "
                       "pip install 'cnn_jax[export]'") from None
  if not ps._already_imported_plugins:
    ps._import_tree(pathlib.Path(ps.__file__).parent / "jax", "jax2onnx.plugins.jax")
    ps._already_imported_plugins = True
  foreign = {k: v for k, v in ps.PLUGIN_REGISTRY.items()
             if type(v).__module__.startswith(_FOREIGN_PLUGINS) or k in _LEFT_OUT}
  for k in foreign:
    del ps.PLUGIN_REGISTRY[k]
  serde = logging.getLogger("onnx_ir.serde")  # "value type ... not known": shape helpers
  level = serde.level
  serde.setLevel(logging.ERROR)
  try:
    yield jax2onnx
  finally:
    ps.PLUGIN_REGISTRY.update(foreign)
    serde.setLevel(level)


def _concat_pad(x: jax.Array, value: Any, config: Any) -> jax.Array:
  """`lax.pad` (no interior padding) as concatenated blocks of `value`: jax2onnx's Pad
  cannot take a symbolic batch size (the eval preprocessing pads, so do max pools)."""
  for axis, (lo, hi, interior) in enumerate(config):
    if interior:
      return lax.pad(x, value, config)
    if lo < 0 or hi < 0:  # negative padding crops
      x = lax.slice_in_dim(x, max(-lo, 0), x.shape[axis] - max(-hi, 0), axis=axis)
    one = jnp.full_like(lax.slice_in_dim(x, 0, 1, axis=axis), value)
    parts = [one] * max(lo, 0) + [x] + [one] * max(hi, 0)
    if len(parts) > 1:
      x = lax.concatenate(parts, axis)
  return x


def _slice_max(x: jax.Array, window_dimensions, window_strides, padding, base_dilation,
               window_dilation) -> jax.Array:
  """`lax.reduce_window_max` as the maximum of window-shifted strided slices of the input
  padded with -inf: exact (a max of the same numbers), and in ONNX Slice / Max ops."""
  if any(d != 1 for d in (*base_dilation, *window_dilation)):
    raise ValueError("a dilated max pool has no ONNX form here")
  x = _concat_pad(x, -jnp.inf, [(lo, hi, 0) for lo, hi in padding])
  out = None
  for offsets in itertools.product(*(range(w) for w in window_dimensions)):
    y = x
    for axis, (o, w, st) in enumerate(zip(offsets, window_dimensions, window_strides)):
      if w == 1 and st == 1:
        continue  # the batch and channel axes, whole (their size may be symbolic)
      n = (x.shape[axis] - w) // st + 1
      y = lax.slice_in_dim(y, o, o + (n - 1) * st + 1, st, axis)
    out = y if out is None else jnp.maximum(out, y)
  return out


def _pools_as_slices(fn: Callable[[jax.Array], jax.Array], spec: jax.ShapeDtypeStruct
                     ) -> Callable[[jax.Array], jax.Array]:
  """`fn` with every reduce_window_max (max pool) computed by `_slice_max` and every pad
  by `_concat_pad`.

  jax2onnx writes a max pool over NHWC as a MaxPool over four spatial axes, which
  onnxruntime refuses ("Unsupported pooling size"); the program traced here (before the
  converter patches jax.nn functions) is re-run with the pool replaced, jit and
  custom_jvp bodies inlined, everything else bound as traced. A symbolic batch size must
  be the one object in `spec` and in the converter's input, so shapes stay in one scope."""
  closed = jax.make_jaxpr(fn)(spec)

  def run(jaxpr: Any, consts: Any, *args: Any) -> list[Any]:
    env: dict[Any, Any] = {}
    read = lambda v: v.val if isinstance(v, jax.extend.core.Literal) else env[v]
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
      if eqn.primitive.name == "reduce_window_max":
        outs = [_slice_max(*ins, **eqn.params)]
      elif eqn.primitive.name == "pad":
        outs = [_concat_pad(*ins, eqn.params["padding_config"])]
      elif eqn.primitive.name in ("jit", "pjit", "custom_jvp_call") and sub is not None:
        outs = run(sub.jaxpr, sub.consts, *ins)
      else:
        outs = eqn.primitive.bind(*ins, **eqn.params)
        outs = outs if eqn.primitive.multiple_results else [outs]
      env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]

  return lambda x: run(closed.jaxpr, closed.consts, x)[0]


def convert(fn: Callable[[jax.Array], jax.Array], spec: jax.ShapeDtypeStruct,
            metadata: dict[str, Any], name: str, input_name: str, output_name: str) -> Any:
  """`fn` on inputs like `spec` (its batch size may be symbolic) as an `onnx.ModelProto`
  (opset 23), `metadata` in its metadata_props (non-strings as JSON text)."""
  import onnx
  with _jax2onnx() as j2o:
    proto = j2o.to_onnx(_pools_as_slices(fn, spec), [spec], model_name=name,
                        input_names=[input_name], output_names=[output_name])
  onnx.helper.set_model_props(proto, {k: v if isinstance(v, str) else json.dumps(v)
                                      for k, v in metadata.items()})
  return proto
