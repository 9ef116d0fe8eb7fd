"""Classify image files with a trained run or imported weights (`cnn-jax predict`).

An image is brought to the shape its data set stores (28x28x1 for MNIST, whatever the
model's input size) and then goes through the same preprocessing as in training
(`augment.preprocess_from_config`), so that e.g. a LeNet trained on digits zero-padded
28 -> 32 is shown padded digits, not digits stretched to 32x32. The forward pass is
evaluation's own (`training.steps.eval_logits`, with the run's `eval_flip` and matmul
precision): a run's predicted probabilities are the ones its evaluation scored.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from PIL import Image

from cnn_jax import models
from cnn_jax.data import augment, ops, tfds_data
from cnn_jax.data.augment import PreprocessFn
from cnn_jax.data.images import open_image
from cnn_jax.training import steps
from cnn_jax.weights import check_variables, torch_import


def _jit_probs(model: Any, preprocess: PreprocessFn, flip: bool,
               matmul_precision: str) -> Callable[[Any, jax.Array], jax.Array]:
  """jit of (variables, uint8 images) -> class probabilities.

  The logits are evaluation's own (`steps.eval_logits`: the run's preprocessing, matmul
  precision and `eval_flip` mirror averaging), so a prediction is what evaluation scored.
  The variables are an argument, not closed over: closed-over arrays become constants
  of the program (93 MB of HLO for resnet18, compiled 3.4x slower), and new weights of
  the same shapes could not reuse it.
  """
  logits = functools.partial(steps.eval_logits, model.apply, preprocess=preprocess,
                             matmul_precision=matmul_precision, flip=flip)

  @jax.jit
  def probs(variables: Any, images: jax.Array) -> jax.Array:
    return jax.nn.softmax(logits(variables, images).astype(jnp.float32))
  return probs


@dataclass
class Predictor:
  """A model with its variables, and how an image file becomes its input.

  `image_shape` is the (H, W, C) that files are decoded and resized to: the shape the
  data set stores, before `preprocess` (which may pad or crop, as in training).
  """
  model: Any
  variables: Any
  preprocess: PreprocessFn
  image_shape: tuple[int, int, int]
  class_names: Optional[Sequence[str]] = None
  host_pp: str = ""  # the run's dataset.pp_eval: host-side ops applied after decoding
  flip: bool = False  # the run's eval_flip: mean of the image's and its mirror's logits
  matmul_precision: str = "default"  # the run's matmul_precision
  probs_fn: Callable[[Any, jax.Array], jax.Array] = field(init=False, repr=False)

  def __post_init__(self) -> None:
    self.probs_fn = _jit_probs(self.model, self.preprocess, self.flip, self.matmul_precision)

  def probs(self, images: Any) -> jax.Array:
    """Class probabilities of a uint8 NHWC batch of `image_shape` images."""
    return self.probs_fn(self.variables, jnp.asarray(images))

  def load_image(self, path: str, notes: Optional[list[str]] = None) -> np.ndarray:
    """Decode, convert to the data's channels, apply the run's eval pp (e.g. resize the
    shorter side and centre-crop), then resize (bilinear) to `image_shape` if it differs.

    What was changed on the way (a colour photo made grey, a 4000x3000 photo resized) is
    appended to `notes`, one line each: a prediction on a changed image should say so.
    """
    return self._prepare(open_image(path), notes)  # the one decoder: bad files in one line

  def prepare_array(self, image: np.ndarray, notes: Optional[list[str]] = None) -> np.ndarray:
    """A uint8 (H, W) or (H, W, C) array, brought to `image_shape` as `load_image` does."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    return self._prepare(Image.fromarray(image), notes)

  def _prepare(self, img: Image.Image, notes: Optional[list[str]]) -> np.ndarray:
    h, w, c = self.image_shape
    mode = img.mode
    img = img.convert("L" if c == 1 else "RGB")
    if notes is not None and mode not in (("L",) if c == 1 else ("RGB",)):
      notes.append(f"converted from {mode} to {'grey' if c == 1 else 'RGB'}")
    original = img.size
    if self.host_pp:
      arr = np.asarray(img, np.uint8)
      arr = ops.parse(self.host_pp)(arr[..., None] if arr.ndim == 2 else arr,
                                    np.random.default_rng(0))
      img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if img.size != (w, h):
      img = img.resize((w, h), Image.BILINEAR)
    if notes is not None and original != (w, h):
      how = f"the run's eval pp {self.host_pp!r}" if self.host_pp else "bilinear resize"
      notes.append(f"{original[0]}x{original[1]} brought to {w}x{h} ({how})")
    arr = np.asarray(img, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr

  def top_k(self, path: str, k: int = 5, notes: Optional[list[str]] = None
            ) -> tuple[list[tuple[int, float]], float]:
    """[(class index, probability)] best first, and the seconds the forward pass took."""
    if not isinstance(k, int) or k < 1:
      raise ValueError(f"top k must be a positive integer, got {k!r}")
    x = jnp.asarray(self.load_image(path, notes)[None])
    jax.block_until_ready(self.probs(x))  # compile outside the timing
    t = time.perf_counter()
    probs = np.asarray(jax.block_until_ready(self.probs(x)))[0]
    seconds = time.perf_counter() - t
    order = np.argsort(-probs)[:k]
    return [(int(i), float(probs[i])) for i in order], seconds


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_paths(paths: Sequence[str]) -> list[str]:
  """Files as given; folders expanded to their images, sorted. Missing paths are an error."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      out += sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_SUFFIXES))
    elif os.path.exists(p):
      out.append(p)
    else:
      raise FileNotFoundError(f"no such image or folder: {p}")
  if not out:
    raise ValueError(f"no images found in {list(paths)} (looked for {', '.join(IMAGE_SUFFIXES)})")
  return out


def stored_image_shape(meta: Mapping[str, Any], config: ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the images the run's data set stores: what training fed to preprocess.

  The checkpoint's meta["data_shape"] when it has one. Older checkpoints lack it: then
  the model's input shape when `dataset.image_size` is unset (training checked they are
  equal), else the image shape the tfds builder declares.
  """
  if meta.get("data_shape"):
    return tuple(int(v) for v in meta["data_shape"])
  if not config.dataset.get("image_size"):
    shape = meta.get("input_shape") or config.get("model_input_shape") or models.input_shape(config.model)
    return tuple(int(v) for v in shape)
  name = config.dataset.name
  try:
    shape = tfds_data._builder(name, config.dataset.get("data_dir")).info.features["image"].shape
  except Exception as e:  # noqa: BLE001 - no tfds, unknown data set, no image feature
    raise ValueError(f"the checkpoint does not record its data's image shape (meta['data_shape']) "
                     f"and the shape of {name!r} images is unknown here ({e}); the run pads or "
                     f"crops to dataset.image_size={tuple(config.dataset.image_size)}, so predict "
                     "cannot tell what size to bring images to") from e
  if len(shape) != 3 or any(v is None for v in shape):
    raise ValueError(f"{name!r} images have no fixed shape ({shape}) and the checkpoint does "
                     "not record meta['data_shape']: cannot tell what size to bring images to")
  return tuple(int(v) for v in shape)


def class_names(config: ConfigDict, meta: Mapping[str, Any]) -> Optional[list[str]]:
  """The run's class names: recorded in the checkpoint, else its tfds data set's."""
  names = meta.get("class_names")
  if names or config.dataset.name == "folder":
    return names
  try:
    return tfds_data._builder(config.dataset.name, config.dataset.get("data_dir")
                              ).info.features["label"].names
  except Exception:  # noqa: BLE001 - names are a nicety; indices still print
    return None


def from_run(model: Any, variables: Any, config: ConfigDict, meta: Mapping[str, Any]
             ) -> Predictor:
  """The Predictor of a loaded classification run: its eval preprocessing, eval_flip,
  matmul precision and class names (what `cnn-jax eval` scores); `inference.load` builds
  it for classification runs."""
  return Predictor(model, variables, augment.preprocess_from_config(config),
                   stored_image_shape(meta, config), class_names(config, meta),
                   host_pp=config.dataset.get("pp_eval") or "",
                   flip=bool(config.get("eval_flip")),
                   matmul_precision=config.get("matmul_precision") or "default")


def from_weights(model_name: str, weights: str) -> Predictor:
  """A zoo model with a torchvision state dict, prepared as torchvision prepares input."""
  if not weights:
    raise ValueError("--model needs --weights FILE (a torchvision .pth state dict)")
  variables = torch_import.load_torchvision_pth(weights, model_name)
  model = models.get_model(model_name, **torch_import.model_kwargs(model_name, variables))
  shape = models.input_shape(model_name)
  check_variables(model, variables, shape)
  return Predictor(model, variables, torch_import.torchvision_preprocess(model_name), shape)


def read_labels(path: str) -> list[str]:
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]
