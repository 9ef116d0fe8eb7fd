"""Properties of IoU, box formats and the box-moving host ops, for generated inputs.

IoU (cnn_jax.detection.boxes) is held to its definition computed exactly in rationals; the
host ops that move pixels and boxes together (cnn_jax.data.box_ops) are held to the pixels:
a box painted into the image must come out where the op says the box went, and the box
must be where moving its corners by hand puts it. Hand-worked single cases are in
tests/test_box_ops.py and tests/test_detection_correctness.py.

Cheap: NumPy and PIL on images of at most 64x64, and the IoU jitted once for one fixed
shape (8 boxes), so nothing compiles per example.
"""
from __future__ import annotations

import functools
from fractions import Fraction

import jax
import numpy as np
from hypothesis import assume, example, given, settings, strategies as st

from cnn_jax.data import box_ops
from cnn_jax.detection import boxes as boxes_lib

PROPS = settings(max_examples=60, deadline=None, derandomize=True, database=None)
K = 8  # boxes per IoU example: one shape, so each jitted function below compiles once
iou_xyxy = jax.jit(functools.partial(boxes_lib.box_iou, box_format="xyxy"))
iou_cxcywh = jax.jit(boxes_lib.box_iou)
to_cxcywh, to_xyxy = jax.jit(boxes_lib.xyxy_to_cxcywh), jax.jit(boxes_lib.cxcywh_to_xyxy)

unit = st.integers(0, 64).map(lambda v: v / 64)  # exact in float32: IoU's inputs exactly


@st.composite
def xyxy_st(draw, n: int = K) -> np.ndarray:
  """(n, 4) float32 corner boxes in [0, 1], zero-area ones included."""
  out = []
  for _ in range(n):
    x0, x1 = sorted([draw(unit), draw(unit)])
    y0, y1 = sorted([draw(unit), draw(unit)])
    out.append((x0, y0, x1, y1))
  return np.asarray(out, np.float32)


