"""The course's classic image kernels, by name, applied with the project's own `Conv2D`.

Blur, sharpen, edge detection, Sobel, emboss: the filters an image editor offers (the
"GIMP demo") are single convolutions, and so are a CNN's first-layer features. Applying
them through `cnn_jax.layers.Conv2D` — the layer every model here uses — makes the
course's hand-computed numbers a test of that layer too.

Like every CNN layer, `apply` computes a *cross-correlation*: the kernel is not flipped,
output[i, j] = sum_{u, v} kernel[u, v] * image[i + u - ph, j + v - pw]. For the symmetric
kernels (blurs, sharpen, edge) this equals a convolution; for the directional ones it
decides the sign: `vertical_edge` ([1, 0, -1] rows) and `sobel_x` are positive where
the image gets darker / brighter to the right, as written below, not mirrored.
"""
from __future__ import annotations

from typing import Union

import numpy as np

_GAUSS = np.array([[1, 2, 3, 2, 1], [2, 4, 5, 4, 2], [3, 5, 6, 5, 3], [2, 4, 5, 4, 2],
                   [1, 2, 3, 2, 1]], np.float32)

# name -> (kernel, one-line description). Weights as the course writes them.
_KERNELS: dict[str, tuple[np.ndarray, str]] = {
    "identity": (np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]]), "leaves the image unchanged"),
    "box_blur": (np.ones((3, 3)) / 9, "3x3 mean: ones / 9"),
    "smoothing": (np.array([[1, 1, 1], [1, 2, 1], [1, 1, 1]]) / 10,
                  "centre-weighted mean: [[1,1,1],[1,2,1],[1,1,1]] / 10"),
    "gaussian": (_GAUSS / _GAUSS.sum(), "5x5 Gaussian-like weights / 74, their sum"),
    "sharpen": (np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
                "centre 5, the 4 neighbours -1 (identity + Laplacian)"),
    # The usual "-1/9" sharpen: 2 * identity - box blur = [[-1]*3, [-1, 17, -1], [-1]*3] / 9;
    # a pixel that differs from its flat surroundings by d comes out differing by 17d/9.
    "sharpen_9": (np.array([[-1, -1, -1], [-1, 17, -1], [-1, -1, -1]]) / 9,
                  "2 * identity - box blur: [[-1,-1,-1],[-1,17,-1],[-1,-1,-1]] / 9"),
    "edge": (np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]),
             "8-neighbour Laplacian: zero on flat regions"),
    "vertical_edge": (np.array([[1, 0, -1]] * 3), "[1, 0, -1] rows: bright-to-dark, left to right"),
    "horizontal_edge": (np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]]),
                        "[1, 0, -1] columns: bright-to-dark, top to bottom"),
    "sobel_x": (np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]),
                "Sobel: brightness increasing to the right"),
    "sobel_y": (np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]),
                "Sobel: brightness increasing downwards"),
    "emboss": (np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]),
               "relief lit from the bottom right"),
}

# How `apply` pads: zeros ("same"), none ("valid"), or numpy's pad modes, which decide the
# border: "edge" repeats the border pixel, so a normalised blur keeps a constant image
# constant everywhere, borders included (zero padding darkens the border).
PADDINGS = ("same", "valid", "full", "edge", "reflect", "symmetric", "wrap")

KernelLike = Union[str, np.ndarray]


def names() -> list[str]:
  """Every kernel name, in the order of the table above."""
  return list(_KERNELS)


def describe(name: str) -> str:
  return _KERNELS[_check(name)][1]


def _check(name: str) -> str:
  if name not in _KERNELS:
    raise ValueError(f"unknown kernel {name!r}; kernels: {', '.join(_KERNELS)}")
  return name


def get(name: str) -> np.ndarray:
  """The kernel called `name`, as a float32 (kh, kw) array (a copy)."""
  return np.array(_KERNELS[_check(name)][0], np.float32)


def _as_kernel(kernel: KernelLike) -> np.ndarray:
  k = get(kernel) if isinstance(kernel, str) else np.asarray(kernel, np.float32)
  if k.ndim != 2 or not k.size:
    raise ValueError(f"a kernel is a 2-D (kh, kw) array, got shape {k.shape}")
  return k


def value_range(image: np.ndarray) -> tuple[float, float]:
  """The range a filtered image is clipped to: an integer dtype's own ([0, 255] for
  uint8); a float image's [0, 1] when its values lie there, else [0, 255]."""
  image = np.asarray(image)
  if np.issubdtype(image.dtype, np.integer):
    info = np.iinfo(image.dtype)
    return float(info.min), float(info.max)
  if image.size and float(np.min(image)) >= 0 and float(np.max(image)) <= 1:
    return 0.0, 1.0
  return 0.0, 255.0


def apply(image: np.ndarray, kernel: KernelLike, padding: str = "same", clip: bool = True
          ) -> np.ndarray:
  """Filter an (H, W) or (H, W, C) image with one kernel, each channel on its own.

  Computed in float32 with `layers.Conv2D` (no bias): the channels go into the batch, so
  one single-channel kernel serves them all. padding: "same" (zeros, the output keeps
  H x W), "valid", "full", or a numpy pad mode of `PADDINGS` ("edge", "reflect", ...) for
  the same H x W with another border. clip=True: rounded and clipped to the image's range
  (`value_range`) and returned in its dtype, as an image editor shows it; clip=False: the
  raw float32 sums (negative edges included).
  """
  import jax.numpy as jnp
  from cnn_jax import layers
  from cnn_jax.layers.conv import resolve_padding

  k = _as_kernel(kernel)
  img = np.asarray(image)
  if img.ndim not in (2, 3):
    raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {img.shape}")
  mode = padding.lower()
  if mode not in PADDINGS:
    raise ValueError(f"unknown padding {padding!r}; paddings: {', '.join(PADDINGS)}")
  x = img.astype(np.float32)
  x = x[..., None] if x.ndim == 2 else x
  x = np.moveaxis(x, -1, 0)[..., None]                      # (C, H, W, 1)
  conv_padding = mode.upper() if mode in ("same", "valid", "full") else "VALID"
  if conv_padding == "VALID" and mode != "valid":          # numpy border, then a valid conv
    pads = resolve_padding("SAME", x.shape[1:3], k.shape, (1, 1), (1, 1))
    x = np.pad(x, [(0, 0), *pads, (0, 0)], mode=mode)
  conv = layers.Conv2D(1, k.shape, padding=conv_padding, use_bias=False)
  y = conv.apply({"params": {"kernel": jnp.asarray(k)[:, :, None, None]}}, jnp.asarray(x))
  y = np.moveaxis(np.asarray(y)[..., 0], 0, -1)            # (H', W', C)
  y = y[..., 0] if img.ndim == 2 else y
  if not clip:
    return y
  lo, hi = value_range(img)
  y = np.clip(y, lo, hi)
  return np.rint(y).astype(img.dtype) if np.issubdtype(img.dtype, np.integer) else y.astype(
      img.dtype if np.issubdtype(img.dtype, np.floating) else np.float32)
