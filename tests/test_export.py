"""cnn-jax export: ONNX files run by onnxruntime and StableHLO files reloaded in a fresh
process give cnn_jax's own predictions; batch norm is folded; nothing is overwritten.

The run is a tiny_cnn (two conv -> BN -> relu -> max pool blocks) trained on 28x28x3
images that its preprocessing pads to 32x32, with eval_flip: the file has to carry the
padding, the normalization, the mirror averaging and the folded batch norms.
"""
import collections
import json
import os
import shutil
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image

from cnn_jax import cli, export, inference, layers, models, onnx_export, predict
from cnn_jax.data import augment
from cnn_jax.training import trainer
from helpers import random_split, tiny_config

SHAPE = (28, 28, 3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, the run's predict.Predictor: cnn_jax's own eval forward pass)."""
  workdir = str(tmp_path_factory.mktemp("export") / "w")
  cfg = tiny_config("tiny_cnn", num_epochs=1, eval_flip=True,
                    **{"model_kwargs.widths": (8, 16), "dataset.image_size": (32, 32),
                       "dataset.mean": (0.2, 0.3, 0.4), "dataset.std": (0.5, 0.6, 0.7)})
  trainer.train_and_evaluate(cfg, workdir, random_split(64, shape=SHAPE),
                             random_split(32, shape=SHAPE, seed=2))
  return workdir, predict.from_run(*inference.load_run(workdir))


@pytest.fixture(scope="module")
def photo(tmp_path_factory, run):
  """A 50x40 colour picture saved as PNG, decoded and resized the way predict does."""
  path = tmp_path_factory.mktemp("photo") / "photo.png"
  yy, xx = np.mgrid[0:40, 0:50]
  img = np.stack([xx * 5, yy * 6, (xx + yy) * 3], -1).astype(np.uint8)
  img[10:25, 20:35] = (250, 30, 30)
  Image.fromarray(img).save(path)
  return run[1].load_image(str(path))[None]


def images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def export_cli(capsys, *argv):
  code = cli.main(["export", *map(str, argv)])
  out, err = capsys.readouterr()
  return code, out, err


def test_onnx_file_predicts_as_cnn_jax(run, photo, tmp_path, capsys):
  workdir, predictor = run
  out = tmp_path / "m.onnx"
  code, stdout, _ = export_cli(capsys, "--workdir", workdir, "--format", "onnx", "--out", out)
  assert code == 0 and "matches cnn_jax" in stdout
  model = onnx.load(str(out))
  ops = collections.Counter(n.op_type for n in model.graph.node)
  # two convs, twice (the image and its mirror, eval_flip), batch norm folded into them
  assert ops["Conv"] == 4 and "BatchNormalization" not in ops
  props = {p.key: json.loads(p.value) if p.key != "output" else p.value
           for p in model.metadata_props if p.key in ("class_names", "input_shape", "output")}
  assert props == {"class_names": list(predictor.class_names), "input_shape": list(SHAPE),
                   "output": "probabilities"}
  (inp,) = model.graph.input
  dims = inp.type.tensor_type.shape.dim
  assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
  assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(SHAPE)
  session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
  for x in (images(5), images(1, seed=1), photo):
    got = session.run(None, {"images": x})[0]
    want = np.asarray(predictor.probs(x))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_raw_onnx_takes_model_inputs_and_gives_logits(run, tmp_path, capsys):
  workdir, predictor = run
  out = tmp_path / "raw.onnx"
  code, _, _ = export_cli(capsys, "--workdir", workdir, "--format", "onnx", "--out", out,
                          "--raw", "--batch", 2)
  assert code == 0
  x = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)
  session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
  got = session.run(None, {"inputs": x})[0]
  m, v = predictor.model, predictor.variables  # eval_flip: the mean with the mirror image
  want = 0.5 * (m.apply(v, x, train=False) + m.apply(v, x[:, :, ::-1], train=False))
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
  with pytest.raises(Exception, match="dimension|shape|Got: 3"):  # a fixed batch of 2
    session.run(None, {"inputs": np.concatenate([x, x[:1]])})


def test_stablehlo_reloads_in_a_fresh_process_without_the_model_code(run, photo, tmp_path,
                                                                     capsys):
  workdir, predictor = run
  out = tmp_path / "m.stablehlo"
  code, stdout, _ = export_cli(capsys, "--workdir", workdir, "--format", "stablehlo",
                               "--out", out, "--platforms", "cpu")
  assert code == 0 and f"metadata in {out}.json" in stdout
  meta = json.loads((tmp_path / "m.stablehlo.json").read_text())
  assert meta["class_names"] == list(predictor.class_names) and meta["batch"] == "dynamic"
  inputs = [images(2), images(5, seed=4), photo]
  for i, x in enumerate(inputs):
    np.save(tmp_path / f"x{i}.npy", x)
  script = textwrap.dedent(f"""
      import json, sys
      import jax, numpy as np
      exported = jax.export.deserialize(bytearray(open({str(out)!r}, "rb").read()))
      np.savez({str(tmp_path / "y.npz")!r},
               *[np.asarray(exported.call(np.load(f"x{{i}}.npy"))) for i in range({len(inputs)})])
      print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}}
                              & {{"cnn_jax", "flax", "optax", "orbax"}})))
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == []  # only jax and numpy
  got = np.load(tmp_path / "y.npz")
  for i, x in enumerate(inputs):
    np.testing.assert_allclose(got[f"arr_{i}"], predictor.probs(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fmt,existing", [("onnx", "m.onnx"), ("stablehlo", "m.hlo"),
                                          ("stablehlo", "m.hlo.json")])
