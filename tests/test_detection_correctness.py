"""Detection and localization results that were silently wrong (issue 20, items 6-8):

* the localizer trained toward label 0 / box (0, 0, 0, 0) for an image whose object the
  augmentation pushed out of frame (its `valid` flag was ignored);
* k-means anchors were clustered on the stored boxes, not on the boxes the model sees
  after the geometric part of `pp_train` (letterbox);
* evaluation ground truth was cut to `detection.max_objects` (mAP inflated);
* a flip in a detector's `pp_eval` mirrored `cnn-jax detect`'s boxes.
"""
import logging
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnn_jax import config as config_lib
from cnn_jax.data import sources
from cnn_jax.detection import anchors as anchors_lib
from cnn_jax.detection import detect as detect_lib
from cnn_jax.detection import localization_task
from cnn_jax.detection import task as detection_task
from cnn_jax.training import setup as setup_lib

sys.path.insert(0, os.path.dirname(__file__))
from test_mean_ap import devkit_voc_eval, run_cocoeval  # noqa: E402  the independent references

XML = """<annotation><filename>{name}.png</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
OBJECT = """<object><name>{cls}</name><difficult>0</difficult>
<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def write_voc(root, images):
  """images: {name: ((h, w), [(x0, y0, x1, y1), ...])}, every object of class "a"."""
  os.makedirs(root / "images"), os.makedirs(root / "annotations")
  for name, ((h, w), boxes) in images.items():
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(root / "images" / f"{name}.png")
    objects = "".join(OBJECT.format(cls="a", x0=b[0], y0=b[1], x1=b[2], y1=b[3]) for b in boxes)
    (root / "annotations" / f"{name}.xml").write_text(XML.format(name=name, w=w, h=h,
                                                                 objects=objects))


def detection_config(root, **detection):
  c = config_lib.base_config()
  c.task, c.model, c.model_input_shape = "detection", "tiny_cnn", (64, 64, 3)
  c.dataset.name, c.dataset.path = "voc", str(root)
  c.dataset.train_split, c.dataset.val_split, c.dataset.test_split = "train", "train", ""
  c.dataset.pp_train = c.dataset.pp_eval = "resize(64)"
  c.batch_size = c.eval_batch_size = 1
  c.progress_bar, c.best_metric = False, "mAP50"
  for k, v in detection.items():
    c.detection[k] = v
  return c


# ---- item 6: the localizer masks examples without a valid object -----------------------

def localization_config():
  c = config_lib.base_config()
  c.task = "localization"
  return c


def hand_loss(logits, boxes, label, truth):
  """0.8 x cross entropy + 0.2 x smooth L1 summed over the 4 box numbers, in numpy."""
  logits = np.asarray(logits, np.float64)
  ce = np.log(np.exp(logits).sum()) - logits[label]
  d = np.abs(np.asarray(boxes, np.float64) - truth)
  return 0.8 * ce, 0.2 * np.where(d < 1, 0.5 * d * d, d - 0.5).sum()


