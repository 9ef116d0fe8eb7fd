"""Box-aware host ops (cnn_jax.data.box_ops): boxes move exactly with the pixels."""
import pickle

import numpy as np
import pytest

from cnn_jax.data import box_ops

ALL_OPS = ["flip_lr", "letterbox", "random_affine", "random_crop", "resize", "scale_jitter",
           "translate"]


def rng(seed=0):
  return np.random.default_rng(seed)


def target(boxes, labels=None, difficult=None):
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  k = len(boxes)
  return {"boxes": boxes,
          "labels": np.arange(k, dtype=np.int32) if labels is None else np.asarray(labels),
          "difficult": np.zeros(k, bool) if difficult is None else np.asarray(difficult)}


def white_box_image(h, w, box):
  """Black (h, w, 3) with the pixels covered by normalized `box` white."""
  im = np.zeros((h, w, 3), np.uint8)
  x0, y0, x1, y1 = np.round(np.asarray(box) * [w, h, w, h]).astype(int)
  im[y0:y1, x0:x1] = 255
  return im


def white_extent(im):
  """The normalized box of the pixels brighter than half: the content's bounding box."""
  ys, xs = np.nonzero(im[..., 0] > 127)
  h, w = im.shape[:2]
  return np.array([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])


def test_names():
  assert box_ops.names() == ALL_OPS


def test_flip_lr_hand_checked():
  im = white_box_image(10, 10, [0.1, 0.2, 0.4, 0.6])
  out, t = box_ops.parse("flip_lr(1.0)")(im, target([[0.1, 0.2, 0.4, 0.6]]), rng())
  np.testing.assert_allclose(t["boxes"], [[0.6, 0.2, 0.9, 0.6]], atol=1e-6)
  assert np.nonzero(out[2, :, 0])[0].tolist() == [6, 7, 8]  # was columns 1, 2, 3
  np.testing.assert_allclose(white_extent(out), t["boxes"][0], atol=1e-6)
  same, t0 = box_ops.parse("flip_lr(0.0)")(im, target([[0.1, 0.2, 0.4, 0.6]]), rng())
  assert same is im and t0["boxes"].tolist() == target([[0.1, 0.2, 0.4, 0.6]])["boxes"].tolist()


def test_letterbox_hand_checked():
  # 100x200 (h x w) into 128: scale 0.64 -> 64x128, placed 32 rows from the top.
  im = np.full((100, 200, 3), 7, np.uint8)
  out, t = box_ops.parse("letterbox(128)")(im, target([[0.25, 0.2, 0.75, 0.8]]), rng())
  assert out.shape == (128, 128, 3)
  assert (out[:32] == 114).all() and (out[96:] == 114).all() and (out[32:96] == 7).all()
  # x unchanged (full width); y = 0.2 * 64/128 + 32/128 = 0.35, 0.8 * 0.5 + 0.25 = 0.65.
  np.testing.assert_allclose(t["boxes"], [[0.25, 0.35, 0.75, 0.65]], atol=1e-6)
  tall, t2 = box_ops.parse("letterbox((50, 100), fill=0)")(np.full((40, 20, 3), 9, np.uint8),
                                                           target([[0, 0, 1, 1]]), rng())
  # 40x20 into 50x100: scale 1.25 -> 50x25 at left (100 - 25) // 2 = 37.
  assert (tall[:, :37] == 0).all() and (tall[:, 37:62] == 9).all() and (tall[:, 62:] == 0).all()
  np.testing.assert_allclose(t2["boxes"], [[0.37, 0, 0.62, 1]], atol=1e-6)


def test_resize_keeps_normalized_boxes():
  box = [[0.1, 0.2, 0.3, 0.9]]
  out, t = box_ops.parse("resize((32, 48))")(np.zeros((100, 200, 3), np.uint8), target(box), rng())
  assert out.shape == (32, 48, 3)
  np.testing.assert_array_equal(t["boxes"], np.float32(box))


@pytest.mark.parametrize("pp", ["scale_jitter(fill=0)", "translate(fill=0)",
                                "random_affine((0.6, 1.4), 0.25, fill=0)"])
def test_affine_boxes_follow_the_content(pp):
  box = [0.2, 0.3, 0.6, 0.7]
  im = white_box_image(100, 100, box)
  fn = box_ops.parse(pp)
  checked = 0
  for seed in range(8):
    out, t = fn(im, target([box]), rng(seed))
    assert out.shape == im.shape
    if len(t["boxes"]):
      # Within half a pixel (the rounding of the half-intensity threshold); a half-pixel
      # error in the transform's convention would show as up to a whole pixel.
      np.testing.assert_allclose(t["boxes"][0], white_extent(out), atol=0.6 / 100)
      checked += 1
  assert checked >= 4


def test_random_crop_boxes_follow_the_content():
  box = [0.2, 0.3, 0.6, 0.7]
  im = white_box_image(100, 80, box)
  fn = box_ops.parse("random_crop(0.3)")
  for seed in range(8):
    out, t = fn(im, target([box]), rng(seed))
    assert len(t["boxes"]) == 1  # a window keeping the object is redrawn for
    np.testing.assert_allclose(t["boxes"][0], white_extent(out), atol=1e-5)
  assert fn.output_shape((100, 80, 3)) == (None, None, 3)


def test_box_moved_out_is_dropped_with_its_label_and_difficult():
  boxes = [[0.4, 0.4, 0.6, 0.6], [0.0, 0.4, 0.1, 0.6]]  # centre, and at the left edge
  # The op draws s, then (tx, ty): find a seed that shifts left by more than 0.12.
  seed = next(s for s in range(100) if rng(s).uniform(-0.3, 0.3, size=3)[1] < -0.12)
  im = np.zeros((50, 50, 3), np.uint8)
  _, t = box_ops.parse("translate(0.3)")(im, target(boxes, [3, 7], [False, True]), rng(seed))
  assert t["labels"].tolist() == [3] and t["difficult"].tolist() == [False]
  assert t["boxes"].shape == (1, 4)


