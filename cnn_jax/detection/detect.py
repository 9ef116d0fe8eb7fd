"""Run a trained detector on image files and draw what it found (`cnn-jax detect`).

An image goes through the run's own eval preprocessing (`dataset.pp_eval`, box-aware
ops: resize or letterbox) and normalization, the model, decoding and NMS — the same
`detection.task.detect` the evaluation uses. The boxes come back in the model input's
normalized coordinates; where the original image lies in that input is found by sending
the whole-image box [0, 0, 1, 1] through the same pp, so any mix of resize / letterbox /
crop maps back to the original pixels exactly.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from cnn_jax.data import images

PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128))


@dataclasses.dataclass
class Detection:
  box: tuple[float, float, float, float]   # pixels of the original image: x0, y0, x1, y1
  score: float
  label: int
  name: str


@dataclasses.dataclass
class Detector:
  """A trained run's detector: `detect(image)` -> [Detection], best first."""
  model: Any
  variables: Any
  config: Any
  class_names: Sequence[str]
  fn: Callable[[Any, jax.Array], dict] = dataclasses.field(init=False, repr=False)

  def __post_init__(self) -> None:
    from cnn_jax.data import augment, input_pipeline
    from cnn_jax.detection import task
    task.check_pp_eval(self.config)  # a run saved before flips were refused there
    preprocess = augment.preprocess_from_config(self.config)
    self.pipeline = input_pipeline.parse_pp(self.config.dataset.get("pp_eval") or "", boxes=True)
    self.fn = jax.jit(lambda v, x: task.detect(self.model.apply, v,
                                               preprocess(x, jax.random.key(0), False), self.config))

  def detect(self, image: np.ndarray, score_threshold: float = 0.3) -> list[Detection]:
    """Detections above `score_threshold` in a uint8 RGB (H, W, 3) image, in its pixels."""
    h, w = image.shape[:2]
    whole = {"boxes": np.array([[0, 0, 1, 1]], np.float32), "labels": np.zeros(1, np.int32),
             "difficult": np.zeros(1, bool)}
    x, mapped = self.pipeline(image, whole, np.random.default_rng(0))
    if len(mapped["boxes"]) != 1:
      raise ValueError(f"dataset.pp_eval={self.config.dataset.pp_eval!r} loses the image "
                       "(a random or cropping op?): detect needs a deterministic resize / letterbox")
    rx0, ry0, rx1, ry1 = mapped["boxes"][0]
    out = jax.device_get(self.fn(self.variables, jnp.asarray(x[None])))
    found = []
    for box, score, label, valid in zip(out["boxes"][0], out["scores"][0], out["classes"][0],
                                        out["valid"][0]):
      if not valid or score < score_threshold:
        continue
      x0, x1 = np.clip((box[[0, 2]] - rx0) / (rx1 - rx0), 0, 1) * w
      y0, y1 = np.clip((box[[1, 3]] - ry0) / (ry1 - ry0), 0, 1) * h
      name = self.class_names[label] if label < len(self.class_names) else str(int(label))
      found.append(Detection((float(x0), float(y0), float(x1), float(y1)), float(score),
                             int(label), name))
    return sorted(found, key=lambda d: -d.score)


def from_workdir(workdir: str, which: str = "best") -> Detector:
  """The detector of a trained run (its best-on-validation checkpoint by default)."""
  from cnn_jax import inference
  model, variables, config, meta = inference.load_run(workdir, which)
  if config.get("task") != "detection":
    raise ValueError(f"{workdir} holds a {config.get('task', 'classification')} run; "
                     "`cnn-jax detect` needs a detector (task='detection'); use `cnn-jax predict`")
  return Detector(model, variables, config, list(meta.get("class_names") or []))


def draw(image: np.ndarray, detections: Sequence[Detection]) -> Image.Image:
  """The image with each detection's box, class name and score drawn."""
  out = Image.fromarray(image).convert("RGB")
  pen = ImageDraw.Draw(out)
  width = max(2, round(max(out.size) / 250))
  for d in detections:
    colour = PALETTE[d.label % len(PALETTE)]
    pen.rectangle(d.box, outline=colour, width=width)
    text = f"{d.name} {d.score:.2f}"
    left, top, right, bottom = pen.textbbox((d.box[0], d.box[1]), text)
    y = max(0.0, d.box[1] - (bottom - top) - 4)
    pen.rectangle((d.box[0], y, d.box[0] + right - left + 4, y + bottom - top + 4), fill=colour)
    pen.text((d.box[0] + 2, y + 1), text, fill=(255, 255, 255))
  return out


def run(detector: Detector, paths: Sequence[str], out_dir: Optional[str],
        score_threshold: float = 0.3, overwrite: bool = False) -> list[dict]:
  """Detect in every image, write OUT_DIR/<name>.png with the boxes drawn, and return
  one record per image (path, detections, seconds). Never overwrites unless asked."""
  from cnn_jax.predict import image_paths  # noqa: PLC0415 - one expansion of folders
  files = image_paths(paths)
  targets = {}
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    for f in files:
      target = os.path.join(out_dir, os.path.splitext(os.path.basename(f))[0] + ".png")
      if target in targets.values():
        raise ValueError(f"two inputs would both be written to {target}; detect them separately")
      if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} exists; choose another --out or pass --overwrite")
      targets[f] = target
  records = []
  for f in files:
    image = images.decode_image(f, 3)  # the one decoder: unreadable files and bombs, one line
    if not records:  # compile outside the timing
      detector.detect(image, 0.0)
    start = time.perf_counter()
    every = detector.detect(image, 0.0)  # then thresholded: the best score is worth saying
    seconds = time.perf_counter() - start
    found = [d for d in every if d.score >= score_threshold]
    if out_dir:
      draw(image, found).save(targets[f])
    records.append({"path": f, "out": targets.get(f), "seconds": seconds,
                    "best_score": every[0].score if every else None,
                    "detections": [dataclasses.asdict(d) for d in found]})
  return records
