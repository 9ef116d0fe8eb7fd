"""Classify image files with a trained run or imported weights (`cnn-jax predict`)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclass
class Predictor:
  """A jitted image -> probabilities function and what it needs to read an image."""
  probs_fn: Callable[[jax.Array], jax.Array]
  input_shape: tuple[int, int, int]
  class_names: Optional[Sequence[str]]

  def load_image(self, path: str) -> np.ndarray:
    """Decode, convert to the model's channels and resize (bilinear) to its input size."""
    from PIL import Image
    h, w, c = self.input_shape
    try:
      img = Image.open(path)
    except OSError as e:  # missing, unreadable or not an image
      raise ValueError(f"cannot read image {path}: {e}") from e
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr

  def top_k(self, path: str, k: int = 5) -> tuple[list[tuple[int, float]], float]:
    """[(class index, probability)] best first, and the seconds the forward pass took."""
    x = jnp.asarray(self.load_image(path)[None])
    jax.block_until_ready(self.probs_fn(x))  # compile outside the timing
    t = time.perf_counter()
    probs = np.asarray(jax.block_until_ready(self.probs_fn(x)))[0]
    seconds = time.perf_counter() - t
    order = np.argsort(-probs)[:k]
    return [(int(i), float(probs[i])) for i in order], seconds


def _jit_probs(model: Any, variables: Any, preprocess: Callable) -> Callable:
  @jax.jit
  def probs(images):
    x = preprocess(images, jax.random.key(0), False)
    return jax.nn.softmax(model.apply(variables, x, train=False))
  return probs


def from_workdir(workdir: str) -> Predictor:
  """The best checkpoint of a run, with its data set's normalization and class names."""
  from cnn_jax import inference, models
  from cnn_jax.data import augment, input_pipeline
  model, variables, config = inference.load(workdir)
  mean, std = input_pipeline.normalization(config.dataset.name)
  shape = tuple(config.model_input_shape or models.input_shape(config.model))
  pre = augment.make_preprocess_fn(None, mean, std)
  names = None
  try:
    builder = input_pipeline._builder(config.dataset.name, config.dataset.data_dir)
    names = builder.info.features["label"].names
  except Exception:  # noqa: BLE001 - names are a nicety; indices still print
    pass
  return Predictor(_jit_probs(model, variables, pre), shape, names)


def from_weights(model_name: str, weights: str) -> Predictor:
  """A zoo model with a torchvision state dict (ImageNet normalization)."""
  from cnn_jax import models
  from cnn_jax.data import augment, input_pipeline
  from cnn_jax.weights import check_variables, torch_import
  if not weights:
    raise ValueError("--model needs --weights FILE (a torchvision .pth state dict)")
  model = models.get_model(model_name)
  shape = models.input_shape(model_name)
  variables = torch_import.load_torchvision_pth(weights, model_name)
  check_variables(model, variables, shape)
  pre = augment.make_preprocess_fn(None, *input_pipeline.IMAGENET_MEAN_STD)
  return Predictor(_jit_probs(model, variables, pre), shape, None)


def read_labels(path: str) -> list[str]:
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]
