"""Pascal VOC detection data: a folder of images and one VOC XML annotation per image.

    source = voc_source("/data/raccoon", "train[:80%]")
    image, target = source[0]  # uint8 (H, W, 3); {"boxes": (k, 4), "labels", "difficult"}

Why a source of its own: a detection example is an image plus a variable number of boxes,
not an (image, label) pair, and VOC folders (labelImg's output, the raccoon and kangaroo
sets, VOCdevkit's Annotations/ + JPEGImages/) have no split folders: the split is a slice of
one fixed, seeded shuffle of the XML listing ("train[:80%]" / "train[80%:]"), so train and
held-out parts are disjoint and the same on every run and every host.

Coordinates: VOC writes pixel coordinates, 1-based by its convention. They are read as
continuous pixel coordinates on [0, width] x [0, height] and normalized as x / width,
y / height, without subtracting 1 (the half-pixel ambiguity is below annotation noise, and
it keeps a box spanning the whole image at exactly [0, 1]). Boxes are corners
(x0, y0, x1, y1), normalized to [0, 1], float32.

Everything but the pixels is read at construction (annotations parsed, image files found):
a broken annotation or a missing image fails before training starts, not in a grain worker.
Images are decoded on access; the source pickles as paths and small arrays.
"""
from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from typing import Any, Optional, Sequence

import numpy as np

from cnn_jax.data import images
from cnn_jax.data.split import parse_split, slice_range

log = logging.getLogger("cnn_jax")

TOLERANCE = 1.0  # pixels a box may overhang its image (then clipped); more is an error
ANNOTATION_DIRS = ("annotations", "Annotations", "annots", "xml")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _number(node: ET.Element, tag: str, path: str) -> float:
  text = node.findtext(tag)
  try:
    return float(text)
  except (TypeError, ValueError):
    raise ValueError(f"{path}: <{node.tag}> has no numeric <{tag}> (got {text!r})") from None


def parse_voc_xml(path: str) -> dict[str, Any]:
  """One VOC annotation: {"filename", "width", "height", "objects": [{"name", "difficult",
  "box": (xmin, ymin, xmax, ymax) float pixels}]}.

  A box overhanging its image by up to TOLERANCE pixels is clipped (annotation tools round
  outwards); further out, or empty (xmax <= xmin, ymax <= ymin), is a ValueError naming the
  file: such a box would train the model on the wrong pixels.
  """
  try:
    root = ET.parse(path).getroot()
  except ET.ParseError as e:
    raise ValueError(f"{path}: malformed XML: {e}") from None
  size = root.find("size")
  if size is None:
    raise ValueError(f"{path}: no <size> element (the image's <width> and <height>)")
  width, height = _number(size, "width", path), _number(size, "height", path)
  if width <= 0 or height <= 0:
    raise ValueError(f"{path}: image size {width:g}x{height:g} is not positive")
  objects = []
  for obj in root.iter("object"):
    name = (obj.findtext("name") or "").strip()
    if not name:
      raise ValueError(f"{path}: an <object> has no <name>")
    bndbox = obj.find("bndbox")
    if bndbox is None:
      raise ValueError(f"{path}: object {name!r} has no <bndbox>")
    box = [_number(bndbox, t, path) for t in ("xmin", "ymin", "xmax", "ymax")]
    limits = (width, height, width, height)
    if any(v < -TOLERANCE or v > lim + TOLERANCE for v, lim in zip(box, limits)):
      raise ValueError(f"{path}: box {box} of object {name!r} lies outside its "
                       f"{width:g}x{height:g} image (by more than {TOLERANCE:g} pixel)")
    clipped = tuple(min(max(v, 0.0), lim) for v, lim in zip(box, limits))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
      raise ValueError(f"{path}: box {box} of object {name!r} is empty: it needs "
                       "xmax > xmin and ymax > ymin")
    difficult = (obj.findtext("difficult") or "0").strip()
    objects.append({"name": name, "difficult": difficult not in ("0", "", "false", "False"),
                    "box": clipped})
  return {"filename": (root.findtext("filename") or "").strip(), "width": int(round(width)),
          "height": int(round(height)), "objects": objects}


def _find_image(xml_path: str, filename: str, image_dir: str, present: set[str]) -> str:
  """The image of an annotation: its <filename> in image_dir, else the XML's stem + .jpg,
  .jpeg or .png (labelImg folders are often moved, and <filename> then goes stale)."""
  stem = os.path.splitext(os.path.basename(xml_path))[0]
  tried = ([filename] if filename else []) + [stem + s for s in _IMAGE_SUFFIXES]
  for name in tried:
    if name in present:
      return os.path.join(image_dir, name)
  raise FileNotFoundError(f"no image for annotation {xml_path}: tried "
                          f"{', '.join(os.path.join(image_dir, n) for n in tried)}")


