"""A trained run in Python: what `cnn_jax.load(workdir)` returns.

    run = cnn_jax.load("workdirs/imagenette", which="best")
    run.top_k(["dog.jpg", "cat.jpg"], k=3)   # [[("English springer", 0.91), ...], ...]
    probs = run.predict(uint8_images)         # (N, num_classes), as `cnn-jax eval` scores
    model, variables, config = run            # the pieces, for one's own code

Images go in as files store them: uint8, height x width x channels, 0-255. `predict`
applies the run's own evaluation preprocessing (its host-side `dataset.pp_eval`, the
resize to the stored shape, normalisation, test-time flip): the probabilities are the ones
the run's evaluation scored. Floats in [0, 1] are refused with what to do, instead of
being silently read as near-black pixels.

A leaf module: the predictor it wraps (`predict.Predictor`) is built by
`inference.load`; this file imports neither, so the picture modules can take a run too.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Images = Union[str, os.PathLike, np.ndarray, Sequence[Union[str, os.PathLike, np.ndarray]]]


@dataclasses.dataclass
class TrainedRun:
  """A trained run: model, variables, config, checkpoint meta, and how images become input.

  Unpacks as `model, variables, config = run`.
  """
  workdir: str
  model: Any
  variables: Any
  config: Any
  meta: dict
  predictor: Any  # predict.Predictor (classification runs); None for detectors / localizers

  def __iter__(self) -> Iterator[Any]:
    return iter((self.model, self.variables, self.config))

  @property
  def step(self) -> Optional[int]:
    return self.meta.get("step")

  @property
  def class_names(self) -> list[str]:
    """Label i's name (the data set's names, or "0", "1", ... when it has none)."""
    names = list(self._classifier().class_names or [])
    n = int(self.meta.get("num_classes") or len(names))
    return [str(names[i]) if i < len(names) else str(i) for i in range(n)]

  def class_name(self, i: int) -> str:
    names = self.predictor.class_names if self.predictor is not None else None
    return str(names[i]) if names and 0 <= i < len(names) else str(i)

  def preprocess(self, images: jax.Array) -> jax.Array:
    """Stored-shape uint8 images (N, H, W, C) -> the model's float input (eval mode)."""
    return self._classifier().preprocess(jnp.asarray(images), jax.random.key(0), False)

  def model_input(self, image: np.ndarray) -> jax.Array:
    """One stored-shape uint8 image -> the model's (1, H, W, C) float input (eval pp)."""
    image = np.asarray(image)
    want = tuple(self._classifier().image_shape)
    if image.shape != want:
      raise ValueError(f"the run in {self.workdir} takes {'x'.join(map(str, want))} images "
                       f"(H x W x C), got an array of shape {image.shape}; image files are "
                       "converted and resized by load_image")
    return self.preprocess(image[None])

  def load_images(self, images: Images, notes: Optional[list[str]] = None) -> np.ndarray:
    """Paths or uint8 HWC arrays -> one uint8 batch of the run's stored image shape, each
    through the run's host-side eval preprocessing."""
    predictor = self._classifier()
    if isinstance(images, np.ndarray) and images.ndim == 4:
      items: list[Any] = list(images)
    elif isinstance(images, (str, os.PathLike, np.ndarray)):
      items = [images]
    else:
      items = list(images)
    if not items:
      raise ValueError("no images given")
    batch = []
    for item in items:
      if isinstance(item, (str, os.PathLike)):
        batch.append(predictor.load_image(os.fspath(item), notes))
      else:
        batch.append(predictor.prepare_array(_as_uint8(item), notes))
    return np.stack(batch)

  def predict(self, images: Images) -> np.ndarray:
    """Class probabilities (N, num_classes) of image files or uint8 HWC arrays."""
    return np.asarray(self._classifier().probs(self.load_images(images)))

  def top_k(self, images: Images, k: int = 5) -> list[list[tuple[str, float]]]:
    """Per image, the k likeliest classes best first: [(class name, probability), ...]."""
    if not isinstance(k, int) or k < 1:
      raise ValueError(f"top k must be a positive integer, got {k!r}")
    probs = self.predict(images)
    return [[(self.class_name(int(i)), float(p[i])) for i in np.argsort(-p, kind="stable")[:k]]
            for p in probs]

  def _classifier(self) -> Any:
    if self.predictor is None:
      task = self.config.get("task", "classification")
      raise ValueError(f"the run in {self.workdir} is a {task} run: predict / top_k classify; "
                       "use `cnn-jax detect` (or cnn_jax.detection.detect.from_workdir)")
    return self.predictor


def _as_uint8(image: Any) -> np.ndarray:
  """An image array as files store it, or a one-line error saying how to give one."""
  image = np.asarray(image)
  if image.ndim not in (2, 3):
    raise ValueError(f"an image is H x W (grey) or H x W x C, got shape {image.shape}")
  if image.dtype == np.uint8:
    return image
  if np.issubdtype(image.dtype, np.floating) and image.size and float(np.nanmax(image)) <= 1.0:
    raise ValueError(f"got {image.dtype} pixels in [0, 1]; give uint8 images with values "
                     "0-255 as files store them (e.g. (image * 255).round().astype(np.uint8)): "
                     "the run applies its own normalisation")
  if image.size and (float(np.min(image)) < 0 or float(np.max(image)) > 255):
    raise ValueError(f"pixel values must be 0-255, got {image.dtype} in "
                     f"[{float(np.min(image)):g}, {float(np.max(image)):g}]")
  return image.astype(np.uint8)
