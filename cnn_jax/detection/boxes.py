"""Box formats and IoU, shared by the localizer, YOLO and (later) NMS / mAP.

Boxes are (..., 4) arrays in normalized image coordinates, either centre-size
(cx, cy, w, h) or corners (x0, y0, x1, y1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def cxcywh_to_xyxy(b: Array) -> Array:
  """(cx, cy, w, h) -> (x0, y0, x1, y1) on the last axis."""
  cx, cy, w, h = jnp.moveaxis(b, -1, 0)
  return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def xyxy_to_cxcywh(b: Array) -> Array:
  """(x0, y0, x1, y1) -> (cx, cy, w, h) on the last axis."""
  x0, y0, x1, y1 = jnp.moveaxis(b, -1, 0)
  return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def box_iou(a: Array, b: Array, box_format: str = "cxcywh") -> Array:
  """Elementwise IoU of two broadcastable arrays of boxes (..., 4)."""
  if box_format == "cxcywh":
    a, b = cxcywh_to_xyxy(a), cxcywh_to_xyxy(b)
  elif box_format != "xyxy":
    raise ValueError(f"box_format must be 'cxcywh' or 'xyxy', got {box_format!r}")
  iw = jnp.clip(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0)
  ih = jnp.clip(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0)
  inter = iw * ih

  def area(z):
    return jnp.clip(z[..., 2] - z[..., 0], 0) * jnp.clip(z[..., 3] - z[..., 1], 0)

  return inter / jnp.maximum(area(a) + area(b) - inter, 1e-9)