class VocSource:
  """Random-access VOC detection examples: source[i] -> (uint8 (H, W, 3) RGB, target).

  target: {"boxes": (k, 4) float32 normalized corners, "labels": (k,) int32 indices into
  `class_names`, "difficult": (k,) bool}.

  Args:
    image_dir, annotation_dir: the folders of images and of *.xml annotations.
    class_names: label i is class_names[i]. Default: the sorted object names of ALL the XML
      files in annotation_dir, not only this split's, so every split numbers them alike.
    split: "train" or "all", optionally sliced tfds-style ("train[:80%]", "all[100:]"),
      over the XML files sorted by name then shuffled with `split_seed`: a fixed order, so
      slices of one seed are reproducible, disjoint and together cover the folder.
    skip_empty: an annotation with no objects is dropped (counted in `num_skipped_empty`)
      rather than kept as a negative image.
  """

  labels = None  # detection targets are per object: see __getitem__
  image_shape = None  # images differ in size
  channels = 3

  def __init__(self, image_dir: str, annotation_dir: str,
               class_names: Optional[Sequence[str]] = None, split: str = "train",
               split_seed: int = 0, skip_empty: bool = True):
    name, (start, stop), spec = parse_split(split)
    if name not in ("train", "all"):
      raise ValueError(f"VOC split {spec!r}: a VOC folder is one listing; name it 'train' or "
                       "'all' and slice it, e.g. 'train[:80%]' and 'train[80%:]'")
    if not os.path.isdir(annotation_dir):
      raise FileNotFoundError(f"annotation folder {annotation_dir} does not exist")
    if not os.path.isdir(image_dir):
      raise FileNotFoundError(f"image folder {image_dir} does not exist")
    xmls = sorted(f for f in os.listdir(annotation_dir) if f.lower().endswith(".xml"))
    if not xmls:
      raise ValueError(f"{annotation_dir} holds no *.xml annotations")
    xmls = [os.path.join(annotation_dir, f) for f in xmls]
    order = np.random.default_rng(split_seed).permutation(len(xmls))
    n = len(xmls)
    chosen = [xmls[i] for i in order[slice_range(start, stop, n)]]
    parsed = {f: parse_voc_xml(f) for f in (xmls if class_names is None else chosen)}
    if class_names is None:
      class_names = sorted({o["name"] for a in parsed.values() for o in a["objects"]})
    self.class_names = list(class_names)
    self.num_classes = len(self.class_names)
    index = {c: k for k, c in enumerate(self.class_names)}
    present = set(os.listdir(image_dir))
    self.xml_files, self.image_files, self.sizes = [], [], []
    boxes, labels, difficult, counts = [], [], [], []
    self.num_skipped_empty = 0
    for f in chosen:
      a = parsed[f]
      if not a["objects"] and skip_empty:
        self.num_skipped_empty += 1
        continue
      unknown = sorted({o["name"] for o in a["objects"]} - set(index))
      if unknown:
        raise ValueError(f"{f}: object name(s) {unknown} are not in class_names "
                         f"{self.class_names}")
      self.xml_files.append(f)
      self.image_files.append(_find_image(f, a["filename"], image_dir, present))
      self.sizes.append((a["height"], a["width"]))
      scale = np.array([a["width"], a["height"]] * 2, np.float64)
      boxes += [np.asarray(o["box"], np.float64) / scale for o in a["objects"]]
      labels += [index[o["name"]] for o in a["objects"]]
      difficult += [o["difficult"] for o in a["objects"]]
      counts.append(len(a["objects"]))
    self._check_sizes()
    if self.num_skipped_empty:
      log.info("VOC %s split %r: skipped %d annotation(s) with no objects (skip_empty=True)",
               annotation_dir, spec, self.num_skipped_empty)
    self._arrays(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32),
                 np.asarray(difficult, bool), np.asarray(counts, np.int64))

  def _check_sizes(self) -> None:
    """Refuse images whose size differs from their annotation's <size>, now: the boxes are
    normalized by <size>, so they would be wrong (and decoding would fail at the first
    batch). Headers only (PIL reads no pixels): a few milliseconds for hundreds of files."""
    wrong = []
    for xml_file, image_file, (h, w) in zip(self.xml_files, self.image_files, self.sizes):
      size = images.header_size(image_file)  # None: unreadable, reported by check_images
      if size is not None and size != (w, h):
        wrong.append(f"{image_file} is {size[0]}x{size[1]} (width x height) but {xml_file} "
                     f"says {w}x{h}")
    if wrong:
      raise ValueError(f"{len(wrong)} image(s) differ in size from their annotation's <size>, "
                       f"so their normalized boxes would be wrong: {'; '.join(wrong[:5])}"
                       f"{'; ...' if len(wrong) > 5 else ''}. Fix the annotations' <width> / "
                       "<height> (or the images)")

  def _arrays(self, boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray,
              counts: np.ndarray) -> None:
    """All objects in three flat arrays, example i's at offsets[i]:offsets[i + 1]: a few
    arrays pickle far cheaper than a list of small arrays per image."""
    self._boxes, self._labels, self._difficult = boxes, labels, difficult
    self._counts = np.asarray(counts, np.int64)
    self._offsets = np.concatenate([[0], np.cumsum(self._counts)]).astype(np.int64)

  def __len__(self) -> int:
    return len(self.image_files)

  def target(self, i: int) -> dict[str, np.ndarray]:
    """Example i's annotation alone (no image is read), e.g. for evaluation ground truth."""
    lo, hi = self._offsets[i], self._offsets[i + 1]
    return {"boxes": self._boxes[lo:hi].copy(), "labels": self._labels[lo:hi].copy(),
            "difficult": self._difficult[lo:hi].copy()}

  def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    image = images.decode_image(self.image_files[i], 3)
    if image.shape[:2] != tuple(self.sizes[i]):
      h, w = self.sizes[i]
      raise ValueError(f"{self.image_files[i]} decodes to {image.shape[1]}x{image.shape[0]} "
                       f"(width x height) but {self.xml_files[i]} gives <size> {w}x{h}: its "
                       "normalized boxes would be wrong; fix the annotation or the image")
    return image, self.target(i)

  @property
  def max_objects(self) -> int:
    """The most objects any one image of this source has (0 for an empty source)."""
    return int(self._counts.max()) if len(self._counts) else 0

  def subset(self, index: Sequence[int]) -> "VocSource":
    """The examples `index`, in that order (for max_examples and per-host shards)."""
    index = np.asarray(index, np.int64)
    new = object.__new__(VocSource)
    new.__dict__.update(self.__dict__)
    new.xml_files = [self.xml_files[i] for i in index]
    new.image_files = [self.image_files[i] for i in index]
    new.sizes = [self.sizes[i] for i in index]
    rows = [np.arange(self._offsets[i], self._offsets[i + 1]) for i in index]
    rows = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    new._arrays(self._boxes[rows], self._labels[rows], self._difficult[rows], self._counts[index])
    return new


