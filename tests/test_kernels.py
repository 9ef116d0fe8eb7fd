"""cnn_jax.kernels: the course's worked numbers, invariants, and parity with scipy."""
import numpy as np
import pytest
from scipy import signal

from cnn_jax import kernels

# The course's 5x5 example (the one tests/test_layers.py checks on Conv2D directly).
COURSE_5X5 = np.array([[60, 113, 56, 139, 85], [73, 121, 54, 84, 128], [131, 99, 70, 129, 127],
                       [80, 57, 115, 69, 134], [104, 126, 123, 95, 130]], np.uint8)


def test_sharpen_on_the_course_example_gives_114_top_left():
  # Zero padding ("same"): the top-left output sees only 60 and its right / lower
  # neighbours, 5 * 60 - 113 - 73 = 114 (the other two neighbours are padding).
  out = kernels.apply(COURSE_5X5, "sharpen", clip=False)
  assert out.shape == (5, 5) and out[0, 0] == 114
  # One interior value by hand: 5 * 121 - 113 - 73 - 54 - 99 = 266, which the uint8
  # result clips to 255 (the image's range).
  assert out[1, 1] == 266
  clipped = kernels.apply(COURSE_5X5, "sharpen")
  assert clipped.dtype == np.uint8 and clipped[0, 0] == 114 and clipped[1, 1] == 255
  np.testing.assert_array_equal(clipped, np.clip(np.rint(out), 0, 255))


def test_sharpen_on_the_other_classic_5x5_example():
  # The example image of many kernel tutorials: its first interior pixel is
  # 5 * 99 - 102 - 103 - 98 - 103 = 89; the zero-padded top-left is 5 * 105 - 102 - 103
  # = 320, shown as 255 (114 is the course's own example above, not this one).
  x = np.array([[105, 102, 100, 97, 96], [103, 99, 103, 101, 102], [101, 98, 104, 102, 100],
                [99, 101, 106, 104, 99], [104, 104, 104, 100, 98]], np.uint8)
  raw = kernels.apply(x, "sharpen", clip=False)
  assert raw[1, 1] == 89 and raw[0, 0] == 320
  assert kernels.apply(x, "sharpen")[0, 0] == 255
  assert kernels.apply(x, "sharpen", padding="valid", clip=False)[0, 0] == 89


def test_vertical_edge_on_the_half_bright_6x6_image():
  x = np.zeros((6, 6), np.float32)
  x[:, :3] = 10
  out = kernels.apply(x, "vertical_edge", padding="valid", clip=False)
  np.testing.assert_array_equal(out, np.tile([0, 30, 30, 0], (4, 1)))
  # The same edge transposed, seen by horizontal_edge ([1, 0, -1] columns).
  out_h = kernels.apply(x.T, "horizontal_edge", padding="valid", clip=False)
  np.testing.assert_array_equal(out_h, np.tile([0, 30, 30, 0], (4, 1)).T)


@pytest.mark.parametrize("name", ["box_blur", "smoothing", "gaussian"])
def test_a_blur_keeps_a_constant_image_constant(name):
  k = kernels.get(name)
  assert k.sum() == pytest.approx(1.0, abs=1e-6)
  x = np.full((9, 10, 3), 77, np.uint8)
  out = kernels.apply(x, name)  # zero padding: constant away from the border only
  r = k.shape[0] // 2
  np.testing.assert_array_equal(out[r:-r, r:-r], 77)
  assert out[0, 0, 0] < 77
  for border in ("edge", "reflect", "symmetric", "wrap"):  # constant everywhere
    np.testing.assert_array_equal(kernels.apply(x, name, padding=border), x)


@pytest.mark.parametrize("name", ["edge", "vertical_edge", "horizontal_edge", "sobel_x",
                                  "sobel_y"])
def test_an_edge_kernel_gives_zero_on_a_constant_image(name):
  x = np.full((7, 7), 200.0, np.float32)
  out = kernels.apply(x, name, clip=False)
  np.testing.assert_array_equal(out[1:-1, 1:-1], 0)
  np.testing.assert_array_equal(kernels.apply(x, name, padding="edge", clip=False), 0)


@pytest.mark.parametrize("name", kernels.names())
def test_parity_with_scipy_correlate2d(name):
  rng = np.random.RandomState(0)
  x = rng.randint(0, 256, (11, 13, 3)).astype(np.uint8)
  k = kernels.get(name)
  for padding, mode, boundary in (("same", "same", "fill"), ("valid", "valid", "fill"),
                                  ("full", "full", "fill"), ("wrap", "same", "wrap"),
                                  ("symmetric", "same", "symm")):
    want = np.stack([signal.correlate2d(x[..., c].astype(np.float64), k, mode, boundary)
                     for c in range(3)], -1)
    got = kernels.apply(x, name, padding=padding, clip=False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3, err_msg=f"{name} {padding}")
    np.testing.assert_array_equal(kernels.apply(x, k, padding=padding),
                                  np.clip(np.rint(got), 0, 255).astype(np.uint8))


def test_cross_correlation_not_convolution():
  # An impulse shows the kernel itself (correlation) — mirrored it would be a convolution.
  x = np.zeros((5, 5), np.float32)
  x[2, 2] = 1
  out = kernels.apply(x, "sobel_x", clip=False)
  np.testing.assert_array_equal(out[1:4, 1:4], kernels.get("sobel_x")[::-1, ::-1])


def test_sharpen_9_is_twice_identity_minus_box_blur():
  np.testing.assert_allclose(kernels.get("sharpen_9"),
                             2 * kernels.get("identity") - kernels.get("box_blur"), atol=1e-7)


def test_float_images_clip_to_their_range_and_bad_input():
  x = np.random.RandomState(1).rand(6, 6).astype(np.float32)
  out = kernels.apply(x, "edge")
  assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
  with pytest.raises(ValueError, match="unknown kernel 'blurr'.*box_blur.*sobel_x"):
    kernels.get("blurr")
  with pytest.raises(ValueError, match="unknown kernel"):
    kernels.apply(x, "nope")
  with pytest.raises(ValueError, match="unknown padding"):
    kernels.apply(x, "edge", padding="zeros")
  with pytest.raises(ValueError, match="2-D"):
    kernels.apply(x, np.ones(3))
  with pytest.raises(ValueError, match=r"\(H, W\)"):
    kernels.apply(np.ones((1, 4, 4, 1)), "edge")
