"""Take a trained classification run out of JAX: ONNX (`jax2onnx`) or StableHLO (`jax.export`).

    cnn-jax export --workdir W [--which best|latest] --format onnx|stablehlo --out FILE
                   [--batch N|dynamic] [--raw]

What the file computes is the run's evaluation forward pass (`steps.eval_logits`: its eval
preprocessing, `eval_flip`, the model in eval mode): uint8 NHWC images of the shape the data
set stores in, class probabilities out; with `--raw`, float32 model inputs (already
preprocessed) in, logits out. It computes in float32 (a bfloat16 run's float32 weights);
every batch norm that directly follows a convolution is folded into it (kernel scaled, one
bias added), so the file holds no running statistics for it. The weights are constants of
the file.

The run is read by `cnn_jax.load`, whose predictor (eval preprocessing, flip, class names)
is the one `cnn-jax predict` uses (`_load` is the one place this module depends on it).
Host-side eval ops (`dataset.pp_eval`, e.g. a resize and centre crop of full-size photos)
run before the model in cnn_jax too and are not in the file; they are named in its
metadata.

Class names and the input description go in the ONNX file's metadata_props; a StableHLO
file (serialized `jax.export.Exported`, which has no free-form metadata) gets them in a
sidecar `FILE.json`. Every export is checked before it is reported: the written file is run
(onnxruntime / `jax.export.deserialize`) on a random batch and compared with cnn_jax.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import re
from typing import Any, Callable, Iterator, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import inference, layers, predict
from cnn_jax.training import steps

FORMATS = ("onnx", "stablehlo")
# The default --platforms of a StableHLO export: lowered for each, so one file serves all.
PLATFORMS = ("cpu", "cuda", "tpu")


@dataclasses.dataclass(frozen=True)
class Exportable:
  """A forward pass ready to export, and cnn_jax's own one to check the file against."""
  fn: Callable[[jax.Array], jax.Array]  # exported: batch norm folded, weights as constants
  reference: Callable[[jax.Array], jax.Array]  # cnn_jax's eval forward, nothing folded
  input_shape: tuple[int, int, int]  # (H, W, C) of one input
  input_dtype: Any  # uint8 images, or float32 model inputs with raw
  metadata: dict[str, Any]  # JSON values; ONNX metadata_props hold them as JSON text


# --------------------------------------------------------------- batch-norm folding
def _path(module: nn.Module) -> tuple[str, ...]:
  return tuple(module.scope.path)