def find_annotation_dir(path: str) -> str:
  """The first of ANNOTATION_DIRS that exists under `path`."""
  for name in ANNOTATION_DIRS:
    if os.path.isdir(os.path.join(path, name)):
      return os.path.join(path, name)
  raise FileNotFoundError(f"no annotation folder under {path}: looked for "
                          f"{', '.join(ANNOTATION_DIRS)}; pass annotation_dir=")


def voc_source(path: str, split: str, *, image_dir: str = "images",
               annotation_dir: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
               split_seed: int = 0, skip_empty: bool = True,
               max_examples: Optional[int] = None) -> VocSource:
  """Split `split` of the VOC folder `path` (image_dir and annotation_dir are relative to it,
  or absolute); max_examples keeps the first n of the split."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"VOC data set folder {path} does not exist")
  ann = (os.path.join(path, annotation_dir) if annotation_dir is not None
         else find_annotation_dir(path))
  source = VocSource(os.path.join(path, image_dir), ann, class_names, split, split_seed,
                     skip_empty)
  if max_examples is not None:
    source = source.subset(np.arange(min(max_examples, len(source))))
  return source


def check_images(source: VocSource, skip_corrupt: bool = False) -> VocSource:
  """Decode every image once, before training: a truncated or unreadable photo is named now
  (CorruptImageError) instead of failing a worker mid-epoch; with skip_corrupt it is
  dropped with its annotation, and counted in the log. About a second for a few hundred
  photos (draft-mode JPEG decoding, as the image folders' skip_corrupt scan)."""
  kept = images.without_unreadable(source, source.image_files, skip_corrupt)
  kept.num_skipped_corrupt = len(source) - len(kept)
  return kept
