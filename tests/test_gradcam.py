"""Grad-CAM against CAM: on a global-average-pooling network they are the same map.

Selvaraju et al. 2017, sec. 3.1: with A the last feature maps, logits y = W^T mean(A) + b,
Grad-CAM's weights are alpha_k = W_kc / (H W), so Grad-CAM = relu(sum_k W_kc A_k) / (H W):
CAM (Zhou et al. 2016) up to a positive scale. That holds only when A is the map the
pooling reads (the last block's output after the skip and the ReLU), so these tests tell
whether Grad-CAM is taken on the right tensor (before the fix: a conv's pre-activation
output, correlation 0.55 on resnet20, 0.85 on tiny_cnn).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.viz import gradcam


def gap_net(name, kwargs, shape, seed=0):
  """(model, variables, x, final feature maps of x and of its mirror image): the maps from
  the same weights without the head (include_top=False), not through grad_cam's code."""
  model = models.get_model(name, num_classes=5, **kwargs)
  x = jax.random.normal(jax.random.key(seed + 1), (1, *shape))
  variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(seed))
  trunk = models.get_model(name, num_classes=5, include_top=False, **kwargs)
  trunk_vars = {**variables, "params": {k: v for k, v in variables["params"].items()
                                        if k != "head"}}
  feats = np.asarray(jax.jit(lambda v, a: trunk.apply(v, a, train=False))(
      trunk_vars, jnp.concatenate([x, x[:, :, ::-1]])))
  return model, variables, x, feats


def cam(feats, variables, c):
  """CAM: the class-weighted sum of the final feature maps (Zhou et al. 2016)."""
  return np.einsum("hwk,k->hw", feats, np.asarray(variables["params"]["head"]["kernel"])[:, c])


@pytest.mark.parametrize("name,kwargs,shape,layer", [
    ("resnet20", {"depth": 8}, (32, 32, 3), "layer3_0"),   # CIFAR ResNet: option-A skips
    ("tiny_cnn", {}, (32, 32, 3), "pool3"),                 # conv-BN-relu-pool stages
])
def test_gradcam_equals_cam_on_a_gap_network(name, kwargs, shape, layer):
  model, variables, x, feats = gap_net(name, kwargs, shape)
  r = gradcam.grad_cam(model, variables, x)
  assert r["layer"] == layer and r["class"] == int(np.argmax(r["logits"]))
  want = np.maximum(cam(feats[0], variables, r["class"]), 0)
  got = r["cam_small"]
  assert got.shape == want.shape and (want > 0).sum() >= 4
  corr = np.corrcoef(got.ravel(), want.ravel())[0, 1]
  assert corr > 0.999, f"Grad-CAM on {r['layer']} vs CAM: correlation {corr:.3f}"
  np.testing.assert_allclose(got, want / want.max(), atol=1e-4)


def test_gradcam_with_eval_flip_explains_the_mirror_averaged_logit():
  """eval_flip scores mean(logits(x), logits(mirror x)): Grad-CAM of that logit is the CAM
  of x plus the CAM of the mirror image mirrored back, for the averaged pass's class."""
  model, variables, x, feats = gap_net("tiny_cnn", {}, (32, 32, 3), seed=3)
  r = gradcam.grad_cam(model, variables, x, flip=True)
  logits = model.apply(variables, jnp.concatenate([x, x[:, :, ::-1]]), train=False)
  np.testing.assert_allclose(r["logits"], np.asarray(logits).mean(0), rtol=1e-5, atol=1e-6)
  c = r["class"]
  assert c == int(np.argmax(np.asarray(logits).mean(0)))
  want = np.maximum(cam(feats[0], variables, c) + cam(feats[1], variables, c)[:, ::-1], 0)
  np.testing.assert_allclose(r["cam_small"], want / want.max(), atol=1e-4)
  plain = gradcam.grad_cam(model, variables, x, class_index=c)
  assert not np.allclose(plain["cam_small"], r["cam_small"], atol=1e-2)  # a different map


@pytest.mark.parametrize("name,want", [
    ("resnet18", "layer4_1"),            # the last block, after the skip and the ReLU
    ("small_convnet", "flatten:input"),  # relu(conv3), what the classifier reads
    ("airbench", "group3"),
    ("darknet19", "head:input"),         # not the 1x1 conv head's class maps
    ("mnist_cnn", "pool2"),
])
def test_default_layer_is_the_last_rectified_map(name, want):
  model = models.get_model(name)
  x = jnp.zeros((1, 64, 64, 3) if name in ("resnet18", "darknet19") else
                (1, *models.input_shape(name)))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  maps = gradcam.feature_maps(model, variables, x)
  assert gradcam.pick_map(maps, None).name == want
  with pytest.raises(ValueError, match=r"unknown layer 'nope'; layers: .*" + want):
    gradcam.pick_map(maps, "nope")
