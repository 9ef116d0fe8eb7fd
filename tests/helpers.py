"""Small in-memory data sets and configs shared by the tests."""
import glob
import os

import numpy as np

from cnn_jax.config import base_config, smoke_variant
from cnn_jax.data.split import Split


def random_split(n: int, shape=(28, 28, 1), num_classes: int = 10, seed: int = 0) -> Split:
  """Images whose class is written into them (a bright square whose row is the label)."""
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, num_classes, n).astype(np.int32)
  images = rng.randint(0, 60, (n, *shape)).astype(np.uint8)
  h = shape[0] // num_classes
  for i, y in enumerate(labels):
    images[i, y * h:(y + 1) * h, 2:8] = 255
  return Split(images, labels, num_classes)


def tiny_config(model: str = "mnist_cnn", **overrides):
  c = smoke_variant(base_config())
  c.model = model
  c.progress_bar = False
  c.log_every_steps = 2
  c.batch_size = 32
  c.eval_batch_size = 48
  for k, v in overrides.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  return c


def empty_array_files(step_dirs: str) -> None:
  """Damage checkpoints: every non-empty file under the state/ of the step directories
  matching the glob `step_dirs` is cut to 0 bytes (the meta item is left readable)."""
  for f in glob.glob(f"{step_dirs}/state/**/*", recursive=True):
    if os.path.isfile(f) and os.path.getsize(f) > 0:
      open(f, "wb").close()