def exact_iou(a, b) -> Fraction:
  """IoU as a rational number from the corners' exact values; 0 for an empty union."""
  a, b = [Fraction(float(v)) for v in a], [Fraction(float(v)) for v in b]
  iw = max(Fraction(0), min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(Fraction(0), min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else Fraction(0)


@PROPS
@given(a=xyxy_st(), b=xyxy_st())
def test_iou_is_the_exact_ratio_symmetric_and_in_0_1(a, b):
  ab = np.asarray(iou_xyxy(a, b))
  ba = np.asarray(iou_xyxy(b, a))
  np.testing.assert_array_equal(ab, ba)
  assert ((ab >= 0) & (ab <= 1)).all()
  expect = np.array([float(exact_iou(x, y)) for x, y in zip(a, b)], np.float32)
  # Every area is exact in float32 (multiples of 1/64^2); only the division rounds.
  np.testing.assert_allclose(ab, expect, rtol=2e-7, atol=0)
  self_iou = np.asarray(iou_xyxy(a, a))
  area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  np.testing.assert_array_equal(self_iou, np.where(area > 0, 1.0, 0.0))


@PROPS
@given(a=xyxy_st(), b=xyxy_st(), flip=st.booleans())
def test_iou_does_not_depend_on_the_frame(a, b, flip):
  """Mirroring, swapping x and y, or changing format leaves every IoU as it was."""
  ab = np.asarray(iou_xyxy(a, b))
  mirror = lambda z: np.stack([1 - z[:, 2], z[:, 1], 1 - z[:, 0], z[:, 3]], 1)
  swap = lambda z: z[:, [1, 0, 3, 2]]
  move = mirror if flip else swap
  np.testing.assert_array_equal(
      np.asarray(iou_xyxy(move(a), move(b))), ab)
  # cx, cy, w, h of multiples of 1/64 are multiples of 1/128: exact, and so are the corners
  # they convert back to, so the cxcywh IoU is the same number.
  to_c = lambda z: np.stack([(z[:, 0] + z[:, 2]) / 2, (z[:, 1] + z[:, 3]) / 2,
                             z[:, 2] - z[:, 0], z[:, 3] - z[:, 1]], 1).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(iou_cxcywh(to_c(a), to_c(b))), ab)


@PROPS
@given(a=xyxy_st())
def test_formats_round_trip_and_match_the_definition(a):
  c = np.asarray(to_cxcywh(a))
  np.testing.assert_array_equal(c[:, 2:], a[:, 2:] - a[:, :2])  # w = x1 - x0, h = y1 - y0
  np.testing.assert_array_equal(c[:, :2], (a[:, :2] + a[:, 2:]) / 2)
  np.testing.assert_array_equal(np.asarray(to_xyxy(c)), a)
  np.testing.assert_array_equal(np.asarray(to_cxcywh(to_xyxy(c))), c)


# ------------------------------------------------------------------ box-moving host ops
@st.composite
def image_and_box(draw, min_side: int = 4):
  """An (H, W) image size and a box on whole pixels at least min_side wide and high."""
  h, w = draw(st.integers(8, 48)), draw(st.integers(8, 48))
  x0 = draw(st.integers(0, w - min_side))
  x1 = draw(st.integers(x0 + min_side, w))
  y0 = draw(st.integers(0, h - min_side))
  y1 = draw(st.integers(y0 + min_side, h))
  return h, w, (x0, y0, x1, y1)


def painted(h: int, w: int, px_box) -> np.ndarray:
  """A black (h, w, 3) image with the box's pixels white (pixel (i, j) covers
  [j, j + 1] x [i, i + 1])."""
  im = np.zeros((h, w, 3), np.uint8)
  x0, y0, x1, y1 = px_box
  im[y0:y1, x0:x1] = 255
  return im


def lit_extent(im: np.ndarray) -> np.ndarray:
  """Pixel-edge box (x0, y0, x1, y1) of the pixels brighter than half."""
  ys, xs = np.nonzero(im[..., 0] > 127)
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def one(h, w, px_box) -> dict:
  x0, y0, x1, y1 = px_box
  return {"boxes": np.array([[x0 / w, y0 / h, x1 / w, y1 / h]], np.float32),
          "labels": np.array([5], np.int32)}


@PROPS
@given(case=image_and_box(min_side=1))
def test_flip_lr_moves_the_box_with_the_pixels(case):
  h, w, (x0, y0, x1, y1) = case
  px = (x0, y0, x1, y1)
  out, t = box_ops.parse("flip_lr(1.0)")(painted(h, w, px), one(h, w, px),
                                        np.random.default_rng(0))
  # By hand: pixel column j goes to w - 1 - j, so the edges x0, x1 go to w - x1, w - x0.
  corners = np.array([(w - x1) / w, y0 / h, (w - x0) / w, y1 / h], np.float32)
  np.testing.assert_allclose(t["boxes"][0], corners, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(lit_extent(out), [w - x1, y0, w - x0, y1])
  assert t["labels"].tolist() == [5]


@PROPS
@given(case=image_and_box(min_side=6), size=st.tuples(st.integers(24, 64), st.integers(24, 64)))
def test_resize_and_letterbox_move_the_box_with_the_pixels(case, size):
  """The box stays on the painted pixels to within a pixel of the output (bilinear
  resampling puts the half-intensity edge within half a pixel, plus uint8 rounding)."""
  h, w, px = case
  oh, ow = size
  im = painted(h, w, px)
  # Bilinear shrinking averages over 1 / scale input pixels: keep the box wider than that.
  assume(min(px[2] - px[0], px[3] - px[1]) >= 2 * max(h / oh, w / ow, 1))
  out, t = box_ops.parse(f"resize(({oh}, {ow}))")(im, one(h, w, px), np.random.default_rng(0))
  np.testing.assert_array_equal(t["boxes"], one(h, w, px)["boxes"])  # normalized: unchanged
  np.testing.assert_allclose(lit_extent(out), t["boxes"][0] * [ow, oh, ow, oh], atol=1.0)

  out, t = box_ops.parse(f"letterbox(({oh}, {ow}), fill=0)")(im, one(h, w, px),
                                                              np.random.default_rng(0))
  # By hand: scale s = min(oh / h, ow / w); the image becomes round(h s) x round(w s),
  # centred; a pixel edge x goes to left + x * nw / w.
  s = min(oh / h, ow / w)
  nh, nw = round(h * s), round(w * s)
  top, left = (oh - nh) // 2, (ow - nw) // 2
  x0, y0, x1, y1 = px
  corners = np.array([left + x0 * nw / w, top + y0 * nh / h, left + x1 * nw / w,
                      top + y1 * nh / h])
  np.testing.assert_allclose(t["boxes"][0] * [ow, oh, ow, oh], corners, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(lit_extent(out), corners, atol=1.0)
  assert out.shape == (oh, ow, 3)
  # Nothing outside the placed image: the fill (0) there, and the image inside it.
  inside = np.zeros((oh, ow), bool)
  inside[top:top + nh, left:left + nw] = True
  assert not out[~inside].any()
  frame = box_ops.parse(f"letterbox(({oh}, {ow}))").frame(one(h, w, px)["boxes"], (h, w))
  np.testing.assert_array_equal(frame, t["boxes"])


def coded(h: int, w: int) -> np.ndarray:
  """Pixel (i, j) holds (i, j, 7): where a crop came from is read off its pixels."""
  im = np.zeros((h, w, 3), np.uint8)
  im[..., 0], im[..., 1], im[..., 2] = np.arange(h)[:, None], np.arange(w)[None, :], 7
  return im


@PROPS
@given(h=st.integers(4, 40), w=st.integers(4, 40), boxes=xyxy_st(3),
       min_scale=st.sampled_from([0.1, 0.3, 0.7, 1.0]), min_visible=st.sampled_from([0.0, 0.5]),
       seed=st.integers(0, 2**16))
@example(h=10, w=10, boxes=np.array([[0.0, 0.0, 0.05, 0.05]] * 3, np.float32), min_scale=0.1,
         min_visible=0.5, seed=0)  # an object under a pixel: never kept, the image stays whole
def test_random_crop_window_pixels_and_boxes(h, w, boxes, min_scale, min_visible, seed):
  """The window lies inside the image with sides in [round(min_scale * side), side], the
  output is exactly its pixels, and every box is moved, clipped and kept or dropped by
  the op's rule, worked out here from the window read off the pixels."""
  im = coded(h, w)
  target = {"boxes": boxes, "labels": np.arange(3, dtype=np.int32) + 10}
  out, t = box_ops.parse(f"random_crop({min_scale}, {min_visible})")(
      im, target, np.random.default_rng(seed))
  ch, cw = out.shape[:2]
  top, left = int(out[0, 0, 0]), int(out[0, 0, 1])
  assert 0 <= top <= h - ch and 0 <= left <= w - cw
  np.testing.assert_array_equal(out, im[top:top + ch, left:left + cw])
  moved = (boxes.astype(np.float64) * [w, h, w, h] - [left, top, left, top]) / [cw, ch, cw, ch]
  clipped = np.clip(moved, 0, 1)
  cw_n, ch_n = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
  area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
  visible = (cw_n * cw >= 1) & (ch_n * ch >= 1) & (cw_n * ch_n >= min_visible * area)
  if (ch, cw) == (h, w) and not visible.any():  # no window kept an object: image left whole
    np.testing.assert_array_equal(t["boxes"], boxes)
    assert t["labels"].tolist() == [10, 11, 12]
    return
  assert round(h * min_scale) <= ch <= h and round(w * min_scale) <= cw <= w
  assert visible.any()  # a window keeping no object is redrawn
  assert t["labels"].tolist() == [10 + i for i in np.flatnonzero(visible)]
  np.testing.assert_allclose(t["boxes"], clipped[visible], rtol=0, atol=1e-6)
  assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
