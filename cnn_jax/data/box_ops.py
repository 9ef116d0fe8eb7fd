"""Host-side preprocessing for detection: ops that move the boxes with the pixels.

    parse("scale_jitter|translate|flip_lr|letterbox(416)")(image, target, rng) -> (image, target)

Why separate from `ops`: an image op that resizes, mirrors or shifts the picture must
transform the boxes exactly as it moved the content, and drop the objects it pushed out of
the frame, or the model learns from wrong targets. Each op maps (uint8 HWC image,
(k, 4) float32 boxes as normalized corners (x0, y0, x1, y1), (k,) labels, rng) to the same
tuple, draws randomness only from the rng, and drops a box together with its label. The
pipeline passes the object indices 0..k-1 as `labels`, so after the ops it knows which
objects survived and keeps every per-object array of the target (labels, difficult, ...)
aligned. The pp syntax, validators and errors are `pp_spec`'s, as for `ops` and `augment`;
colour augmentation runs batched on the device (`augment`), not here.

Coordinates are continuous: pixel (i, j) covers [j, j + 1] x [i, i + 1], and a normalized x
is a pixel x / width. PIL's affine transform samples at pixel centres in the same frame.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from cnn_jax.data import ops, pp_spec
from cnn_jax.data.ops import Shape, Size

Boxes = np.ndarray  # (k, 4) float32, normalized corners
# (image uint8 HWC, boxes, labels, rng) -> (image, boxes, labels).
BoxOp = Callable[[np.ndarray, Boxes, np.ndarray, np.random.Generator],
                 tuple[np.ndarray, Boxes, np.ndarray]]

_REGISTRY: dict[str, Callable[..., BoxOp]] = {}
_RANDOM: set[str] = set()


def _register(name: str, random: bool = False) -> Callable:
  def deco(factory: Callable[..., BoxOp]) -> Callable[..., BoxOp]:
    _REGISTRY[name] = factory
    _RANDOM.update([name] if random else [])
    return factory
  return deco


def names() -> list[str]:
  """All registered box op names, sorted."""
  return sorted(_REGISTRY)


def _fill(image: np.ndarray, fill: int):
  return fill if image.shape[-1] == 1 else (fill,) * image.shape[-1]


def _keep_visible(boxes: Boxes, labels: np.ndarray, h: int, w: int, min_visible: float
                  ) -> tuple[Boxes, np.ndarray]:
  """Clip moved boxes to the image; drop those with less than `min_visible` of their area
  left inside it, or under one pixel wide or high (nothing left to detect)."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  clipped = np.clip(boxes, 0.0, 1.0)
  cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
  keep = (cw * w >= 1) & (ch * h >= 1) & (cw * ch >= min_visible * area)
  return clipped[keep].astype(np.float32), np.asarray(labels)[keep]


# What the geometry of a deterministic op does to boxes alone, with no image:
# frame(boxes, (H, W)) -> (boxes, (H', W')), the input image's size in and the output's out.
# It lets the k-means anchors cluster the boxes as the model sees them (`BoxPipeline.frame`).
Frame = Callable[[Boxes, tuple[int, int]], tuple[Boxes, tuple[int, int]]]


def _framed(fn: BoxOp, frame: Frame, needs_size: bool) -> BoxOp:
  fn.frame, fn.frame_needs_size = frame, needs_size  # type: ignore[attr-defined]
  return fn


@_register("resize")
def _resize(size: Size) -> BoxOp:
  """Squash to `size` (aspect ratio not kept); normalized boxes are unchanged."""
  h, w = pp_spec.int_pair("size", size)
  fn = ops._shaped(lambda im, b, l, rng: (ops._resize(im, h, w), b, l), lambda s: (h, w, s[2]))
  return _framed(fn, lambda boxes, hw: (boxes, (h, w)), needs_size=False)


def _letterbox_place(H: int, W: int, h: int, w: int) -> tuple[int, int, int, int]:
  """(nh, nw, top, left): where letterbox puts an H x W image scaled into h x w."""
  s = min(h / H, w / W)
  nh, nw = min(h, max(1, round(H * s))), min(w, max(1, round(W * s)))
  return nh, nw, (h - nh) // 2, (w - nw) // 2


