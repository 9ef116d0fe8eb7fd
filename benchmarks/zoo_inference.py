"""Inference images/s at batch 32, 224x224x3: cnn_jax (jit) vs the same Keras model.

  python benchmarks/zoo_inference.py [--models resnet18,resnet50,vgg16] [--batch 32]
                                     [--iters 3] [--rounds 3] [--json out.json]

Pairs (same architecture, so the same FLOPs):
  resnet18  ours `resnet18`        vs a Keras functional ResNet-18 built here (torchvision
                                      layout; keras.applications has no ResNet-18)
  resnet50  ours `resnet50_keras`  vs keras.applications.ResNet50 (its v1 layout), with
                                      Keras' weights copied into ours and the logits checked
  vgg16     ours `vgg16`           vs keras.applications.VGG16, weights copied and checked
Keras is timed with `model.predict(x, batch_size=batch)` (what users call) and with a
direct `model(x, training=False)` call; JAX with a jitted apply and block_until_ready.
Rounds alternate the frameworks so both see the same machine state; the median round
is reported. Compilation / first calls are excluded. Random weights: speed does not
depend on them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def keras_resnet18(keras, num_classes=1000):
  """torchvision's ResNet-18 in the Keras functional API (no biases, BN eps 1e-5)."""
  L = keras.layers

  def bn(x):
    return L.BatchNormalization(epsilon=1e-5)(x)

  def block(x, planes, stride):
    y = L.ZeroPadding2D(1)(x)
    y = L.ReLU()(bn(L.Conv2D(planes, 3, stride, use_bias=False)(y)))
    y = L.ZeroPadding2D(1)(y)
    y = bn(L.Conv2D(planes, 3, use_bias=False)(y))
    if stride != 1 or x.shape[-1] != planes:
      x = bn(L.Conv2D(planes, 1, stride, use_bias=False)(x))
    return L.ReLU()(L.Add()([x, y]))

  inp = keras.Input((224, 224, 3))
  x = L.ZeroPadding2D(3)(inp)
  x = L.ReLU()(bn(L.Conv2D(64, 7, 2, use_bias=False)(x)))
  x = L.MaxPooling2D(3, 2)(L.ZeroPadding2D(1)(x))
  for i, planes in enumerate((64, 128, 256, 512)):
    x = block(x, planes, 1 if i == 0 else 2)
    x = block(x, planes, 1)
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inp, L.Dense(num_classes)(x), name="resnet18")


def build(name, keras):
  """(our model name, flax model, variables, keras model)."""
  import jax
  import jax.numpy as jnp
  from cnn_jax import models
  from cnn_jax.weights import keras_import
  if name == "resnet18":
    km = keras_resnet18(keras)
    ours = "resnet18"
    model = models.get_model(ours)
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))()
    return ours, model, variables, km
  if name == "resnet50":
    km = keras.applications.ResNet50(weights=None, classifier_activation=None)
    ours = "resnet50_keras"
    return ours, models.get_model(ours), keras_import.resnet50_from_keras(km), km
  if name == "vgg16":
    km = keras.applications.VGG16(weights=None, classifier_activation=None)
    return "vgg16", models.get_model("vgg16"), keras_import.vgg_from_keras(km), km
  raise ValueError(f"unknown model {name!r}")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default="resnet18,resnet50,vgg16")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--iters", type=int, default=3, help="batches per timed round")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--json", default=None)
  args = ap.parse_args()

  import jax
  import keras
  import tensorflow as tf

  rs = np.random.RandomState(0)
  x = rs.normal(size=(args.batch, 224, 224, 3)).astype(np.float32)
  results = []
  for name in args.models.split(","):
    ours, model, variables, km = build(name, keras)
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    xj = jax.device_put(x)
    t = time.perf_counter()
    out_j = np.asarray(fwd(variables, xj))
    compile_s = time.perf_counter() - t
    out_k = km.predict(x, batch_size=args.batch, verbose=0)
    km(x, training=False)  # trace the direct call too
    parity = None
    if name != "resnet18":  # weights are shared: the logits must agree
      parity = float(np.abs(out_j - out_k).max() / max(np.abs(out_k).max(), 1e-12))

    def time_jax():
      t = time.perf_counter()
      for _ in range(args.iters):
        fwd(variables, xj).block_until_ready()
      return time.perf_counter() - t

    def time_predict():
      t = time.perf_counter()
      for _ in range(args.iters):
        km.predict(x, batch_size=args.batch, verbose=0)
      return time.perf_counter() - t

    def time_call():
      t = time.perf_counter()
      for _ in range(args.iters):
        np.asarray(km(x, training=False))
      return time.perf_counter() - t

    rounds = {"jax": [], "keras_predict": [], "keras_call": []}
    for _ in range(args.rounds):
      rounds["jax"].append(time_jax())
      rounds["keras_predict"].append(time_predict())
      rounds["keras_call"].append(time_call())
    ips = {k: args.batch * args.iters / statistics.median(v) for k, v in rounds.items()}
    row = {"model": name, "ours": ours, "jax_img_s": ips["jax"],
           "keras_predict_img_s": ips["keras_predict"], "keras_call_img_s": ips["keras_call"],
           "jax_compile_s": compile_s, "relative_logit_diff": parity}
    results.append(row)
    print(json.dumps(row), flush=True)
    km = variables = None  # free this model before building the next
    keras.backend.clear_session()

  print(f"\nbatch {args.batch}, 224x224x3, float32, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), jax {jax.__version__}, "
        f"tensorflow {tf.__version__}, keras {keras.__version__}; median of {args.rounds} "
        f"rounds of {args.iters} batches\n")
  print("| model | cnn_jax jit (img/s) | Keras predict (img/s) | Keras model(x) (img/s) "
        "| JAX / predict | logits rel. diff |")
  print("|---|---|---|---|---|---|")
  for r in results:
    diff = "-" if r["relative_logit_diff"] is None else f"{r['relative_logit_diff']:.1e}"
    print(f"| {r['model']} (ours: {r['ours']}) | {r['jax_img_s']:.1f} | "
          f"{r['keras_predict_img_s']:.1f} | {r['keras_call_img_s']:.1f} | "
          f"{r['jax_img_s'] / r['keras_predict_img_s']:.2f}x | {diff} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
