"""The one image-file decoder: data sets, `predict`, `detect` and `kernels` all read here.

Why one: a file that cannot be decoded (truncated, not an image, or a decompression bomb —
a few kilobytes that would decode to gigabytes) must be reported the same way whichever
command reads it: one line naming the file and what to do, never a PIL traceback.

Decompression bombs: PIL refuses an image of more than 2 x `PIL.Image.MAX_IMAGE_PIXELS`
(about 179 million) pixels. Policy: such a file is unreadable like any other — an error
naming it (`ImageTooLargeError`), or, in a data set with `dataset.skip_corrupt=True`,
skipped and counted with the other unreadable files. A genuine huge image is allowed by
raising the limit in the environment, CNN_JAX_MAX_IMAGE_PIXELS=N (our check then replaces
PIL's). A leaf module: it imports nothing else from `cnn_jax.data`.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import re
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger("cnn_jax")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
PIXEL_LIMIT_ENV = "CNN_JAX_MAX_IMAGE_PIXELS"
SKIP_ADVICE = ("Delete or replace the file (in a data set, --config.dataset.skip_corrupt=True "
               "skips unreadable files, counted and logged)")


class CorruptImageError(ValueError):
  """An image file that cannot be decoded; the message names it and says what to do."""


class ImageTooLargeError(CorruptImageError):
  """An image over the decompression-bomb pixel limit."""


def pixel_limit() -> Optional[int]:
  """CNN_JAX_MAX_IMAGE_PIXELS as an int, or None when unset (PIL's own limit applies)."""
  text = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
  if not text:
    return None
  try:
    return int(text.replace("_", ""))
  except ValueError:
    raise ValueError(f"{PIXEL_LIMIT_ENV}={text!r} must be a whole number of pixels") from None


def _too_large(path: str, pixels: Optional[int], limit: Optional[int]) -> ImageTooLargeError:
  size = f"{pixels:,} pixels" if pixels else "more pixels than allowed"
  over = f"more than the limit of {limit:,}" if limit else "over PIL's limit"
  return ImageTooLargeError(
      f"cannot read image {path}: {size}, {over} that guards against decompression bombs. "
      f"If the image is genuine, raise the limit: {PIXEL_LIMIT_ENV}={pixels or 'N'} in the "
      f"environment; or shrink the image. {SKIP_ADVICE}")


def open_image(path: str) -> Image.Image:
  """The image file at `path`, loaded (every byte decoded) in its own mode.

  Raises CorruptImageError (a ValueError) naming the file for anything unreadable.
  """
  limit = pixel_limit()
  if limit is not None:
    Image.MAX_IMAGE_PIXELS = None  # the user set a limit: ours replaces PIL's (process-wide)
  try:
    img = Image.open(path)
    if limit is not None and img.size[0] * img.size[1] > limit:
      img.close()
      raise _too_large(path, img.size[0] * img.size[1], limit)
    img.load()
    return img
  except Image.DecompressionBombError as e:
    m = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(e))
    raise _too_large(path, int(m.group(1)) if m else None,
                     int(m.group(2)) if m else None) from None
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    if isinstance(e, CorruptImageError):
      raise
    raise CorruptImageError(f"cannot read image {path}: {type(e).__name__}: {e}. "
                            f"{SKIP_ADVICE}") from None


def to_array(img: Image.Image, channels: int) -> np.ndarray:
  """A PIL image as uint8 HWC with `channels` (1: PIL "L", 3: PIL "RGB"; any mode converts)."""
  arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def decode_image(path: str, channels: int) -> np.ndarray:
  """Decode an image file to uint8 HWC with `channels` (1: "L", 3: "RGB"; any mode converts)."""
  with open_image(path) as img:
    return to_array(img, channels)


def header_size(path: str) -> Optional[tuple[int, int]]:
  """(width, height) from the file's header alone (no pixels decoded); None if unreadable
  (reported when it is decoded)."""
  try:
    with Image.open(path) as img:
      return img.size
  except Exception:  # noqa: BLE001 - unreadable files are reported by the decoder
    return None


def decodes(path: str) -> bool:
  """Whether `path` decodes to the end (within the pixel limit).

  PIL's verify() checks little beyond the header for JPEG (the most common corruption, a
  download cut short, passes it), so decode: JPEGs in draft mode (1/8 scale), which still
  reads every byte of the scan but skips most of the work.
  """
  limit = pixel_limit()
  if limit is not None:
    Image.MAX_IMAGE_PIXELS = None  # as open_image: the user's limit replaces PIL's
  try:
    with Image.open(path) as img:
      if limit is not None and img.size[0] * img.size[1] > limit:
        return False
      img.draft(None, (1, 1))  # JPEG only; other formats ignore it
      img.load()
    return True
  except Exception:  # noqa: BLE001 - any unreadable file (bombs included) is skipped and counted
    return False


def without_unreadable(source: Any, files: Sequence[str], skip: bool = True) -> Any:
  """`source` less the examples whose image file (`files[i]`) does not decode, counted in
  the log; with skip=False the first such file is a CorruptImageError naming it instead.
  The one corrupt-file scan of image folders and VOC folders."""
  with concurrent.futures.ThreadPoolExecutor(8) as pool:  # PIL decodes without the GIL
    ok = list(pool.map(decodes, files))
  bad = [f for f, good in zip(files, ok) if not good]
  if not bad:
    return source
  if not skip:
    decode_image(bad[0], 3)  # raises CorruptImageError, naming the file
  log.warning("skipped %d unreadable image file(s) (dataset.skip_corrupt=True), e.g. %s",
              len(bad), ", ".join(bad[:3]))
  return source.subset(np.asarray([i for i, good in enumerate(ok) if good], np.int64))