@_register("letterbox")
def _letterbox(size: Size, fill: int = 114) -> BoxOp:
  """Scale to fit inside `size` keeping the aspect ratio, centred on a `fill` background.

  The scaled image is (round(H * s), round(W * s)), s = min(h / H, w / W), placed at
  top = (h - nh) // 2, left = (w - nw) // 2; boxes follow the rounded size exactly.
  """
  h, w = pp_spec.int_pair("size", size)
  pp_spec.integer("fill", fill, 0, 255)

  def frame(boxes, hw):
    nh, nw, top, left = _letterbox_place(hw[0], hw[1], h, w)
    scale = np.array([nw / w, nh / h] * 2, np.float32)
    shift = np.array([left / w, top / h] * 2, np.float32)
    return (np.asarray(boxes, np.float32) * scale + shift).astype(np.float32), (h, w)

  def fn(im, boxes, labels, rng):
    nh, nw, top, left = _letterbox_place(im.shape[0], im.shape[1], h, w)
    out = np.full((h, w, im.shape[2]), fill, np.uint8)
    out[top:top + nh, left:left + nw] = ops._resize(im, nh, nw)
    return out, frame(boxes, im.shape[:2])[0], labels
  return _framed(ops._shaped(fn, lambda s: (h, w, s[2])), frame, needs_size=True)


@_register("flip_lr", random=True)
def _flip_lr(p: float = 0.5) -> BoxOp:
  """Mirror left-right with probability p (one draw per example): x0' = 1 - x1, x1' = 1 - x0."""
  pp_spec.number("p", p, 0, 1)

  def fn(im, boxes, labels, rng):
    if rng.random() >= p:
      return im, boxes, labels
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return im[:, ::-1], np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], 1), labels
  return fn


def _affine(im: np.ndarray, s: float, tx: float, ty: float, fill: int) -> np.ndarray:
  """Zoom by s about the centre, then shift by (tx * W, ty * H); same size, `fill` outside.
  PIL wants the inverse map: output (x, y) reads input ((x - cx - tx W) / s + cx, ...)."""
  H, W = im.shape[:2]
  cx, cy = W / 2, H / 2
  coeffs = (1 / s, 0.0, cx - (cx + tx * W) / s, 0.0, 1 / s, cy - (cy + ty * H) / s)
  out = ops._pil(im).transform((W, H), Image.Transform.AFFINE, coeffs,
                               resample=Image.Resampling.BILINEAR, fillcolor=_fill(im, fill))
  return ops._hwc(out)


def _make_affine(scale: tuple[float, float], translate: float, fill: int,
                 min_visible: float) -> BoxOp:
  def fn(im, boxes, labels, rng):
    s = rng.uniform(scale[0], scale[1])
    tx, ty = rng.uniform(-translate, translate, size=2)
    b = (np.asarray(boxes, np.float64).reshape(-1, 4) - 0.5) * s + 0.5 + [tx, ty, tx, ty]
    return (_affine(im, s, tx, ty, fill),
            *_keep_visible(b, labels, im.shape[0], im.shape[1], min_visible))
  return fn


@_register("random_affine", random=True)
def _random_affine(scale: tuple[float, float] = (0.75, 1.25), translate: float = 0.2,
                   fill: int = 114, min_visible: float = 0.25) -> BoxOp:
  """Zoom about the centre by s ~ U(scale), then shift by (tx, ty) ~ U(-translate, translate)
  of the width and height; same output size, `fill` where no content. A box is moved as
  x' = (x - 0.5) s + 0.5 + tx, clipped to [0, 1], and dropped with its label when under
  `min_visible` of it stays in frame or it is under a pixel wide or high."""
  scale = pp_spec.number_range("scale", scale, 0, open_lo=True)
  translate = pp_spec.number("translate", translate, 0, 1)
  pp_spec.integer("fill", fill, 0, 255)
  min_visible = pp_spec.number("min_visible", min_visible, 0, 1)
  return _make_affine(scale, translate, fill, min_visible)


@_register("scale_jitter", random=True)
def _scale_jitter(min_scale: float = 0.75, max_scale: float = 1.25, fill: int = 114,
                  min_visible: float = 0.25) -> BoxOp:
  """random_affine(scale=(min_scale, max_scale), translate=0): zoom about the centre."""
  pp_spec.number_range("(min_scale, max_scale)", (min_scale, max_scale), 0, open_lo=True,
                       names=("min_scale", "max_scale"))
  return _random_affine((min_scale, max_scale), 0.0, fill, min_visible)


@_register("translate", random=True)
def _translate(max_frac: float = 0.2, fill: int = 114, min_visible: float = 0.25) -> BoxOp:
  """random_affine(scale=(1, 1), translate=max_frac): shift by up to max_frac of the size."""
  return _random_affine((1.0, 1.0), max_frac, fill, min_visible)