def test_keep_visible_rules_hand_checked():
  boxes = np.array([[-0.1, 0.4, 0.1, 0.6],     # half visible
                    [0.5, 0.5, 0.505, 0.6],    # 0.5 px wide in a 100 px image
                    [0.2, 0.2, 0.4, 0.4]])
  kept, labels = box_ops._keep_visible(boxes, np.arange(3), 100, 100, 0.25)
  assert labels.tolist() == [0, 2]
  np.testing.assert_allclose(kept[0], [0, 0.4, 0.1, 0.6], atol=1e-6)
  assert box_ops._keep_visible(boxes, np.arange(3), 100, 100, 0.6)[1].tolist() == [2]


def test_determinism_with_a_fixed_seed():
  im = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
  fn = box_ops.parse("random_crop|scale_jitter|translate|flip_lr|letterbox(64)")
  t = target([[0.1, 0.1, 0.9, 0.9], [0.3, 0.2, 0.5, 0.8]])
  a, ta = fn(im, t, rng(5))
  b, tb = fn(im, t, rng(5))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ta["boxes"], tb["boxes"])
  c, _ = fn(im, t, rng(6))
  assert not np.array_equal(a, c)


def test_output_shape_and_random():
  assert box_ops.parse("letterbox(128)").output_shape((None, None, 3)) == (128, 128, 3)
  assert box_ops.parse("scale_jitter|translate").output_shape((100, 200, 3)) == (100, 200, 3)
  assert box_ops.parse("random_crop").output_shape((100, 200, 3)) == (None, None, 3)
  assert box_ops.parse("random_crop|resize((32, 64))").output_shape((None, None, 3)) == (32, 64, 3)
  assert not box_ops.parse("letterbox(64)|resize(32)").random
  assert box_ops.parse("letterbox(64)|flip_lr").random


def test_unknown_op_and_bad_arguments():
  with pytest.raises(ValueError, match="Did you mean 'letterbox'"):
    box_ops.parse("letterbx(128)")
  with pytest.raises(ValueError, match="bad arguments to op 'scale_jitter'"):
    box_ops.parse("scale_jitter(1.5, 0.5)")
  with pytest.raises(ValueError, match="bad arguments to op 'flip_lr'"):
    box_ops.parse("flip_lr(2)")


def test_pickle_round_trip_and_str():
  fn = box_ops.parse("letterbox(64, fill=0)|flip_lr(0.5)")
  back = pickle.loads(pickle.dumps(fn))
  assert back == fn and str(back) == "letterbox(64, fill=0)|flip_lr(0.5)"
  im = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
  a, ta = fn(im, target([[0.1, 0.1, 0.5, 0.5]]), rng(3))
  b, tb = back(im, target([[0.1, 0.1, 0.5, 0.5]]), rng(3))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ta["boxes"], tb["boxes"])
  assert box_ops.parse("") == box_ops.parse(None) == box_ops.BoxPipeline()


def test_pad_objects_shapes_valid_mask_and_largest_kept():
  t = target([[0, 0, 0.1, 0.1], [0, 0, 0.5, 0.5], [0, 0, 0.3, 0.3]], [4, 5, 6],
             [True, False, True])
  padded = box_ops.pad_objects(t, 5)
  assert padded["boxes"].shape == (5, 4) and padded["boxes"].dtype == np.float32
  assert padded["labels"].tolist() == [4, 5, 6, 0, 0] and padded["labels"].dtype == np.int32
  assert padded["difficult"].tolist() == [True, False, True, False, False]
  assert padded["valid"].tolist() == [True, True, True, False, False]
  cut = box_ops.pad_objects(t, 2)  # the two largest, in their original order
  assert cut["labels"].tolist() == [5, 6] and cut["valid"].all()
  np.testing.assert_allclose(cut["boxes"], [[0, 0, 0.5, 0.5], [0, 0, 0.3, 0.3]])
  empty = box_ops.pad_objects(target(np.zeros((0, 4))), 3)
  assert empty["boxes"].shape == (3, 4) and not empty["valid"].any()


@pytest.mark.parametrize("hw", [(37, 91), (120, 45), (64, 64)])
def test_frame_moves_boxes_as_the_deterministic_ops_do(hw):
  """`BoxPipeline.frame` (what the k-means anchors cluster) gives, with no image, the boxes
  the real pipeline gives after its deterministic geometry; random ops are left out of it."""
  boxes = np.array([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0], [0.3, 0.35, 0.4, 0.5]], np.float32)
  image = np.zeros(hw + (3,), np.uint8)
  for pp in ("letterbox(64)", "resize((50, 30))|letterbox((40, 64))", "letterbox(48)|resize(96)"):
    pipeline = box_ops.parse(pp)
    _, out = pipeline(image, target(boxes), rng())
    assert pipeline.frame_needs_size  # a letterbox's scale depends on the image size
    np.testing.assert_allclose(pipeline.frame(boxes, hw), out["boxes"], atol=1e-6)
  jittered = box_ops.parse("flip_lr|scale_jitter|letterbox(64)")
  np.testing.assert_allclose(jittered.frame(boxes, hw),
                             box_ops.parse("letterbox(64)").frame(boxes, hw), atol=0)
  assert not box_ops.parse("flip_lr|resize(32)").frame_needs_size
  np.testing.assert_array_equal(box_ops.parse("flip_lr|resize(32)").frame(boxes), boxes)
  with pytest.raises(ValueError, match="depend on the image size; pass it"):
    jittered.frame(boxes)
