"""Host-side preprocessing ops, composed from big_vision-style `pp` strings.

    parse("decode|resize_small(146)|central_crop(128)")(image, rng) -> uint8 (128, 128, 3)

Why on the host: images of varying size (ImageNet, Imagenette) must reach one fixed size
before they can be batched, and decoding / resizing is work for grain's worker processes,
not the accelerator; normalization and per-pixel augmentation run on the device
(`augment.py`). Each op maps (uint8 HWC image, np.random.Generator) -> uint8 HWC image and
draws randomness only from that generator, so an example's preprocessing is a pure
function of its seed. Sizes are (h, w); an int means a square. Resizing is PIL bilinear,
torchvision's PIL path, so results match torchvision on PIL images exactly.
"""
from __future__ import annotations

import io
import math
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from cnn_jax.data import pp_spec

# (image uint8 HWC, rng) -> image uint8 HWC.
HostOp = Callable[[np.ndarray, np.random.Generator], np.ndarray]
Shape = tuple[Optional[int], Optional[int], int]
Size = Union[int, tuple[int, int]]

_REGISTRY: dict[str, Callable[..., HostOp]] = {}
_RANDOM: set[str] = set()  # ops that draw from the rng: a pipeline using one is train-only


def _register(name: str, random: bool = False) -> Callable:
  def deco(factory: Callable[..., HostOp]) -> Callable[..., HostOp]:
    _REGISTRY[name] = factory
    _RANDOM.update([name] if random else [])
    return factory
  return deco


def names() -> list[str]:
  """All registered op names, sorted."""
  return sorted(_REGISTRY)


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def _shaped(fn: HostOp, shape_fn: Callable[[Shape], Shape]) -> HostOp:
  """Attach static shape inference to an op (an op without it keeps the shape)."""
  fn.output_shape = shape_fn  # type: ignore[attr-defined]
  return fn


def _hwc(image: Union[np.ndarray, Image.Image]) -> np.ndarray:
  a = np.asarray(image)
  return a[..., None] if a.ndim == 2 else a


def _pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
  """PIL bilinear resize (antialiased when shrinking) of an HWC uint8 image to (h, w)."""
  return _hwc(_pil(image).resize((w, h), Image.Resampling.BILINEAR))


def _convert(image: np.ndarray, channels: int) -> np.ndarray:
  """To 1 (PIL "L": ITU-R 601-2 luma) or 3 (PIL "RGB") channels, exactly as PIL converts."""
  image = _hwc(image)
  _check(image.dtype == np.uint8, f"expected encoded bytes or a uint8 image, got {image.dtype}")
  if image.shape[-1] == channels:
    return image
  return _hwc(_pil(image).convert("L" if channels == 1 else "RGB"))


def _short_side_to(h: int, w: int, size: int) -> tuple[int, int]:
  return (size, int(round(w * size / h))) if h <= w else (int(round(h * size / w)), size)


@_register("decode")
def _decode(channels: int = 3) -> HostOp:
  """Encoded bytes (PNG, JPEG, ... via PIL) or an already-decoded array -> `channels`.

  Encoded inputs have no static (h, w): give output_shape (None, None, c) for them.
  """
  _check(pp_spec.is_int(channels) and channels in (1, 3),
         f"channels must be 1 or 3, got {channels!r}")

  def fn(x: Any, rng: np.random.Generator) -> np.ndarray:
    if isinstance(x, np.ndarray) and x.dtype.kind in "OSV" and x.size == 1:
      x = x.item()
    if isinstance(x, (bytes, bytearray, memoryview)):
      with Image.open(io.BytesIO(bytes(x))) as img:
        return _hwc(img.convert("L" if channels == 1 else "RGB"))
    return _convert(np.asarray(x), channels)
  return _shaped(fn, lambda s: (s[0], s[1], channels))