def test_an_existing_file_is_never_overwritten(run, tmp_path, capsys, fmt, existing):
  (tmp_path / existing).write_bytes(b"keep me")
  out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.hlo")
  code, _, err = export_cli(capsys, "--workdir", run[0], "--format", fmt, "--out", out)
  assert code == 1 and err.count("\n") == 1
  assert f"{tmp_path / existing} already exists" in err and "remove it or choose" in err
  assert (tmp_path / existing).read_bytes() == b"keep me"
  assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_a_detector_run_is_refused_in_one_line(run, tmp_path, capsys):
  workdir = tmp_path / "det"  # the run with every checkpoint's saved config a detector's
  shutil.copytree(run[0], workdir)
  for meta in workdir.glob("*/*/meta/metadata"):
    data = json.loads(meta.read_text())
    data["config"]["task"] = "detection"
    meta.write_text(json.dumps(data))
  code, _, err = export_cli(capsys, "--workdir", workdir, "--format", "onnx",
                            "--out", tmp_path / "d.onnx")
  assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
  assert (f"the run in {workdir} is a detection run: exporting detection models is not "
          "supported yet") in err
  assert not (tmp_path / "d.onnx").exists()


@pytest.mark.parametrize("argv,message", [
    ([], "the following arguments are required: --workdir, --format, --out"),
    (["--workdir", "w", "--format", "tflite", "--out", "f"], "invalid choice: 'tflite'"),
    (["--workdir", "w", "--format", "onnx", "--out", "f", "--batch", "0"],
     "--batch: expected a positive integer or 'dynamic', got '0'"),
    (["--workdir", "w", "--format", "onnx", "--out", "f", "--batch", "big"],
     "got 'big'"),
])
def test_bad_arguments_are_one_line(capsys, argv, message):
  code, _, err = export_cli(capsys, *argv)
  assert code == 1 and err.count("\n") == 1 and message in err, err


def test_fold_batch_norm_scales_the_kernel_by_hand_computed_factors():
  model = models.get_model("tiny_cnn", widths=(4,), num_classes=3)
  v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  rng = np.random.default_rng(0)
  v = {"params": jax.tree_util.tree_map(
      lambda a: rng.standard_normal(a.shape).astype(np.float32), v["params"]),
       "batch_stats": {"bn1": {"mean": rng.standard_normal(4).astype(np.float32),
                               "var": rng.uniform(0.1, 3, 4).astype(np.float32)}}}
  folded, apply, n = export.fold_batch_norm(model, v, (8, 8, 3))
  bn, stats = v["params"]["bn1"], v["batch_stats"]["bn1"]
  a = bn["scale"] / np.sqrt(stats["var"] + 1e-5)
  assert n == 1
  np.testing.assert_allclose(folded["params"]["conv1"]["kernel"],
                             v["params"]["conv1"]["kernel"] * a, rtol=1e-6)
  x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
  want = model.apply(v, x, train=False)
  np.testing.assert_allclose(apply(folded, x), want, rtol=1e-5, atol=1e-5)