def test_localization_loss_ignores_an_example_without_a_valid_object():
  """Example 1 lost its object to `translate`: label 0, box (0, 0, 0, 0), valid False. The
  loss is the mean over examples 0 and 2 only, with the 0.8 / 0.2 weights; before, example
  1 pulled the class toward 0 and the box toward the corner (loss 0.684 instead of 0.853)."""
  logits = np.array([[2.0, -1.0, 0.5], [3.0, 0.0, 0.0], [-0.5, 1.5, 0.2]], np.float32)
  boxes = np.array([[0.1, 0.2, 0.6, 0.9], [0.7, 0.7, 0.9, 0.95], [0.3, 0.1, 0.5, 0.4]], np.float32)
  truth = np.array([[0.2, 0.2, 0.5, 0.7], [0.0, 0.0, 0.0, 0.0], [0.0, 0.3, 0.9, 0.6]], np.float32)
  labels = np.array([2, 0, 1], np.int32)
  valid = np.array([True, False, True])
  batch = {"boxes": truth[:, None], "labels": labels[:, None], "valid": valid[:, None]}
  loss_fn = jax.jit(localization_task.loss_fn(localization_config()))
  loss, metrics = loss_fn((logits, boxes), batch)
  parts = np.array([hand_loss(logits[i], boxes[i], labels[i], truth[i]) for i in (0, 2)])
  expected = parts.sum(1).mean()
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  assert float(metrics["cls_loss"]) == pytest.approx(parts[:, 0].mean() / 0.8, rel=1e-6)
  assert float(metrics["box_loss"]) == pytest.approx(parts[:, 1].mean() / 0.2, rel=1e-6)
  # The weights by value: swapped ones (0.2 CE + 0.8 box) give another number.
  swapped = (parts[:, 0] / 0.8 * 0.2 + parts[:, 1] / 0.2 * 0.8).mean()
  assert abs(swapped - expected) > 0.3
  assert float(metrics["accuracy"]) == 0.5  # 0 right (argmax 0 vs 2), 2 right (argmax 1)
  # A batch whose objects were all pushed out: zero loss and zero gradient, not NaN.
  none = {**batch, "valid": np.zeros((3, 1), bool)}
  value, grad = jax.jit(jax.value_and_grad(lambda lg: loss_fn((lg, boxes), none)[0]))(logits)
  assert float(value) == 0.0
  np.testing.assert_array_equal(grad, 0.0)


def test_localization_eval_counts_only_examples_with_an_object():
  """Evaluation excludes an example without a valid object from every metric (loss,
  accuracy, IoU) and counts it apart (`num_without_object`)."""
  logits = jnp.array([[2.0, -1.0], [3.0, 0.0], [-0.5, 1.5], [0.0, 4.0]])
  boxes = jnp.array([[0.2, 0.2, 0.5, 0.7]] * 4)
  state = types.SimpleNamespace(apply_fn=lambda v, x, train: (logits, boxes), params={},
                                batch_stats={})
  batch = {"image": np.zeros((4, 2, 2, 3), np.uint8),
           "boxes": np.array([[[0.2, 0.2, 0.5, 0.7]], [[0, 0, 0, 0]], [[0.2, 0.2, 0.5, 0.5]],
                              [[0.2, 0.2, 0.5, 0.7]]], np.float32),
           "labels": np.array([[0], [0], [0], [1]], np.int32),
           "valid": np.array([[True], [False], [True], [True]]),
           "mask": np.array([1, 1, 1, 0], np.float32)}  # example 3 is batch padding
  sums = jax.jit(lambda b: localization_task.eval_step(
      state, b, config=localization_config(), preprocess=lambda x, key, train: x))(batch)
  out = localization_task.metrics({k: float(v) for k, v in sums.items()})
  assert out["num_examples"] == 2 and out["num_without_object"] == 1
  assert out["accuracy"] == 0.5 and out["mean_iou"] == pytest.approx(0.8, rel=1e-6)
  assert out["iou50"] == 1.0
  expected = np.mean([sum(hand_loss(logits[i], boxes[i], int(batch["labels"][i, 0]),
                                    batch["boxes"][i, 0])) for i in (0, 2)])
  assert out["loss"] == pytest.approx(expected, rel=1e-6)


# ---- item 7: anchors from the boxes as the model sees them -----------------------------