@_register("resize")
def _resize_op(size: Size) -> HostOp:
  """Resize to exactly `size` (the aspect ratio is not kept)."""
  h, w = pp_spec.int_pair("size", size)
  return _shaped(lambda im, rng: _resize(im, h, w), lambda s: (h, w, s[2]))


@_register("resize_small")
def _resize_small(size: int) -> HostOp:
  """Resize so the shorter side is `size`, keeping the aspect ratio.

  The longer side is int(round(long * size / short)), as big_vision does; torchvision's
  Resize(int) truncates instead, so the two can differ by one pixel there.
  """
  pp_spec.integer("size", size, 1)

  def shape(s: Shape) -> Shape:
    known = s[0] is not None and s[1] is not None
    return (*_short_side_to(s[0], s[1], size), s[2]) if known else (None, None, s[2])
  return _shaped(lambda im, rng: _resize(im, *_short_side_to(*im.shape[:2], size)), shape)


@_register("central_crop")
def _central_crop(size: Size) -> HostOp:
  """Centre crop to `size`: top = (H - h) // 2, left = (W - w) // 2."""
  h, w = pp_spec.int_pair("size", size)

  def fn(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    H, W = im.shape[:2]
    _check(H >= h and W >= w, f"central_crop({h}, {w}): the image is only {H}x{W}; resize "
           f"it first, e.g. resize_small({max(h, w)})|central_crop(...)")
    top, left = (H - h) // 2, (W - w) // 2
    return im[top:top + h, left:left + w]
  return _shaped(fn, lambda s: (h, w, s[2]))


@_register("random_crop", random=True)
def _random_crop(size: Size, padding: int = 0) -> HostOp:
  """Zero-pad by `padding` on each side, then crop a uniformly placed `size` window."""
  h, w = pp_spec.int_pair("size", size)
  padding = pp_spec.integer("padding", padding, 0)

  def fn(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    im = np.pad(im, ((padding, padding), (padding, padding), (0, 0))) if padding else im
    H, W = im.shape[:2]
    _check(H >= h and W >= w, f"random_crop({h}, {w}): the padded image is only {H}x{W}")
    top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    return im[top:top + h, left:left + w]
  return _shaped(fn, lambda s: (h, w, s[2]))


def _resized_crop_box(H: int, W: int, scale: tuple[float, float], ratio: tuple[float, float],
                      rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(top, left, h, w): torchvision's RandomResizedCrop.get_params, drawn from `rng`."""
  area, log_ratio = H * W, (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= W and 0 < h <= H:
      return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w
  in_ratio = W / H  # fall back to a centre crop, its aspect ratio clamped to `ratio`
  if in_ratio < min(ratio):
    w, h = W, int(round(W / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = H, int(round(H * max(ratio)))
  else:
    h, w = H, W
  return (H - h) // 2, (W - w) // 2, h, w


@_register("random_resized_crop", random=True)
def _random_resized_crop(size: Size, scale: tuple[float, float] = (0.08, 1.0),
                         ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> HostOp:
  """Inception-style crop (area fraction in `scale`, aspect in `ratio`) resized to `size`."""
  h, w = pp_spec.int_pair("size", size)
  scale = pp_spec.number_range("scale", scale, 0, open_lo=True)
  ratio = pp_spec.number_range("ratio", ratio, 0, open_lo=True)

  def fn(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    top, left, ch, cw = _resized_crop_box(im.shape[0], im.shape[1], scale, ratio, rng)
    return _resize(im[top:top + ch, left:left + cw], h, w)
  return _shaped(fn, lambda s: (h, w, s[2]))


@_register("flip_lr", random=True)
def _flip_lr(p: float = 0.5) -> HostOp:
  """Mirror left-right with probability p (one rng draw per example, whatever p)."""
  pp_spec.number("p", p, 0, 1)
  return lambda im, rng: im[:, ::-1] if rng.random() < p else im


@_register("rot90")
def _rot90(k: int = 1) -> HostOp:
  """Rotate by k * 90 degrees counter-clockwise (deterministic, e.g. for test-time views)."""
  pp_spec.integer("k", k)
  return _shaped(lambda im, rng: np.rot90(im, k, axes=(0, 1)),
                 lambda s: (s[1], s[0], s[2]) if k % 2 else s)


@_register("pad")
def _pad(padding: Size, value: int = 0) -> HostOp:
  """Constant padding: `padding` rows above and below, and columns left and right."""
  ph, pw = pp_spec.int_pair("padding", padding, lo=0)
  pp_spec.integer("value", value, 0, 255)
  grow = lambda n, p: None if n is None else n + 2 * p  # noqa: E731
  return _shaped(lambda im, rng: np.pad(im, ((ph, ph), (pw, pw), (0, 0)), constant_values=value),
                 lambda s: (grow(s[0], ph), grow(s[1], pw), s[2]))


@_register("to_rgb")
def _to_rgb() -> HostOp:
  """Grey -> RGB by repeating the channel (RGB images pass unchanged)."""
  return _shaped(lambda im, rng: _convert(im, 3), lambda s: (s[0], s[1], 3))


@_register("to_gray")
def _to_gray() -> HostOp:
  """RGB -> grey exactly as PIL's convert("L"), keeping a channel axis of 1."""
  return _shaped(lambda im, rng: _convert(im, 1), lambda s: (s[0], s[1], 1))


def _make(name: str, args: tuple, kwargs: dict, pp: str) -> HostOp:
  """Build one op; an unknown name or bad arguments is a ValueError that says where."""
  if name not in _REGISTRY:
    raise pp_spec.unknown_op_error(name, names(), pp, "pp string")
  return pp_spec.build(_REGISTRY[name], name, args, kwargs, pp, "pp string")


class Pipeline:
  """A parsed `pp` string: ops applied in order to one example on the host.

  `ops` is the list of (name, args, kwargs) and is all a pipeline is: it pickles as that
  list (grain ships transforms to worker processes) and prints as its canonical pp string.
  A subclass with other ops (`box_ops.BoxPipeline`) sets `_build` and `_random_ops`.
  """
  _build = staticmethod(lambda name, args, kwargs, pp: _make(name, args, kwargs, pp))
  _random_ops = _RANDOM

  def __init__(self, ops: Sequence[tuple[str, tuple, dict]] = (), pp: Optional[str] = None):
    self.ops = [(name, tuple(args), dict(kwargs)) for name, args, kwargs in ops]
    self._fns = [self._build(*op, pp if pp is not None else str(self)) for op in self.ops]

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for fn in self._fns:
      image = fn(image, rng)
    return image

  def output_shape(self, shape: Shape) -> Shape:
    """Static (h, w, c) of the output for an input of `shape`; None: unknown or varying."""
    shape = tuple(shape)
    for fn in self._fns:
      shape = getattr(fn, "output_shape", lambda s: s)(shape)
    return shape

  @property
  def random(self) -> bool:
    """Whether any op draws from the rng (a training-only pipeline)."""
    return bool(self.random_ops)

  @property
  def random_ops(self) -> list[str]:
    """The names of the ops that draw from the rng, in order."""
    return [name for name, _, _ in self.ops if name in self._random_ops]

  def __str__(self) -> str:
    return "|".join(pp_spec.format_op(*op) for op in self.ops)

  def __repr__(self) -> str:
    return f"{type(self).__name__}({str(self)!r})"

  def __eq__(self, other: object) -> bool:
    return type(other) is type(self) and self.ops == other.ops

  def __reduce__(self):
    return type(self), (self.ops,)


def parse(pp: Optional[str]) -> Pipeline:
  """Parse "op1(args)|op2|..." into a Pipeline; "" or None is the identity.

  Every op is built here, so an unknown name or bad arguments fail when the config is
  read, not in a worker process mid-epoch.
  """
  if pp is None or not pp.strip():
    return Pipeline()
  return Pipeline([call[:3] for call in pp_spec.split_ops(pp, "pp string")], pp=pp)