class ReluBeforeNorm(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(layers.Conv2D(4, 3, name="conv")(x))
    return layers.batch_norm(train, name="bn")(x)


def test_a_batch_norm_not_right_after_a_conv_is_left_as_it_is():
  model = ReluBeforeNorm()
  v = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))
  v = {**v, "batch_stats": {"bn": {"mean": jnp.full(4, 0.5), "var": jnp.full(4, 2.0)}}}
  folded, apply, n = export.fold_batch_norm(model, v, (6, 6, 2))
  x = np.random.default_rng(1).standard_normal((2, 6, 6, 2)).astype(np.float32)
  assert n == 0
  np.testing.assert_array_equal(apply(folded, x), model.apply(v, x))


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((2, 7, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),   # ResNet's stem pool, odd sizes
    ((1, 6, 6, 2), (2, 2), (2, 2), ((0, 0), (0, 0))),
    ((1, 8, 5, 1), (3, 2), (1, 2), ((2, 0), (0, 1))),
])
def test_slice_max_pool_equals_flax_max_pool(shape, window, strides, padding):
  x = jnp.asarray(np.random.default_rng(2).standard_normal(shape) - 3.0, jnp.float32)
  got = onnx_export._slice_max(x, (1, *window, 1), (1, *strides, 1),
                               ((0, 0), *padding, (0, 0)), (1,) * 4, (1,) * 4)
  np.testing.assert_array_equal(got, nn.max_pool(x, window, strides, padding))


@pytest.mark.parametrize("config", [
    [(0, 0, 0), (2, 2, 0), (2, 2, 0), (0, 0, 0)],      # the eval preprocessing's 28 -> 32
    [(0, 0, 0), (-1, 2, 0), (3, -2, 0), (1, 0, 0)],    # negative padding crops
])
def test_concat_pad_equals_lax_pad(config):
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, 6, 3)), jnp.float32)
  got = onnx_export._concat_pad(x, jnp.float32(-7.5), config)
  np.testing.assert_array_equal(got, jax.lax.pad(x, jnp.float32(-7.5), config))


# ------------------------------------------------ the zoo: ONNX of every registered model
# The smallest input each model builds at (the 224x224 ones pool down to 1x1 anyway).
SMALL = {"alexnet": 64, "alexnet_original": 96, "zfnet": 64, "lenet5": 32}
# Models jax2onnx / onnxruntime cannot take, and why (docs/export.md lists them too).
UNSUPPORTED: dict[str, str] = {}
DEFAULT = ("mnist_cnn", "lenet5")  # the rest: -m slow (the run above has batch norm)


def zoo_case(name):
  marks = [] if name in DEFAULT else [pytest.mark.slow]
  if name in UNSUPPORTED:
    marks.append(pytest.mark.xfail(reason=UNSUPPORTED[name], strict=True))
  return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [zoo_case(n) for n in models.names()])
def test_zoo_model_in_onnx_equals_cnn_jax(name, tmp_path):
  """Random weights and batch-norm statistics, uint8 images through a normalization:
  onnxruntime's probabilities and raw logits equal cnn_jax's within 1e-4 of their scale."""
  h, w, c = models.input_shape(name)
  side = SMALL.get(name, 28 if c == 1 else 32)
  shape = (side, side, c)
  model = models.get_model(name, num_classes=10)
  v = jax.jit(lambda r: model.init(r, jnp.zeros((1, *shape)), train=False))(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)})
  rng = np.random.default_rng(1)
  v = jax.tree_util.tree_map_with_path(lambda p, a: np.asarray(
      rng.uniform(0.5, 2, a.shape) if "var" in str(p)
      else rng.normal(size=a.shape) * 0.3 if any(k in str(p) for k in ("mean", "scale", "bias"))
      else a, np.float32), v)
  p = predict.Predictor(model, v, augment.make_preprocess_fn(None, (0.5,) * c, (0.25,) * c),
                        shape)
  for raw in (False, True):
    ex = export.from_predictor(p, raw=raw)
    out = str(tmp_path / f"{name}-{raw}.onnx")
    with open(out, "wb") as f:
      f.write(export.to_onnx(ex, 2).SerializeToString())
    assert export.check(out, "onnx", ex, 2, seed=5) <= 1e-4
