"""Properties of the random crops and shifts, for generated seeds.

`pad_crop(p)` (cnn_jax.data.augment, on the device) zero-pads by p and crops back: each
image must be its own pixels moved by one offset (dy, dx) in [-p, p]^2, zero where they
moved out, and every one of the (2p + 1)^2 offsets must be drawn, about equally often.
`translate(m)` is the same statement with offsets in [-m, m]. The host-side
`random_crop` (cnn_jax.data.box_ops) must reach every window position for each window
size it draws. Where an image's pixels went is read off the pixels themselves: each holds
its own coordinates, so the checks here share no code with the ops.

Cheap: each device op is jitted once, for one batch shape of 5x7 images.
"""
from __future__ import annotations

import collections
import functools

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnn_jax.data import augment, box_ops

# Each example checks N images: 20 examples are about 640 draws per op.
PROPS = settings(max_examples=20, deadline=None, derandomize=True, database=None)
SHAPE = (5, 7, 2)  # (H, W, C): non-square, two channels
N = 64  # images per call: one shape, so each op below compiles once
# op -> (max |dy|, max |dx|)
SPANS = {"pad_crop(2)": (2, 2), "translate(2, 1)": (1, 2)}


def coded(n: int, h: int, w: int, c: int) -> np.ndarray:
  """(n, h, w, c) float32: pixel (i, j) of every image and channel holds (i * w + j + 1) / 64,
  a value no other pixel has and that zero padding cannot take."""
  v = (np.arange(h)[:, None] * w + np.arange(w)[None, :] + 1) / 64
  return np.broadcast_to(v[None, :, :, None], (n, h, w, c)).astype(np.float32)


def shift_of(out: np.ndarray, h: int, w: int) -> tuple[int, int]:
  """(dy, dx) such that out[r, c] came from input pixel (r - dy, c - dx): read off any
  non-zero output pixel's code."""
  r, c = (int(v[0]) for v in np.nonzero(out[..., 0]))
  i, j = divmod(int(round(out[r, c, 0] * 64)) - 1, w)
  return r - i, c - j


@functools.lru_cache(maxsize=None)
def shifted(h: int, w: int, c: int, dy: int, dx: int) -> np.ndarray:
  """The coded image moved dy rows down and dx columns right, zero fill: by hand."""
  src = coded(1, h, w, c)[0]
  out = np.zeros_like(src)
  for r in range(h):
    for q in range(w):
      if 0 <= r - dy < h and 0 <= q - dx < w:
        out[r, q] = src[r - dy, q - dx]
  return out


@functools.lru_cache(maxsize=None)
def jitted(spec: str):
  (op,) = augment.parse(spec)
  return jax.jit(op.fn)


def apply(spec: str, seed: int) -> np.ndarray:
  return np.asarray(jitted(spec)(coded(N, *SHAPE), jax.random.key(seed)))


@PROPS
@given(spec=st.sampled_from(sorted(SPANS)), seed=st.integers(0, 2**31 - 1))
def test_each_image_is_moved_by_one_offset_in_range(spec, seed):
  h, w, c = SHAPE
  my, mx = SPANS[spec]
  out = apply(spec, seed)
  assert out.shape == (N, h, w, c)
  for img in out:
    dy, dx = shift_of(img, h, w)  # some pixel always survives: the spans are under h, w
    assert -my <= dy <= my and -mx <= dx <= mx
    assert np.array_equal(img, shifted(h, w, c, dy, dx)), (spec, seed, dy, dx)


def test_pad_crop_0_is_the_identity():
  x = coded(2, *SHAPE)
  (op,) = augment.parse("pad_crop(0)")
  assert op.fn(x, jax.random.key(0)) is x


@pytest.mark.parametrize("spec", sorted(SPANS))
def test_every_offset_is_drawn_about_equally_often(spec):
  """(2 my + 1)(2 mx + 1) offsets, 100 images each expected: every one drawn, none under
  half or over twice its share (5 standard deviations; a fixed key)."""
  my, mx = SPANS[spec]
  cells = (2 * my + 1) * (2 * mx + 1)
  calls = -(-100 * cells // N)
  counts = collections.Counter(shift_of(img, *SHAPE[:2]) for seed in range(calls)
                               for img in apply(spec, 1000 + seed))
  expected = calls * N / cells
  assert set(counts) == {(dy, dx) for dy in range(-my, my + 1) for dx in range(-mx, mx + 1)}
  assert expected / 2 <= min(counts.values()) and max(counts.values()) <= 2 * expected, counts


def test_host_random_crop_reaches_every_window_position():
  """box_ops.random_crop on a 6x6 image: for each window size drawn often, every (top, left)
  with the window inside the image is drawn (no object, so the first window is taken)."""
  h = w = 6
  im = np.zeros((h, w, 3), np.uint8)
  im[..., 0], im[..., 1] = np.arange(h)[:, None], np.arange(w)[None, :]
  fn = box_ops.parse("random_crop(0.5)")
  empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int32)}
  seen = collections.defaultdict(collections.Counter)
  for seed in range(3000):
    out, _ = fn(im, empty, np.random.default_rng(seed))
    seen[out.shape[:2]][(int(out[0, 0, 0]), int(out[0, 0, 1]))] += 1
  assert set(seen) == {(a, b) for a in (3, 4, 5, 6) for b in (3, 4, 5, 6)}
  for (ch, cw), where in seen.items():
    positions = {(t, l) for t in range(h - ch + 1) for l in range(w - cw + 1)}
    assert set(where) <= positions
    if sum(where.values()) >= 30 * len(positions):
      assert set(where) == positions, ((ch, cw), where)
