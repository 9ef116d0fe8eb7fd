"""YOLO v2: dimension clusters, target encoding, box decoding, loss, and a tiny overfit."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax.detection import anchors as anchors_lib
from cnn_jax.detection import yolo_v2
from cnn_jax.detection.backbones import TinyBackbone
from cnn_jax.detection.boxes import box_iou

ANCHORS = ((0.1, 0.1), (0.5, 0.5))
# Jitted once per shape: op-by-op dispatch compiles every primitive separately, which
# costs seconds on a busy CPU.
encode = jax.jit(yolo_v2.encode_yolo_v2_targets, static_argnums=(3, 4))
loss_fn = jax.jit(yolo_v2.yolo_v2_loss, static_argnums=(4,))
decode_boxes = jax.jit(yolo_v2.decode_boxes, static_argnums=(1,))
decode = jax.jit(yolo_v2.decode_yolo_v2, static_argnums=(1,))


def _logit(p):
  p = jnp.asarray(p)
  return jnp.log(p / (1 - p))


# ----------------------------------------------------------------------------- anchors
def _three_clusters(rng, n=60):
  centres = np.array([[0.05, 0.08], [0.3, 0.15], [0.6, 0.7]])
  wh = np.concatenate([c * rng.uniform(0.9, 1.1, size=(n, 2)) for c in centres])
  return centres, rng.permutation(wh)


def test_kmeans_recovers_obvious_clusters_sorted_by_area():
  centres, wh = _three_clusters(np.random.default_rng(0))
  got = anchors_lib.kmeans_anchors(wh, 3, seed=1)
  assert got.shape == (3, 2)
  np.testing.assert_allclose(got, centres, rtol=0.05)
  area = got[:, 0] * got[:, 1]
  assert np.all(np.diff(area) > 0)
  assert anchors_lib.mean_iou(wh, got) > 0.8


def test_kmeans_deterministic_with_seed():
  _, wh = _three_clusters(np.random.default_rng(3))
  wh = np.concatenate([wh, np.random.default_rng(4).uniform(0.01, 1, size=(50, 2))])
  a = anchors_lib.kmeans_anchors(wh, 5, seed=7)
  b = anchors_lib.kmeans_anchors(wh, 5, seed=7)
  np.testing.assert_array_equal(a, b)


def test_mean_iou_of_boxes_equal_to_anchors_is_one():
  a = np.array([[0.1, 0.2], [0.4, 0.3], [0.7, 0.9]])
  assert anchors_lib.mean_iou(a, a) == pytest.approx(1.0)
  assert anchors_lib.mean_iou(a[[0, 0, 2]], a) == pytest.approx(1.0)


def test_iou_distance_by_hand():
  # (0.2, 0.4) and (0.4, 0.1) at one centre: inter 0.2*0.1 = 0.02, union 0.08+0.04-0.02.
  iou = anchors_lib.wh_iou(np.array([0.2, 0.4]), np.array([0.4, 0.1]))
  assert float(iou) == pytest.approx(0.02 / 0.10)
  assert 1 - float(iou) == pytest.approx(0.8)


def test_kmeans_errors():
  wh = np.array([[0.1, 0.1], [0.1, 0.1], [0.2, 0.3]])
  with pytest.raises(ValueError, match="distinct"):
    anchors_lib.kmeans_anchors(wh, 3)
  with pytest.raises(ValueError, match="positive"):
    anchors_lib.kmeans_anchors(np.array([[0.1, 0.0], [0.2, 0.3]]), 1)


# ----------------------------------------------------------------------------- encoding
def test_encode_hand_worked_example():
  boxes = jnp.array([[[0.3, 0.3, 0.7, 0.7], [0.0, 0.0, 0.0, 0.0]]])
  labels = jnp.array([[3, 9]], jnp.int32)
  valid = jnp.array([[True, False]])          # the second object is padding: ignored
  t = encode(boxes, labels, valid, ANCHORS, (4, 4))
  assert t["has_obj"].shape == (1, 4, 4, 2) and t["xy"].shape == (1, 4, 4, 2, 2)
  assert t["boxes"].shape == (1, 4, 4, 2, 4) and t["labels"].dtype == jnp.int32
  # Centre (0.5, 0.5) -> row 2, col 2, offsets 0; w = h = 0.4: shape IoU 0.0625 with
  # (0.1, 0.1), 0.64 with (0.5, 0.5) -> anchor 1.
  want_has = np.zeros((1, 4, 4, 2))
  want_has[0, 2, 2, 1] = 1
  np.testing.assert_array_equal(t["has_obj"], want_has)
  np.testing.assert_allclose(t["xy"][0, 2, 2, 1], [0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(t["twh"][0, 2, 2, 1], [np.log(0.8)] * 2, rtol=1e-5)
  np.testing.assert_allclose(t["boxes"][0, 2, 2, 1], [0.3, 0.3, 0.7, 0.7], atol=1e-6)
  assert int(t["labels"][0, 2, 2, 1]) == 3
  assert float(t["scale"][0, 2, 2, 1]) == pytest.approx(2 - 0.16, rel=1e-5)
  # Everything else is zero.
  empty = want_has[..., None] == 0
  for k in ("xy", "twh", "boxes"):
    assert np.all(np.where(empty, np.asarray(t[k]), 0) == 0), k
  assert np.all(np.where(want_has == 0, np.asarray(t["scale"]), 0) == 0)
  assert int(t["labels"].sum()) == 3


def _primitive_names(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name
    for v in eqn.params.values():
      for sub in v if isinstance(v, (tuple, list)) else (v,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _primitive_names(inner)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_encode_shared_cell_anchor_higher_index_wins(order):
  """Two objects on cell (row 2, col 2), anchor 1 (and a padded third): the later valid one
  owns every field, whichever slots the padding puts them in."""
  objs = np.array([[0.55, 0.3, 0.9, 0.7],      # centre (0.725, 0.5), w .35, h .4
                   [0.6, 0.35, 0.85, 0.65],    # centre (0.725, 0.5), w .25, h .3
                   [0.55, 0.3, 0.85, 0.7]])    # same cell/anchor but invalid
  labs = np.array([4, 7, 1])
  vals = np.array([True, True, False])
  boxes = jnp.asarray(objs[list(order)])[None]
  labels = jnp.asarray(labs[list(order)], jnp.int32)[None]
  valid = jnp.asarray(vals[list(order)])[None]
  t = encode(boxes, labels, valid, ANCHORS, (4, 4))
  assert float(t["has_obj"].sum()) == 1 and t["has_obj"][0, 2, 2, 1] == 1
  winner = int(np.flatnonzero(valid[0])[-1])   # the valid object in the highest slot
  np.testing.assert_allclose(t["boxes"][0, 2, 2, 1], boxes[0, winner], atol=1e-6)
  assert int(t["labels"][0, 2, 2, 1]) == int(labels[0, winner])
  jaxpr = jax.make_jaxpr(lambda *a: yolo_v2.encode_yolo_v2_targets(*a, ANCHORS, (4, 4)))(
      boxes, labels, valid)
  scatters = [p for p in _primitive_names(jaxpr.jaxpr) if p.startswith("scatter")]
  assert len(scatters) == 1, scatters


def _example():
  """Two images on a 3x4 (Sh x Sw) grid; the second image has no objects."""
  boxes = jnp.array([[[0.1, 0.2, 0.3, 0.5], [0.5, 0.4, 0.95, 0.9], [0, 0, 0, 0]],
                     [[0.2, 0.2, 0.4, 0.4], [0, 0, 0, 0], [0, 0, 0, 0]]])
  labels = jnp.array([[0, 2, 0], [1, 0, 0]], jnp.int32)
  valid = jnp.array([[True, True, False], [False, False, False]])
  t = encode(boxes, labels, valid, ANCHORS, (3, 4))
  return boxes, labels, valid, t


def _pred_from_targets(t, num_classes=3, obj=5.0):
  has = t["has_obj"]
  return {"xy": jax.nn.sigmoid(_logit(jnp.clip(t["xy"], 1e-6, 1 - 1e-6))),
          "twh": t["twh"], "objectness": jnp.where(has > 0, obj, -obj),
          "class_logits": 10.0 * jax.nn.one_hot(t["labels"], num_classes)}


def test_decode_round_trip():
  boxes, _, valid, t = _example()
  pred = _pred_from_targets(t)
  dec = decode_boxes(pred, ANCHORS)
  assert dec.shape == (2, 3, 4, 2, 4)
  has = np.asarray(t["has_obj"]) > 0
  assert has.sum() == 2
  np.testing.assert_allclose(np.asarray(dec)[has], np.asarray(t["boxes"])[has], atol=1e-5)
  np.testing.assert_allclose(np.sort(np.asarray(dec)[has], 0),
                             np.sort(np.asarray(boxes[0, :2]), 0), atol=1e-5)
  det = decode(pred, ANCHORS)
  assert det["boxes"].shape == (2, 24, 4) and det["classes"].dtype == jnp.int32
  top = np.argsort(-np.asarray(det["scores"][0]))[:2]
  got = np.asarray(det["boxes"][0])[top]
  for b in np.asarray(boxes[0, :2]):
    assert np.min(np.abs(got - b).max(-1)) < 1e-5
  assert sorted(np.asarray(det["classes"][0])[top].tolist()) == [0, 2]
  assert float(det["boxes"].min()) >= 0 and float(det["boxes"].max()) <= 1


TALL_WIDE = ((0.2, 0.6), (0.6, 0.2))  # (w, h): a tall anchor and a wide one


def test_non_square_anchors_encode_decode_by_hand():
  """Anchors are (w, h) pairs: with a tall and a wide anchor, an (h, w) swap anywhere (in
  encoding, decoding or both) changes a hand-worked number below. The other tests use
  square anchors, and decode with the anchors they encoded with, so a swap survived them.
  Grid 3 rows x 4 columns, so that a row / column swap shows too."""
  # tall: centre (0.3, 0.5), w 0.2, h 0.5; wide: centre (0.7, 0.2), w 0.5, h 0.15
  boxes = jnp.array([[[0.2, 0.25, 0.4, 0.75], [0.45, 0.125, 0.95, 0.275]]])
  t = encode(boxes, jnp.array([[1, 2]], jnp.int32), jnp.array([[True, True]]), TALL_WIDE,
             (3, 4))
  # Shape IoUs: tall box vs tall anchor 0.1 / 0.12 = 0.83, vs wide 0.04 / 0.18 = 0.22;
  # wide box vs wide anchor 0.075 / 0.12 = 0.625, vs tall 0.03 / 0.165 = 0.18.
  want_has = np.zeros((1, 3, 4, 2))
  want_has[0, 1, 1, 0] = 1   # tall: row floor(0.5 * 3) = 1, col floor(0.3 * 4) = 1, anchor 0
  want_has[0, 0, 2, 1] = 1   # wide: row floor(0.2 * 3) = 0, col floor(0.7 * 4) = 2, anchor 1
  np.testing.assert_array_equal(t["has_obj"], want_has)
  np.testing.assert_allclose(t["xy"][0, 1, 1, 0], [0.2, 0.5], atol=1e-6)
  np.testing.assert_allclose(t["twh"][0, 1, 1, 0], [np.log(0.2 / 0.2), np.log(0.5 / 0.6)],
                             atol=1e-6)
  np.testing.assert_allclose(t["xy"][0, 0, 2, 1], [0.8, 0.6], atol=1e-6)
  np.testing.assert_allclose(t["twh"][0, 0, 2, 1], [np.log(0.5 / 0.6), np.log(0.15 / 0.2)],
                             atol=1e-6)
  # encode -> decode gives the boxes back.
  pred = _pred_from_targets(t)
  dec = np.asarray(decode_boxes(pred, TALL_WIDE))
  np.testing.assert_allclose(dec[0, 1, 1, 0], boxes[0, 0], atol=1e-5)
  np.testing.assert_allclose(dec[0, 0, 2, 1], boxes[0, 1], atol=1e-5)
  det = decode(pred, TALL_WIDE)
  # Flattened (row, col, anchor): tall at 1 * 8 + 1 * 2 + 0 = 10, wide at 0 + 2 * 2 + 1 = 5.
  assert set(np.argsort(-np.asarray(det["scores"][0]))[:2].tolist()) == {5, 10}
  np.testing.assert_allclose(np.asarray(det["boxes"][0])[[10, 5]], boxes[0], atol=1e-5)
  # One cell by hand: row 1, col 2, the tall anchor, x 0.25, y 0.5, tw log 2, th log 0.5:
  # cx = (2 + 0.25) / 4 = 0.5625, cy = (1 + 0.5) / 3 = 0.5, w = 0.2 * 2 = 0.4,
  # h = 0.6 * 0.5 = 0.3 -> corners (0.3625, 0.35, 0.7625, 0.65).
  xy = np.zeros((1, 3, 4, 2, 2), np.float32)
  twh = np.zeros((1, 3, 4, 2, 2), np.float32)
  xy[0, 1, 2, 0] = [0.25, 0.5]
  twh[0, 1, 2, 0] = [np.log(2.0), np.log(0.5)]
  one = {"xy": jnp.asarray(xy), "twh": jnp.asarray(twh),
         "objectness": jnp.zeros((1, 3, 4, 2)), "class_logits": jnp.zeros((1, 3, 4, 2, 3))}
  np.testing.assert_allclose(decode_boxes(one, TALL_WIDE)[0, 1, 2, 0],
                             [0.3625, 0.35, 0.7625, 0.65], atol=1e-6)
  # ... and the wide anchor of that cell, all zero: the cell's corner (0.5, 1/3), 0.6 x 0.2.
  np.testing.assert_allclose(decode_boxes(one, TALL_WIDE)[0, 1, 2, 1],
                             [0.2, 1 / 3 - 0.1, 0.8, 1 / 3 + 0.1], atol=1e-6)


# ----------------------------------------------------------------------------- loss
def test_loss_zero_coord_when_pred_equals_targets_and_empty_image_finite():
  boxes, _, valid, t = _example()
  pred = _pred_from_targets(t)
  loss, m = loss_fn(pred, t, boxes, valid, ANCHORS)
  assert set(m) == {"loss", "coord_loss", "obj_loss", "noobj_loss", "cls_loss", "mean_iou"}
  assert float(m["coord_loss"]) < 1e-9
  assert float(m["mean_iou"]) == pytest.approx(1.0, abs=1e-5)
  assert np.isfinite(float(loss))
  assert float(loss) == pytest.approx(sum(float(m[k]) for k in m if k.endswith("_loss")))
  # A batch of empty images only.
  none = jnp.zeros_like(valid)
  t0 = encode(boxes, jnp.zeros((2, 3), jnp.int32), none, ANCHORS, (3, 4))
  loss0, m0 = loss_fn(pred, t0, boxes, none, ANCHORS)
  assert all(np.isfinite(float(v)) for v in m0.values())
  assert float(m0["coord_loss"]) == 0 and float(m0["mean_iou"]) == 0


def test_loss_gradients_finite_for_extreme_predictions():
  boxes, _, valid, t = _example()
  k = jax.random.split(jax.random.key(0), 4)
  raw = {"xy": 30 * jax.random.normal(k[0], t["xy"].shape),
         "twh": 200 * jax.random.normal(k[1], t["twh"].shape),
         "objectness": 100 * jax.random.normal(k[2], t["has_obj"].shape),
         "class_logits": 100 * jax.random.normal(k[3], t["has_obj"].shape + (3,))}

  def f(raw):
    pred = dict(raw, xy=jax.nn.sigmoid(raw["xy"]))
    return loss_fn(pred, t, boxes, valid, ANCHORS)[0]

  loss, grads = jax.jit(jax.value_and_grad(f))(raw)
  assert np.isfinite(float(loss))
  for g in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(np.asarray(g)))


def test_noobj_ignore_rule_by_hand():
  """1x1 grid, anchors (0.5, 0.5) and (0.3, 0.3); gt (0.25, 0.25, 0.75, 0.75) is anchor 0's.

  Anchor 1 predicts a centred 0.45 box, IoU 0.81 with the gt: ignored, no no-object
  loss. Shrunk back to its 0.3 prior (IoU 0.36) it pays softplus(logit). A padded gt
  equal to its box must not make it ignored.
  """
  anchors = ((0.5, 0.5), (0.3, 0.3))
  gt = jnp.array([[[0.25, 0.25, 0.75, 0.75], [0.35, 0.35, 0.65, 0.65]]])
  valid = jnp.array([[True, False]])
  t = encode(gt, jnp.zeros((1, 2), jnp.int32), valid, anchors,
                                     (1, 1))
  np.testing.assert_array_equal(t["has_obj"][0, 0, 0], [1, 0])

  def noobj(tw1, obj1=3.0):
    pred = {"xy": jnp.full((1, 1, 1, 2, 2), 0.5),
            "twh": jnp.array([0.0, 0.0, tw1, tw1]).reshape(1, 1, 1, 2, 2),
            "objectness": jnp.array([0.0, obj1]).reshape(1, 1, 1, 2),
            "class_logits": jnp.zeros((1, 1, 1, 2, 1))}
    return float(loss_fn(pred, t, gt, valid, anchors)[1]["noobj_loss"])

  assert noobj(np.log(0.45 / 0.3)) == 0.0
  assert noobj(0.0) == pytest.approx(np.log1p(np.exp(3.0)), rel=1e-5)
  # Same box, the ignore threshold raised above its IoU: counted again.
  pred = {"xy": jnp.full((1, 1, 1, 2, 2), 0.5),
          "twh": jnp.array([0.0, 0.0, np.log(1.5), np.log(1.5)]).reshape(1, 1, 1, 2, 2),
          "objectness": jnp.array([0.0, 3.0]).reshape(1, 1, 1, 2),
          "class_logits": jnp.zeros((1, 1, 1, 2, 1))}
  m = loss_fn(pred, t, gt, valid, anchors, ignore_iou=0.9)[1]
  assert float(m["noobj_loss"]) == pytest.approx(np.log1p(np.exp(3.0)), rel=1e-5)


# ----------------------------------------------------------------------------- overfit
def _synthetic(n=8, size=64, seed=0):
  """n images with 1-2 filled rectangles; class 0 red, class 1 green."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0, 0.1, (n, size, size, 3)).astype(np.float32)
  boxes = np.zeros((n, 2, 4), np.float32)
  labels = np.zeros((n, 2), np.int32)
  valid = np.zeros((n, 2), bool)
  for i in range(n):
    for j in range(1 + i % 2):
      w, h = rng.integers(12, 30, size=2)
      x0 = rng.integers(0, size - w) if j == 0 else size - w - rng.integers(0, 4)
      y0 = rng.integers(0, size - h)
      c = int(rng.integers(2))
      x[i, y0:y0 + h, x0:x0 + w] = 0.1
      x[i, y0:y0 + h, x0:x0 + w, c] = 1.0
      boxes[i, j] = np.array([x0, y0, x0 + w, y0 + h]) / size
      labels[i, j], valid[i, j] = c, True
  return x, boxes, labels, valid