@_register("random_crop", random=True)
def _random_crop(min_scale: float = 0.3, min_visible: float = 0.25, tries: int = 10) -> BoxOp:
  """SSD-style crop: a window whose height and width are each U(min_scale, 1) of the image's,
  uniformly placed; boxes clipped and dropped as in random_affine. A window that would keep
  no object of an image that has some is redrawn, up to `tries` times, then the image is
  left whole. The output size varies: follow it with resize or letterbox."""
  pp_spec.number("min_scale", min_scale, 0, 1, open_lo=True)
  min_visible = pp_spec.number("min_visible", min_visible, 0, 1)
  tries = pp_spec.integer("tries", tries, 1)

  def fn(im, boxes, labels, rng):
    H, W = im.shape[:2]
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    for _ in range(tries):
      ch = max(1, int(round(H * rng.uniform(min_scale, 1))))
      cw = max(1, int(round(W * rng.uniform(min_scale, 1))))
      top, left = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
      moved = (b * [W, H, W, H] - [left, top, left, top]) / [cw, ch, cw, ch]
      nb, nl = _keep_visible(moved, labels, ch, cw, min_visible)
      if len(nb) or not len(b):
        return im[top:top + ch, left:left + cw], nb, nl
    return im, np.asarray(boxes, np.float32), labels
  return ops._shaped(fn, lambda s: (None, None, s[2]))


def _make(name: str, args: tuple, kwargs: dict, pp: str) -> BoxOp:
  if name not in _REGISTRY:
    raise pp_spec.unknown_op_error(name, names(), pp, "box pp string")
  return pp_spec.build(_REGISTRY[name], name, args, kwargs, pp, "box pp string")


class BoxPipeline(ops.Pipeline):
  """A parsed box `pp` string: ops applied in order to one (image, target) on the host.

  target is VocSource's dict: "boxes" (k, 4) plus per-object arrays of length k ("labels",
  "difficult", ...); every one of them is kept aligned with the surviving boxes. Like
  `ops.Pipeline` (its parsing, shapes, printing and pickling) it is only its op list.
  """
  _build = staticmethod(lambda name, args, kwargs, pp: _make(name, args, kwargs, pp))
  _random_ops = _RANDOM

  @property
  def frame_needs_size(self) -> bool:
    """Whether `frame` needs each image's size (a letterbox: its scale depends on it)."""
    return any(getattr(fn, "frame_needs_size", False) for fn in self._fns)

  def frame(self, boxes: Boxes, image_size: Optional[tuple[int, int]] = None) -> Boxes:
    """`boxes` of an image of `image_size` (H, W) as the model sees them: moved by the
    deterministic geometric ops (resize, letterbox) and not by the random ones (flip,
    affine jitter, crops), which only spread boxes around that frame. No image is read;
    image_size may be None unless `frame_needs_size`."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    for fn in self._fns:
      frame = getattr(fn, "frame", None)
      if frame is not None:
        if image_size is None and fn.frame_needs_size:
          raise ValueError(f"box pp {str(self)!r}: its boxes depend on the image size; pass it")
        boxes, image_size = frame(boxes, image_size)
    return boxes

  def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator
               ) -> tuple[np.ndarray, dict]:
    boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4)
    index = np.arange(len(boxes))
    for fn in self._fns:
      image, boxes, index = fn(image, boxes, index, rng)
    out = {k: np.asarray(v)[index] for k, v in target.items() if k != "boxes"}
    out["boxes"] = np.asarray(boxes, np.float32).reshape(-1, 4)
    return image, out


def parse(pp: Optional[str]) -> BoxPipeline:
  """Parse "op1(args)|op2|..." into a BoxPipeline; "" or None is the identity. Every op is
  built here, so a bad name or argument fails when the config is read."""
  if pp is None or not pp.strip():
    return BoxPipeline()
  return BoxPipeline([call[:3] for call in pp_spec.split_ops(pp, "box pp string")], pp=pp)


def pad_objects(target: dict, max_objects: int) -> dict[str, np.ndarray]:
  """Fixed-shape targets for batching: boxes (M, 4) float32, labels (M,) int32, difficult
  (M,) bool, valid (M,) bool, padding rows zero and not valid. With more than M objects the
  M largest by area are kept (in their original order): batches must have one shape, and
  the smallest objects are the ones a detector learns least from."""
  m = pp_spec.integer("max_objects", max_objects, 0)
  boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4)
  k = len(boxes)
  keep = np.arange(k)
  if k > m:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = np.sort(np.argsort(-area, kind="stable")[:m])
  n = len(keep)
  out = {"boxes": np.zeros((m, 4), np.float32), "labels": np.zeros(m, np.int32),
         "difficult": np.zeros(m, bool), "valid": np.zeros(m, bool)}
  out["boxes"][:n] = boxes[keep]
  out["labels"][:n] = np.asarray(target["labels"])[keep]
  difficult = target.get("difficult")
  out["difficult"][:n] = False if difficult is None else np.asarray(difficult)[keep]
  out["valid"][:n] = True
  return out
