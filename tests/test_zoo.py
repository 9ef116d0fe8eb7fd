"""Model zoo: exact parameter counts against the published numbers, stage shapes, heads.

Everything here runs on shapes only (jax.eval_shape via cnn_jax.summary), so the
138M-parameter VGGs cost nothing; only the small head tests compute.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import detection, layers, models, summary

# Trainable parameters at 1000 classes (10 for the CIFAR ResNets), as torchvision /
# Keras / the papers count them (parameters only, not batch-norm statistics).
PUBLISHED = {
    "alexnet": 61_100_840,            # torchvision
    "alexnet_original": 62_378_344,   # Krizhevsky 2012, one tower (no conv groups)
    "zfnet": 62_357_608,              # layer table in zfnet.py
    "vgg11": 132_863_336,             # torchvision
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "googlenet": 6_624_904,           # torchvision, aux_logits=False
    "resnet18": 11_689_512,           # torchvision
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnet20": 269_722,              # He et al. 2015 "0.27M" (exact: option A, 10 classes)
    "resnet32": 464_154,              # "0.46M"
    "resnet44": 658_586,              # "0.66M"
    "resnet56": 853_018,              # "0.85M"
    "resnet110": 1_727_962,           # "1.7M"
    "darknet19": 20_842_376,          # darknet's darknet19.cfg (BN convs without bias)
}
PAPER_ROUNDED = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet44": 0.66e6,
                 "resnet56": 0.85e6, "resnet110": 1.7e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count(name):
  s = summary.summarize_by_name(name)
  assert s.trainable_params == PUBLISHED[name]
  assert s.output_shape == ((10,) if name in PAPER_ROUNDED else (1000,))
  if name in PAPER_ROUNDED:
    assert round(s.trainable_params, -4 if s.trainable_params < 1e6 else -5) == PAPER_ROUNDED[name]


def test_extra_counts():
  # Keras counts BN moving statistics too: keras.applications.ResNet50().count_params().
  s = summary.summarize_by_name("resnet50_keras")
  assert s.total_params == 25_636_712
  assert s.non_trainable_params == 53_120
  # torchvision googlenet(aux_logits=True).
  assert summary.summarize_by_name("googlenet", aux_logits=True).trainable_params == 13_004_888
  # Per-layer counts of the 2012 paper's AlexNet (conv2 without groups: 5x5x96x256+256).
  rows = {r.path: r for r in summary.summarize_by_name("alexnet_original").rows}
  assert {k: rows[k].params for k in ("conv1", "conv2", "conv3", "conv4", "conv5")} == {
      "conv1": 34_944, "conv2": 614_656, "conv3": 885_120, "conv4": 1_327_488,
      "conv5": 884_992}


@pytest.mark.parametrize("name,num_classes", [("resnet18", 10), ("vgg11_bn", 7),
                                              ("googlenet", 5), ("darknet19", 20),
                                              ("resnet20", 100), ("alexnet", 3)])
def test_num_classes_configurable(name, num_classes):
  s = summary.summarize_by_name(name, num_classes=num_classes)
  assert s.output_shape == (num_classes,)


def shapes(name, input_shape=None, depth=1, **kw):
  return {r.path: r.output_shape
          for r in summary.summarize_by_name(name, input_shape, depth, **kw).rows}


def test_alexnet_stage_shapes():
  s = shapes("alexnet_original")
  assert s["conv1"] == (55, 55, 96)
  assert s["pool1"] == (27, 27, 96)
  assert s["conv2"] == s["norm2"] == (27, 27, 256)
  assert s["pool2"] == (13, 13, 256)
  assert s["conv3"] == s["conv4"] == (13, 13, 384)
  assert s["pool5"] == (6, 6, 256)
  s = shapes("alexnet")
  assert (s["conv1"], s["pool2"], s["pool5"], s["avgpool"]) == (
      (55, 55, 64), (13, 13, 192), (6, 6, 256), (6, 6, 256))
  assert s["flatten"] == (9216,)
  # The adaptive pool makes torchvision's AlexNet input-size agnostic.
  assert shapes("alexnet", (163, 163, 3))["avgpool"] == (6, 6, 256)


def test_zfnet_stage_shapes():
  s = shapes("zfnet")
  assert s["conv1"] == (110, 110, 96)
  assert s["pool1"] == (55, 55, 96)
  assert s["conv2"] == (26, 26, 256)
  assert s["pool2"] == (13, 13, 256)
  assert s["conv5"] == (13, 13, 256)
  assert s["pool5"] == (6, 6, 256)


def test_vgg_stage_shapes():
  s = shapes("vgg16")
  assert [s[f"block{b}_pool"] for b in range(1, 6)] == [
      (112, 112, 64), (56, 56, 128), (28, 28, 256), (14, 14, 512), (7, 7, 512)]
  assert s["flatten"] == (25088,)
  assert shapes("vgg19_bn")["block3_bn4"] == (56, 56, 256)
  # Keras layout (no adaptive pool) at 64x64: fc1 sees 2x2x512.
  assert shapes("vgg16", (64, 64, 3), avgpool_size=None)["flatten"] == (2048,)


def test_googlenet_stage_shapes():
  s = shapes("googlenet")
  assert s["conv1"] == (112, 112, 64)
  assert s["conv3"] == (56, 56, 192)  # ceil-mode pool: 112 -> 56, not 55
  assert s["inception3a"] == (28, 28, 256)
  assert s["inception3b"] == (28, 28, 480)
  assert s["inception4a"] == (14, 14, 512)
  assert s["inception4e"] == (14, 14, 832)
  assert s["inception5b"] == (7, 7, 1024)


def test_resnet_stage_shapes():
  s = shapes("resnet18")
  assert s["maxpool"] == (56, 56, 64)
  assert [s[f"layer{i}_1"] for i in range(1, 5)] == [
      (56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)]
  s = shapes("resnet50")
  assert [s[k] for k in ("layer1_2", "layer2_3", "layer3_5", "layer4_2")] == [
      (56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)]
  s = shapes("resnet20")
  assert [s[f"layer{i}_2"] for i in range(1, 4)] == [(32, 32, 16), (16, 16, 32), (8, 8, 64)]


def test_resnet_keras_variant_strides_first_1x1():
  rows = {r.path: r.output_shape for r in summary.summarize_by_name("resnet50_keras", depth=2).rows}
  assert rows["layer2_0/conv1"] == (28, 28, 128)  # v1: the 1x1 conv strides
  rows = {r.path: r.output_shape for r in summary.summarize_by_name("resnet50", depth=2).rows}
  assert rows["layer2_0/conv1"] == (56, 56, 128)  # v1.5: the 3x3 conv strides
  assert rows["layer2_0/conv2"] == (28, 28, 128)


@pytest.mark.parametrize("size,last", [(256, 8), (224, 7)])
def test_darknet19_stage_shapes(size, last):
  s = shapes("darknet19", (size, size, 3))
  assert s["conv1_1"] == (size, size, 32)
  assert s["conv2_1"] == (size // 2, size // 2, 64)
  assert s["conv3_3"] == (size // 4, size // 4, 128)
  assert s["conv4_2"] == (size // 8, size // 8, 128)
  assert s["conv5_5"] == (size // 16, size // 16, 512)
  assert s["conv6_5"] == (last, last, 1024)
  assert s["head"] == (last, last, 1000)


def test_summary_table_renders():
  table = summary.summarize_by_name("resnet20").table()
  assert "layer3_2" in table and "Total params: 271,098" in table


def test_googlenet_aux_outputs_in_training_only():
  model = models.get_model("googlenet", num_classes=7, aux_logits=True)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  assert set(variables["params"]) >= {"aux1", "aux2", "head"}
  out, _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)},
                               mutable=["batch_stats"]), variables, x)
  assert [o.shape for o in out] == [(2, 7)] * 3
  assert jax.eval_shape(lambda v, x: model.apply(v, x), variables, x).shape == (2, 7)


def test_cli_summary(capsys):
  cli = pytest.importorskip("cnn_jax.cli")
  assert cli.main(["summary", "alexnet_original"]) == 0
  out = capsys.readouterr().out
  assert "Total params: 62,378,344" in out and "55x55x96" in out


def test_include_top_false_returns_feature_maps():
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  for name, want in [("resnet50", (2, 7, 7, 2048)), ("vgg16", (2, 7, 7, 512)),
                     ("googlenet", (2, 7, 7, 1024)), ("alexnet", (2, 6, 6, 256)),
                     ("darknet19", (2, 7, 7, 1024))]:
    model = models.get_model(name, include_top=False)
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], x)
    assert out.shape == want, name


# ------------------------------------------------------------------------ helpers
@pytest.mark.parametrize("size,out", [(7, 7), (14, 7), (4, 6), (6, 4), (2, 7), (13, 6)])
def test_adaptive_avg_pool_matches_torch(size, out):
  torch = pytest.importorskip("torch")
  x = np.random.RandomState(0).normal(size=(2, size, size + 1, 3)).astype(np.float32)
  ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), out)
  ours = layers.adaptive_avg_pool(jnp.asarray(x), out)
  np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


@pytest.mark.parametrize("size,k,s,p", [(112, 3, 2, 0), (56, 3, 2, 0), (14, 2, 2, 0),
                                        (25, 3, 2, 0), (12, 3, 1, 1), (7, 3, 2, 1), (8, 2, 2, 1)])
def test_ceil_mode_padding_matches_torch(size, k, s, p):
  torch = pytest.importorskip("torch")
  x = np.random.RandomState(0).normal(size=(1, size, size, 2)).astype(np.float32)
  ref = torch.nn.functional.max_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), k, s, p,
                                       ceil_mode=True).permute(0, 2, 3, 1).numpy()
  pads = [layers.ceil_mode_padding(size, k, s, p)] * 2
  ours = jax.lax.reduce_window(jnp.asarray(x), -jnp.inf, jax.lax.max, (1, k, k, 1),
                               (1, s, s, 1), [(0, 0)] + pads + [(0, 0)])
  np.testing.assert_array_equal(ours, ref)


# ---------------------------------------------------------------------- detection
def test_localizer_shapes_on_zoo_backbone():
  model = detection.Localizer(models.get_model("darknet19", include_top=False), num_classes=3)
  x = jax.ShapeDtypeStruct((4, 64, 64, 3), jnp.float32)
  (logits, boxes), variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x), x)
  assert logits.shape == (4, 3) and boxes.shape == (4, 4)
  assert set(variables["params"]) == {"backbone", "head", "box_head"}


def test_localizer_boxes_in_unit_interval():
  model = detection.Localizer(detection.TinyBackbone((8, 16)), num_classes=3,
                              box_format="xyxy", hidden=16)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  (logits, boxes), _ = model.init_with_output(jax.random.key(1), x)
  assert logits.shape == (2, 3) and boxes.shape == (2, 4)
  assert bool(jnp.all((boxes > 0) & (boxes < 1)))


def test_yolo_head_shapes():
  model = detection.YOLOHead(models.get_model("darknet19", include_top=False), grid_size=7,
                             num_boxes=2, num_classes=20)
  x = jax.ShapeDtypeStruct((2, 448, 448, 3), jnp.float32)  # darknet map 14x14 -> 7x7 grid
  out, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)
  assert out["boxes"].shape == (2, 7, 7, 2, 4)
  assert out["objectness"].shape == (2, 7, 7, 2)
  assert out["class_logits"].shape == (2, 7, 7, 20)


def test_yolo_targets_loss_and_decode():
  S, B, C = 4, 2, 3
  gt = jnp.array([[[0.3, 0.6, 0.2, 0.4], [0.9, 0.1, 0.1, 0.1]],
                  [[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]])
  labels = jnp.array([[1, 2], [0, 0]])
  valid = jnp.array([[True, True], [True, False]])
  t = detection.encode_yolo_targets(gt, labels, valid, S)
  assert t["has_obj"].sum() == 3
  assert t["has_obj"][0, 2, 1] == 1 and t["labels"][0, 2, 1] == 1  # centre (0.3, 0.6)
  np.testing.assert_allclose(t["boxes"][0, 2, 1], [0.2, 0.4, 0.2, 0.4], atol=1e-6)
  # A prediction equal to the targets decodes back to the ground-truth boxes...
  pred = {"boxes": jnp.repeat(t["boxes"][..., None, :], B, axis=3),
          # Only the first predictor (the responsible one on IoU ties) claims the object.
          "objectness": jnp.where((t["has_obj"][..., None] > 0) & (jnp.arange(B) == 0),
                                  20.0, -20.0),
          "class_logits": 20.0 * jax.nn.one_hot(t["labels"], C)}
  det = detection.decode_yolo(pred)
  assert det["boxes"].shape == (2, S * S * B, 4)
  top = jnp.argsort(-det["scores"][0])[:2]
  found = np.asarray(det["boxes"][0][top])
  for box in np.asarray(gt[0]):
    assert np.min(np.abs(found - box).max(-1)) < 1e-5
  # ... and has a much smaller loss than a random one.
  model = detection.YOLOHead(detection.TinyBackbone((8,)), grid_size=S, num_boxes=B,
                             num_classes=C, hidden=8)
  rnd, _ = model.init_with_output(jax.random.key(0), jnp.ones((2, 16, 16, 3)))
  assert rnd["boxes"].shape == (2, S, S, B, 4)
  good, bad = detection.yolo_loss(pred, t), detection.yolo_loss(rnd, t)
  assert np.isfinite(bad) and good < 0.05 * bad


def test_box_iou():
  a = jnp.array([0.5, 0.5, 0.5, 0.5])
  assert float(detection.box_iou(a, a)) == pytest.approx(1.0)
  b = jnp.array([0.75, 0.5, 0.5, 0.5])  # half overlapping
  assert float(detection.box_iou(a, b)) == pytest.approx(1 / 3)
  np.testing.assert_allclose(detection.xyxy_to_cxcywh(detection.cxcywh_to_xyxy(b)), b,
                             atol=1e-7)


def _primitive_names(jaxpr):
  """Every primitive in a jaxpr, including those inside pjit / custom_jvp sub-jaxprs."""
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name
    for v in eqn.params.values():
      for sub in v if isinstance(v, (tuple, list)) else (v,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _primitive_names(inner)


def test_yolo_targets_shared_cell_take_one_object():
  """Two valid objects centred in cell (1, 1): the later one owns box, label and flag.

  One scatter decides the owner and everything else is gathered from it, so the three
  targets cannot come from different objects on a backend (GPU / TPU) where the order of
  duplicate scatter indices is undefined; the jaxpr check makes that visible on CPU.
  """
  S = 2
  gt = jnp.array([[[0.6, 0.7, 0.2, 0.3],     # object 0, cell (row 1, col 1)
                   [0.9, 0.8, 0.4, 0.1],     # object 1, same cell: wins
                   [0.7, 0.6, 0.5, 0.5],     # object 2, same cell but not valid
                   [0.1, 0.2, 0.1, 0.1]]])   # object 3, cell (0, 0)
  labels = jnp.array([[3, 5, 7, 2]])
  valid = jnp.array([[True, True, False, True]])
  t = detection.encode_yolo_targets(gt, labels, valid, S)
  np.testing.assert_array_equal(t["has_obj"][0], [[1, 0], [0, 1]])
  assert int(t["labels"][0, 1, 1]) == 5 and int(t["labels"][0, 0, 0]) == 2
  np.testing.assert_allclose(t["boxes"][0, 1, 1], [0.8, 0.6, 0.4, 0.1], atol=1e-6)
  np.testing.assert_allclose(t["boxes"][0, 0, 0], [0.2, 0.4, 0.1, 0.1], atol=1e-6)
  np.testing.assert_array_equal(t["boxes"][0, 0, 1], 0)
  assert int(t["labels"][0, 0, 1]) == 0
  jaxpr = jax.make_jaxpr(lambda *a: detection.encode_yolo_targets(*a, S))(gt, labels, valid)
  scatters = [p for p in _primitive_names(jaxpr.jaxpr) if p.startswith("scatter")]
  assert len(scatters) == 1, scatters


def _yolo_case(box_logits, obj_logits, class_logits):
  """One image, a 1x1 grid, 2 predictors, 2 classes, one object (class 1)."""
  t = detection.encode_yolo_targets(jnp.array([[[0.5, 0.5, 0.25, 0.36]]]),
                                    jnp.array([[1]]), jnp.array([[True]]), 1)

  def loss(box_logits, obj_logits, class_logits):
    pred = {"boxes": jax.nn.sigmoid(box_logits), "objectness": obj_logits,
            "class_logits": class_logits}
    return detection.yolo_loss(pred, t)

  return loss, (jnp.asarray(box_logits, jnp.float32).reshape(1, 1, 1, 2, 4),
                jnp.asarray(obj_logits, jnp.float32).reshape(1, 1, 1, 2),
                jnp.asarray(class_logits, jnp.float32).reshape(1, 1, 1, 2))


def test_yolo_loss_value_by_hand():
  logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
  # Predictor 0: (0.5, 0.5, 0.16, 0.49), IoU 0.52 with the target, so responsible;
  # predictor 1: a tiny box far away. Objectness 0 -> confidence 0.5 for both.
  loss, args = _yolo_case([[0, 0, logit(0.16), logit(0.49)],
                           [logit(0.1), logit(0.1), logit(0.01), logit(0.01)]],
                          [0.0, 0.0], [0.0, 0.0])
  coord = (0.4 - 0.5) ** 2 + (0.7 - 0.6) ** 2          # sqrt w, h against sqrt 0.25, 0.36
  want = 5.0 * coord + (0.5 - 1) ** 2 + 0.5 * 0.5 ** 2 + np.log(2)
  assert float(loss(*args)) == pytest.approx(want, rel=1e-5)


def test_yolo_loss_gradient_finite_for_saturated_logits():
  """sigmoid(-200) == 0 in float32, where d sqrt(w)/dw is infinite: the loss clamps it."""
  loss, args = _yolo_case([[100, -100, -200, -200], [-200, 100, -100, -200]],
                          [100.0, -200.0], [200.0, -200.0])
  assert np.isfinite(float(loss(*args)))
  grads = jax.grad(loss, argnums=(0, 1, 2))(*args)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g))), g