@pytest.mark.slow  # 8 s; detection learning through the loop: tests/test_detection_task.py
def test_overfit_tiny_backbone():
  x, boxes, labels, valid = _synthetic()
  wh = (boxes[..., 2:] - boxes[..., :2])[valid]
  anchors = tuple(map(tuple, anchors_lib.kmeans_anchors(wh, 3).tolist()))
  model = yolo_v2.YOLOv2Head(TinyBackbone((16, 32, 64)), anchors=anchors, num_classes=2,
                             hidden=32)
  variables = jax.jit(model.init)(jax.random.key(0), x[:1])
  params, stats = variables["params"], variables["batch_stats"]
  x, boxes, labels, valid = map(jnp.asarray, (x, boxes, labels, valid))
  t = encode(boxes, labels, valid, anchors, (8, 8))
  steps = 150
  # Decayed to 0 so the run ends calm: at a constant 3e-3 Adam on one small batch with
  # batch norm has spikes now and then, and the last step could land on one.
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt):
    def f(p):
      pred, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                              mutable=["batch_stats"])
      loss, m = loss_fn(pred, t, boxes, valid, anchors)
      return loss, (m, upd["batch_stats"])

    (loss, (m, stats)), g = jax.value_and_grad(f, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), stats, opt, m

  first = None
  for _ in range(steps):
    params, stats, opt, m = step(params, stats, opt)
    first = first if first is not None else float(m["loss"])
  last = float(m["loss"])
  assert last < first / 10, (first, last)
  infer = jax.jit(lambda v, x: yolo_v2.decode_yolo_v2(model.apply(v, x), anchors))
  det = infer({"params": params, "batch_stats": stats}, x)
  top = jnp.argmax(det["scores"], axis=1)
  best = det["boxes"][jnp.arange(8), top]                              # (8, 4)
  iou = jnp.where(valid, box_iou(best[:, None], boxes, box_format="xyxy"), 0).max(1)
  assert float(iou.min()) > 0.5, np.asarray(iou)