def test_anchors_are_clustered_in_the_model_frame_of_a_letterbox(tmp_path):
  """Non-square images letterboxed to 64x64: a box's normalized size in the model input is
  (w_px * nw / W / 64, h_px * nh / H / 64), nw, nh the scaled image's size; random ops
  (flip, scale_jitter) are left out. The anchors are k-means on exactly those sizes."""
  images = {"wide": ((40, 160), [(0, 0, 40, 20), (50, 10, 150, 40)]),     # s = 0.4: 64 x 16
            "tall": ((120, 60), [(5, 5, 35, 95), (10, 20, 50, 60)]),       # s = 8/15: 32 x 64
            "square": ((50, 50), [(0, 0, 25, 10), (10, 10, 40, 40)])}      # s = 1.28: 64 x 64
  write_voc(tmp_path, images)
  c = detection_config(tmp_path, num_anchors=3)
  c.dataset.pp_train = "flip_lr|scale_jitter(0.8, 1.2)|letterbox(64)"
  data = sources.load_source(c.dataset, "train")
  detection_task.resolve(c, data, [data])
  scaled = {"wide": (64, 16), "tall": (32, 64), "square": (64, 64)}  # (nw, nh)
  expected, stored = [], []
  for file in data.image_files:  # the source's order: k-means++ seeding draws by index
    name = os.path.splitext(os.path.basename(file))[0]
    (h, w), boxes = images[name]
    nw, nh = scaled[name]
    for x0, y0, x1, y1 in boxes:
      expected.append(((x1 - x0) * nw / w / 64, (y1 - y0) * nh / h / 64))
      stored.append(((x1 - x0) / w, (y1 - y0) / h))
  want = anchors_lib.kmeans_anchors(np.array(expected), 3, seed=c.seed)
  np.testing.assert_allclose(np.array(c.detection.anchors), want, atol=1e-5)
  before = anchors_lib.kmeans_anchors(np.array(stored), 3, seed=c.seed)
  assert np.abs(np.array(c.detection.anchors) - before).max() > 0.05
  np.testing.assert_allclose(np.sort(detection_task.box_sizes(data, c.dataset.pp_train), 0),
                             np.sort(np.array(expected, np.float32), 0), atol=1e-6)


# ---- item 8: evaluation keeps every ground-truth box -------------------------------------

# One 64x64 image, four objects of one class; max_objects=2 keeps B and A (the largest).
A, B, C, D = (0, 0, 30, 30), (34, 30, 64, 62), (0, 40, 12, 52), (44, 0, 54, 10)
FALSE = (16, 44, 28, 60)  # overlaps no object
DETECTIONS = ((B, 0.9), (A, 0.8), (C, 0.7), (FALSE, 0.6))


def fixed_detections(apply_fn, variables, images, config):
  """`task.detect` stand-in: the same four detections for every image (model frame)."""
  n = images.shape[0]
  boxes = jnp.array([b for b, _ in DETECTIONS], jnp.float32) / 64
  return {"boxes": jnp.broadcast_to(boxes, (n, 4, 4)),
          "scores": jnp.broadcast_to(jnp.array([s for _, s in DETECTIONS]), (n, 4)),
          "classes": jnp.zeros((n, 4), jnp.int32), "valid": jnp.ones((n, 4), bool)}


def test_evaluation_keeps_ground_truth_beyond_max_objects(tmp_path, monkeypatch, caplog):
  """Before: the eval batches padded ground truth to max_objects=2, so C and D vanished and
  the detector scored mAP50 1.0; with all four boxes it is 0.75 (VOC devkit) and COCO's
  mAP is pycocotools' on all four. Training still caps its targets, and says so once."""
  write_voc(tmp_path, {"img": ((64, 64), [A, B, C, D])})
  c = detection_config(tmp_path, max_objects=2, anchors=((0.2, 0.3),))
  monkeypatch.setattr(detection_task, "detect", fixed_detections)
  with caplog.at_level(logging.WARNING, logger="cnn_jax"):
    s = setup_lib.setup(c)
  capped = [r.getMessage() for r in caplog.records if "max_objects" in r.getMessage()]
  assert capped == ["detection.max_objects=2 leaves out 2 of the 4 objects of the training "
                    "split (the smallest of 1 image with more) from the training targets; "
                    "evaluation keeps every ground-truth box"]
  state = s.compiled.init_state(jax.random.key(0))
  out = detection_task.evaluate(s, state, s.val_data)
  dets = [{"boxes": np.array([b for b, _ in DETECTIONS], np.float64) / 64,
           "scores": np.array([sc for _, sc in DETECTIONS]), "classes": np.zeros(4, np.int64)}]
  full = [{"boxes": np.array([A, B, C, D], np.float64) / 64, "classes": np.zeros(4, np.int64)}]
  truncated = [{"boxes": np.array([A, B], np.float64) / 64, "classes": np.zeros(2, np.int64)}]
  assert out["mAP50"] == pytest.approx(devkit_voc_eval(dets, full, 0), abs=1e-9)
  assert out["mAP50"] == pytest.approx(0.75)
  assert out["mAP"] == pytest.approx(run_cocoeval(dets, full, 1).stats[0], abs=1e-6)
  assert devkit_voc_eval(dets, truncated, 0) == pytest.approx(1.0)
  assert run_cocoeval(dets, truncated, 1).stats[0] > out["mAP"] + 0.2