def _at(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _foldable_pairs(model: nn.Module, variables: Any, input_shape: tuple[int, ...]
                    ) -> dict[tuple[str, ...], tuple[tuple[str, ...], float]]:
  """{batch-norm path: (conv path, epsilon)} of every eval-mode BatchNorm over the last
  axis whose input is, unchanged, the output of a `layers.Conv2D`: traced once (shapes
  only), the conv's output array is the very object the batch norm receives."""
  conv_out: dict[int, tuple[tuple[str, ...], Any]] = {}
  pairs: dict[tuple[str, ...], tuple[tuple[str, ...], float]] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    m = context.module
    if context.method_name != "__call__":
      return out
    if isinstance(m, layers.Conv2D):
      conv_out[id(out)] = (_path(m), out)  # the array is kept, so its id stays unique
    elif (isinstance(m, nn.BatchNorm) and m.use_running_average and m.axis in (-1, 3)
          and args and id(args[0]) in conv_out):
      pairs[_path(m)] = (conv_out[id(args[0])][0], float(m.epsilon))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                   jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  return pairs


def fold_batch_norm(model: nn.Module, variables: Any, input_shape: tuple[int, ...]
                    ) -> tuple[Any, Callable[..., jax.Array], int]:
  """(folded variables, their apply function, how many batch norms were folded).

  Each conv -> eval batch norm pair becomes one conv whose kernel is scaled by
  a = scale / sqrt(var + eps) per output channel, followed by the shift
  b = bias - mean * a (+ a * the conv's own bias), computed in float64 and rounded to
  float32 once. The batch norm then only adds b: the file computes conv(x, k * a) + b,
  with no running statistics in it. A conv whose output also went elsewhere would be
  folded wrongly: `check` compares every exported file with the unfolded model."""
  pairs = _foldable_pairs(model, variables, input_shape)
  params = jax.tree_util.tree_map(np.array, nn.unbox(variables["params"]))  # copies
  stats = variables.get("batch_stats", {})
  shifts: dict[tuple[str, ...], np.ndarray] = {}
  for bn_path, (conv_path, eps) in pairs.items():
    bn, conv = _at(params, bn_path), _at(params, conv_path)
    mean = np.asarray(_at(stats, bn_path)["mean"], np.float64)
    var = np.asarray(_at(stats, bn_path)["var"], np.float64)
    a = np.asarray(bn.get("scale", 1.0), np.float64) / np.sqrt(var + eps)
    b = np.asarray(bn.get("bias", 0.0), np.float64) - mean * a
    conv["kernel"] = (conv["kernel"].astype(np.float64) * a).astype(np.float32)
    if "bias" in conv:
      b = b + conv["bias"].astype(np.float64) * a
      conv["bias"] = np.zeros_like(conv["bias"])
    shifts[bn_path] = b.astype(np.float32)
  folded = {**variables, "params": params}

  def shift_instead(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, nn.BatchNorm):
      b = shifts.get(_path(context.module))
      if b is not None:
        return args[0] + jnp.asarray(b, args[0].dtype)
    return next_fun(*args, **kwargs)

  def apply(v: Any, x: jax.Array, train: bool = False) -> jax.Array:
    with nn.intercept_methods(shift_instead):
      return model.apply(v, x, train=train)
  return folded, apply, len(pairs)


# ------------------------------------------------------------------ what is exported
def _load(workdir: str, which: str) -> tuple[predict.Predictor, Any, dict[str, Any]]:
  """(predictor, config, meta) of a classification run, read by `cnn_jax.load` (its
  predictor is what `cnn-jax predict` uses: eval preprocessing, flip, class names)."""
  try:
    run = inference.load(workdir, which, task="classification")
  except ValueError as e:  # "the run in W is a detection run, not a classification one: ..."
    other = re.match(r"the run in .* is an? (\w+) run, not a classification one", str(e))
    if other is None:
      raise
    raise ValueError(f"the run in {workdir} is a {other[1]} run: exporting {other[1]} models "
                     "is not supported yet (cnn-jax export takes classification runs)") from None
  return run.predictor, run.config, run.meta


def from_predictor(p: predict.Predictor, raw: bool = False,
                   metadata: Optional[dict[str, Any]] = None) -> Exportable:
  """The export of a Predictor's forward pass (`steps.eval_logits`, as `cnn-jax predict`):
  images -> probabilities, or with raw, preprocessed float32 inputs -> logits."""
  model = p.model
  if getattr(model, "dtype", jnp.float32) != jnp.float32:
    model = model.clone(dtype=jnp.float32)  # float32 weights, computed in float32
  images = jax.ShapeDtypeStruct((1, *p.image_shape), jnp.uint8)
  model_shape = tuple(jax.eval_shape(lambda x: p.preprocess(x, jax.random.key(0), False),
                                     images).shape[1:])
  folded, folded_apply, n_folded = fold_batch_norm(model, p.variables, model_shape)
  preprocess = None if raw else p.preprocess

  def forward(apply_fn: Callable[..., jax.Array]) -> Callable[[Any, jax.Array], jax.Array]:
    def fn(variables: Any, x: jax.Array) -> jax.Array:
      logits = steps.eval_logits(apply_fn, variables, x, preprocess=preprocess,
                                 matmul_precision=p.matmul_precision, flip=p.flip)
      return logits if raw else jax.nn.softmax(logits.astype(jnp.float32))
    return fn

  # The reference takes its weights as an argument: as constants, XLA spends minutes
  # folding them when it compiles a large model (see predict._jit_probs).
  reference = functools.partial(jax.jit(forward(model.apply)), p.variables)

  names = list(p.class_names) if p.class_names else []
  info = {"class_names": names,
          "input": ("float32 NHWC model input, preprocessed" if raw
                    else "uint8 NHWC images as the data set stores them"),
          "input_shape": list(model_shape if raw else p.image_shape),
          "output": "logits" if raw else "probabilities",
          "host_preprocessing": "" if raw else p.host_pp,
          "eval_flip": bool(p.flip),
          "batch_norm": f"{n_folded} folded into the convolution before it",
          **(metadata or {})}
  return Exportable(functools.partial(forward(folded_apply), folded), reference,
                    model_shape if raw else p.image_shape,
                    jnp.float32 if raw else jnp.uint8, info)


def from_workdir(workdir: str, which: str = "best", raw: bool = False) -> Exportable:
  p, config, meta = _load(workdir, which)
  return from_predictor(p, raw, {"source": f"{workdir} ({which}, epoch {meta.get('epoch')})",
                                 "model": str(config.model)})


# ------------------------------------------------------------------------ formats
def _input_spec(ex: Exportable, batch: Union[int, str], symbol: Any) -> jax.ShapeDtypeStruct:
  """One input of `batch` examples; "dynamic": of `symbol` (a `symbolic_shape`) examples."""
  lead = symbol if batch == "dynamic" else int(batch)
  return jax.ShapeDtypeStruct((lead, *ex.input_shape), ex.input_dtype)


@contextlib.contextmanager
def _batch_hint(batch: Union[int, str]) -> Iterator[None]:
  """A model whose code needs a concrete batch size, said in one line with what to do."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 - the tracer's error, said with the fix
    if batch != "dynamic":
      raise
    first = (str(e).strip().splitlines() or [""])[0][:200]
    raise ValueError(f"the model cannot be traced with a symbolic batch dimension "
                     f"({type(e).__name__}: {first}); export a fixed one with --batch N") from e


def to_stablehlo(ex: Exportable, batch: Union[int, str] = "dynamic",
                 platforms: tuple[str, ...] = PLATFORMS) -> bytes:
  """Serialized `jax.export.Exported`: reload with `jax.export.deserialize(data).call(x)`,
  no model code needed; lowered for each of `platforms`."""
  with _batch_hint(batch):
    exported = jax.export.export(jax.jit(ex.fn), platforms=platforms)(
        _input_spec(ex, batch, jax.export.symbolic_shape("batch")[0]))
  return bytes(exported.serialize())


def to_onnx(ex: Exportable, batch: Union[int, str] = "dynamic", name: str = "cnn_jax") -> Any:
  """An `onnx.ModelProto` (opset 23) with `ex.metadata` in its metadata_props."""
  from cnn_jax import onnx_export  # noqa: PLC0415 - jax2onnx, onnx: only for ONNX
  raw = ex.input_dtype != jnp.uint8
  with _batch_hint(batch):
    spec = _input_spec(ex, batch, jax.export.symbolic_shape("batch")[0])
    return onnx_export.convert(ex.fn, spec, ex.metadata, name,
                               "inputs" if raw else "images", "logits" if raw else "probabilities")


def run_file(path: str, fmt: str, x: np.ndarray) -> np.ndarray:
  """The output of an exported file on `x`: onnxruntime (CPU) or `jax.export.deserialize`."""
  if fmt == "onnx":
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]
  with open(path, "rb") as f:
    return np.asarray(jax.export.deserialize(bytearray(f.read())).call(x))


def check(path: str, fmt: str, ex: Exportable, batch: int, seed: int = 0) -> float:
  """max |file - cnn_jax| / max |cnn_jax| on a random batch (uniform uint8 images, or
  standard-normal raw inputs): the exported file against the unfolded model."""
  rng = np.random.default_rng(seed)
  shape = (batch, *ex.input_shape)
  x = (rng.integers(0, 256, shape, dtype=np.uint8) if ex.input_dtype == jnp.uint8
       else rng.standard_normal(shape, dtype=np.float32))
  want = np.asarray(ex.reference(x), np.float64)
  got = np.asarray(run_file(path, fmt, x), np.float64)
  if got.shape != want.shape:
    raise RuntimeError(f"{path} gives shape {got.shape} on {shape} inputs, cnn_jax {want.shape}")
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def sidecar(path: str) -> str:
  """Where a StableHLO file's metadata goes: FILE.json next to it."""
  return f"{path}.json"


def _refuse_existing(out: str, fmt: str) -> None:
  if fmt not in FORMATS:
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
  for t in [out] + ([sidecar(out)] if fmt == "stablehlo" else []):
    if os.path.exists(t):
      raise FileExistsError(f"{t} already exists: cnn-jax export never overwrites a file; "
                            "remove it or choose another --out")


def write(ex: Exportable, fmt: str, out: str, batch: Union[int, str] = "dynamic",
          platforms: tuple[str, ...] = PLATFORMS, tolerance: float = 1e-4) -> dict[str, Any]:
  """Export `ex` to `out` (never over an existing file), check it, and say what was done.

  A file that differs from cnn_jax by more than `tolerance` (relative to the output's
  scale) is removed again and the export is an error."""
  _refuse_existing(out, fmt)
  data = (to_stablehlo(ex, batch, platforms) if fmt == "stablehlo"
          else to_onnx(ex, batch).SerializeToString())
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  written = []
  try:
    with open(out, "xb") as f:
      written.append(out)
      f.write(data)
    if fmt == "stablehlo":
      info = {**ex.metadata, "platforms": list(platforms), "batch": batch}
      with open(sidecar(out), "x") as f:
        written.append(sidecar(out))
        json.dump(info, f, indent=2)
    n = 3 if batch == "dynamic" else int(batch)
    diff = check(out, fmt, ex, n)
    if not diff <= tolerance:
      raise RuntimeError(f"the exported file differs from cnn_jax by {diff:.2e} (relative), "
                         f"more than {tolerance:g}: not kept")
  except BaseException:
    for t in written:
      os.remove(t)
    raise
  return {"out": out, "format": fmt, "bytes": len(data), "batch": str(batch),
          "relative_difference": diff, "checked_batch": n,
          **({"metadata": sidecar(out)} if fmt == "stablehlo" else {})}


# --------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> None:  # one line through cli.main, not usage + exit 2
    raise ValueError(message)


def _batch(text: str) -> Union[int, str]:
  if text == "dynamic":
    return text
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer or 'dynamic', got {text!r}")
  return int(text)


def main(argv: list[str]) -> int:
  p = _Parser("cnn-jax export", description="Export a trained classification run to ONNX or "
              "StableHLO, checked against cnn_jax.")
  p.add_argument("--workdir", required=True)
  p.add_argument("--which", default="best", choices=["best", "latest"])
  p.add_argument("--format", required=True, choices=FORMATS)
  p.add_argument("--out", required=True, help="the file to write (never overwritten)")
  p.add_argument("--batch", type=_batch, default="dynamic", help="N, or dynamic (default)")
  p.add_argument("--raw", action="store_true", help="preprocessed float32 in, logits out")
  p.add_argument("--platforms", default=",".join(PLATFORMS),
                 help="StableHLO: the platforms to lower for (default cpu,cuda,tpu)")
  args = p.parse_args(argv)
  platforms = tuple(s for s in args.platforms.split(",") if s)
  _refuse_existing(args.out, args.format)  # before the run is read
  ex = from_workdir(args.workdir, args.which, args.raw)
  r = write(ex, args.format, args.out, args.batch, platforms)
  print(f"{r['out']}: {r['format']}, {r['bytes']:,} bytes, batch {r['batch']}, "
        f"{ex.metadata['output']}; matches cnn_jax to {r['relative_difference']:.1e} "
        f"(relative, batch of {r['checked_batch']})"
        + (f"; metadata in {r['metadata']}" if "metadata" in r else ""))
  return 0
