"""One training batch after the whole training preprocessing, to check a pipeline by eye.

The batch is built exactly as training builds it: the train split's examples of step 0
through the host-side ops (`dataset.pp_train`, `input_pipeline.TrainBatch`), then the
device-side preprocessing with train=True (`augment.preprocess_from_config`: padding
to `dataset.image_size`, `config.augment`'s image ops, normalisation), then its batch
ops (mixup / cutmix, `augment.mix_from_config`) if it has any. The images are
de-normalised (x * std + mean) for display and titled with their class (for mixed
labels, the class of largest weight and the weight). For a detector or localizer, each
image's boxes are drawn where the host-side ops moved them, named by class: a box that
does not follow its object is the bug this picture is for.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from matplotlib.patches import Rectangle

from cnn_jax import config as config_lib
from cnn_jax import viz
from cnn_jax.data import augment, input_pipeline, sources

CELL_PX = 120
MAX_DRAWN_OBJECTS = 64  # objects per image drawn (more are dropped smallest first)


def augmented_batch(config: Any, num: int = 16) -> dict:
  """{"images": (N, H, W, C) in [0, 1], "labels", "weights", "names", "spec"} of the
  first `num` examples of training step 0."""
  if num < 1:
    raise ValueError(f"num must be at least 1, got {num}")
  config_lib.validate(config)
  boxes = config.get("task", "classification") in config_lib.BOX_TASKS
  config = config.copy_and_resolve_references()
  ds = config.dataset
  ds.cache = False  # a few examples are read: not worth decoding the whole split to a cache
  source = sources.load_source(ds, ds.train_split, max_examples=ds.get("max_train_examples"))
  size = min(num, len(source))
  if not size:
    raise ValueError(f"the training split {ds.train_split!r} holds no examples")
  batch = input_pipeline.TrainBatch(source, size, len(source) // size, int(config.seed),
                                    ds.get("pp_train") or "",
                                    max_objects=MAX_DRAWN_OBJECTS if boxes else None)(0)
  rng = jax.random.key(int(config.seed))
  x = augment.preprocess_from_config(config)(jnp.asarray(batch["image"]), rng, True)
  names = list(getattr(source, "class_names", None) or [])
  if boxes:  # device-side ops of box tasks leave pixels in place (config.BOX_SAFE_AUGMENT)
    return {"images": viz.denormalize(np.asarray(x), config), "boxes": batch["boxes"],
            "box_labels": batch["labels"], "valid": batch["valid"], "names": names,
            "spec": augment.augment_spec(config), "pp_train": ds.get("pp_train") or ""}
  num_classes = int(config.model_kwargs.get("num_classes", source.num_classes))
  probs = np.eye(num_classes, dtype=np.float32)[batch["label"]]
  mix = augment.mix_from_config(config, num_classes)
  if mix is not None:
    x, probs = mix(x, jnp.asarray(batch["label"]), jax.random.fold_in(rng, 1))
  probs = np.asarray(probs)
  names = names or [str(i) for i in range(num_classes)]
  return {"images": viz.denormalize(np.asarray(x), config), "labels": probs.argmax(-1),
          "weights": probs.max(-1), "names": list(names), "spec": augment.augment_spec(config),
          "pp_train": ds.get("pp_train") or ""}


def plot_augment(config: Any, out: str, num: int = 16, cols: int = 8,
                 overwrite: bool = False) -> dict:
  """Write a grid of `augmented_batch(config, num)` to `out`; {"path", "size", "shape"}."""
  viz.check_out(out, overwrite)
  b = augmented_batch(config, num)
  images = b["images"]
  rows, cols = viz.grid_shape(len(images), cols)
  size = (CELL_PX * cols, CELL_PX * rows + 30)
  fig = viz.figure(*size)
  fig.suptitle(f"pp_train: {b['pp_train'] or '(none)'}   augment: {b['spec'] or '(none)'}",
               fontsize=8)
  for k, img in enumerate(images):
    ax = fig.add_subplot(rows, cols, k + 1)
    if "boxes" in b:
      title = _draw_boxes(ax, img, b, k)
    else:
      label, weight = int(b["labels"][k]), float(b["weights"][k])
      name = b["names"][label] if label < len(b["names"]) else str(label)
      title = name if weight > 0.999 else f"{name} {weight:.2f}"
    viz.show_image(ax, img, title, vmin=0, vmax=1)
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 45 / size[1], hspace=0.3,
                      wspace=0.05)
  viz.save(fig, out, overwrite)
  return {"path": out, "size": size, "shape": images.shape}


def _draw_boxes(ax: Any, image: np.ndarray, b: dict, k: int) -> str:
  """Image k's valid boxes (normalized corners) as rectangles in its pixels; the title."""
  h, w = image.shape[:2]
  shown = []
  for (x0, y0, x1, y1), label, valid in zip(b["boxes"][k], b["box_labels"][k], b["valid"][k]):
    if not valid:
      continue
    name = b["names"][label] if label < len(b["names"]) else str(int(label))
    colour = matplotlib.colormaps["tab10"](int(label) % 10)
    ax.add_patch(Rectangle((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h, fill=False,
                           edgecolor=colour, linewidth=1.5))
    ax.text(x0 * w, y0 * h, name, fontsize=6, color="white", va="bottom",
            bbox={"facecolor": colour, "pad": 1, "linewidth": 0})
    shown.append(name)
  return f"{len(shown)} object{'s' if len(shown) != 1 else ''}" if shown else "no object"