# ---- suspected: a flip in a detector's pp_eval ------------------------------------------

def test_a_flip_in_a_detectors_pp_eval_is_refused():
  """Confirmed: with pp_eval='flip_lr(1.0)|resize(64)', `detect` reported a detection at
  x 0.1-0.3 of the (mirrored) model input at pixels 9.6-28.8 of a 96 px wide image, where
  the object is at 67.2-86.4: boxes are mapped back without undoing the flip. A flip in
  evaluation has no use, so a detector refuses it, at setup and in `cnn-jax detect`."""
  c = config_lib.base_config()
  c.task, c.model, c.model_input_shape = "detection", "tiny_cnn", (64, 64, 3)
  c.detection.anchors, c.detection.max_objects = ((0.2, 0.3),), 1
  c.dataset.pp_eval = "flip_lr(1.0)|resize(64)"
  message = ("dataset.pp_eval='flip_lr(1.0)|resize(64)' mirrors the image (flip_lr): a "
             "detector's evaluation and `cnn-jax detect` need the unflipped image; remove "
             "flip_lr from dataset.pp_eval (keep it in pp_train)")
  with pytest.raises(ValueError) as e:
    detect_lib.Detector(types.SimpleNamespace(apply=None), {}, c, ["a"])
  assert str(e.value) == message
  with pytest.raises(ValueError) as e:
    detection_task.resolve(c, None, [])
  assert str(e.value) == message


def test_localization_loss_under_pmap_is_the_global_valid_mean():
  """Two replicas (vmap with the pmap axis name: the same collectives), one with two valid
  examples, one with one valid and one without: the replicas' average loss (what pmean of
  their gradients differentiates) equals the single-device mean over the 3 valid ones;
  dividing by each replica's own count gave (mean of 2 + mean of 1) / 2."""
  from cnn_jax import parallel
  rs = np.random.RandomState(3)
  logits = rs.normal(size=(4, 3)).astype(np.float32)
  boxes = rs.uniform(0, 1, (4, 4)).astype(np.float32)
  truth = rs.uniform(0, 1, (4, 1, 4)).astype(np.float32)
  batch = {"boxes": truth, "labels": np.array([[2], [0], [1], [0]], np.int32),
           "valid": np.array([[True], [True], [True], [False]])}
  single, single_metrics = jax.jit(localization_task.loss_fn(localization_config()))(
      (logits, boxes), batch)
  c = localization_config()
  c.parallel = "pmap"
  split = lambda x: x.reshape((2, 2) + x.shape[1:])  # noqa: E731
  replicas = jax.jit(lambda o, b: jax.vmap(localization_task.loss_fn(c), axis_name=parallel.PMAP_AXIS)(
      (split(o[0]), split(o[1])), {k: split(v) for k, v in b.items()}))
  per_replica = replicas((logits, boxes), batch)
  assert float(per_replica[0].mean()) == pytest.approx(float(single), rel=1e-6)
  assert float(per_replica[1]["box_loss"].mean()) == pytest.approx(  # pmean'd metrics too
      float(single_metrics["box_loss"]), rel=1e-6)
  zero = replicas((logits, boxes), {**batch, "valid": np.zeros((4, 1), bool)})[0]
  np.testing.assert_array_equal(zero, 0.0)
