"""Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class lies.

With A the chosen feature maps (H' x W' x K) and y_c the class's logit,
  alpha_k = mean over positions of dy_c / dA_k,   cam = relu(sum_k alpha_k A_k),
scaled to [0, 1] by its maximum and resized (bilinear) to the model's input, as
Grad-CAM is usually drawn. The resize spreads the grid over the whole input, so in a
network with VALID convolutions (whose last grid covers the input minus a border) the
map may sit up to about half that border off; SAME-padded networks line up.

Which A. The paper (sec. 3.1) takes the last convolutional layer's *rectified* feature
maps, the ones the classifier reads: then, on a global-average-pooling network, Grad-CAM
equals CAM (Zhou et al. 2016) up to a positive scale (tests/test_gradcam.py checks it).
pytorch-grad-cam's ResNet target is likewise `layer4[-1]`, the last block's output after
its skip connection and ReLU. A candidate map here is either a module's output (a
block, a pool, a conv: "layer4_1", "pool3", "conv2") or, where an activation *function*
sits between two modules, the input a module is given ("flatten:input" in a network
that does conv -> relu -> flatten). The default is the last map the forward pass makes
before the head: a ResNet's last block, tiny_cnn's last pool, airbench's last conv group,
small_convnet's relu(conv3). A leaf conv's own output is its pre-activation (for a
ResNet's inner conv, the residual branch before batch norm and without the skip): it can
still be chosen with `layer`, but it is not what the classifier reads.

How dy_c / dA is taken without changing the model: `flax.linen.intercept_methods` wraps
the module call that makes (or is given) A so that A + delta goes on instead, with delta
a zero array we differentiate with respect to: d y_c / d delta at delta = 0 is dy_c / dA,
and the same call hands A back as an auxiliary output. (flax's `Module.perturb` does the
same, but only in models that call it.)

Flip test-time augmentation (`eval_flip`, what evaluation and `predict` score): the
logit is the mean of the image's and its mirror image's. Grad-CAM of that mean is the
image's map plus the mirror's map mirrored back (each with its own alpha, both halved),
taken before the ReLU, and the class and probability shown are the averaged pass's: on a
GAP network this is again CAM of the logit that was reported (up to the mirror's grid
alignment), not the explanation of a different pass.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.trained_run import TrainedRun
from cnn_jax import layers, viz

INPUT = ":input"  # "flatten:input": the map a module is given (after an activation function)


@dataclasses.dataclass(frozen=True)
class FeatureMap:
  name: str                  # a module's path ("layer4_1"), or path + ":input"
  shape: tuple[int, ...]
  dtype: Any


def feature_maps(model: Any, variables: Any, x: jax.Array) -> list[FeatureMap]:
  """The 4-D maps of the forward pass from the first convolution on, in the order they
  are made: every module's output (but the head's), and a module's input where no module
  made it (an activation function's result). Found under `jax.eval_shape` (nothing is
  computed); empty for a model without convolutions."""
  found: dict[str, FeatureMap] = {}
  made: list[Any] = []  # module outputs, kept alive: identity tells them from other inputs
  convs: list[str] = []

  def interceptor(next_fun, args, kwargs, context):
    path = context.module.path
    if context.method_name != "__call__" or not path:
      return next_fun(*args, **kwargs)
    name = "/".join(path)
    given = args[0] if args else None
    if convs and getattr(given, "ndim", 0) == 4 and not any(given is m for m in made):
      found.setdefault(name + INPUT, FeatureMap(name + INPUT, tuple(given.shape), given.dtype))
    if isinstance(context.module, (layers.Conv2D, nn.Conv)):
      convs.append(name)
    out = next_fun(*args, **kwargs)
    if getattr(out, "ndim", 0) == 4:
      made.append(out)
      if path != ("head",):  # darknet's 1x1 conv head makes class maps, not features
        found.setdefault(name, FeatureMap(name, tuple(out.shape), out.dtype))
    return out

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, a: model.apply(v, a, train=False), variables, x)
  return list(found.values()) if convs else []


def pick_map(maps: list[FeatureMap], layer: Optional[str]) -> FeatureMap:
  """`layer` ("/" or "." separated) checked against `maps`, or the last map."""
  if not maps:
    raise ValueError("the model has no convolution layers (Conv2D / nn.Conv modules)")
  if layer is None:
    return maps[-1]
  name = layer.replace(".", "/")
  for m in maps:
    if m.name == name:
      return m
  raise ValueError(f"unknown layer {layer!r}; layers: {', '.join(m.name for m in maps)}")


def grad_cam(model: Any, variables: Any, x: Any, class_index: Optional[int] = None,
             layer: Optional[str] = None, flip: bool = False) -> dict:
  """Grad-CAM of the first image of `x` (model input, float NHWC).

  class_index None: the predicted class. layer: a map of `feature_maps` (default the last:
  the rectified output of the last block). flip: as `eval_flip` scores, the logits are the
  mean over the image and its mirror image, and the map sums both passes' (module
  docstring). Returns {"cam": (H, W) in [0, 1] at the input's size, "cam_small": at the
  map's size, "class": c, "prob": softmax probability of c, "layer": name, "logits",
  "flip"}.
  """
  x = jnp.asarray(x[:1])
  fmap = pick_map(feature_maps(model, variables, x), layer)
  xs = jnp.concatenate([x, x[:, :, ::-1]]) if flip else x
  given = fmap.name.endswith(INPUT)
  target = fmap.name[:-len(INPUT)] if given else fmap.name
  shape = (xs.shape[0], *fmap.shape[1:])

  def logits_and_map(variables: Any, xs: jax.Array, delta: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
      if (context.method_name != "__call__" or "/".join(context.module.path) != target
          or "A" in seen):
        return next_fun(*args, **kwargs)
      if given:
        seen["A"] = args[0]
        return next_fun(args[0] + delta, *args[1:], **kwargs)
      seen["A"] = next_fun(*args, **kwargs)
      return seen["A"] + delta

    with nn.intercept_methods(interceptor):
      logits = model.apply(variables, xs, train=False)
    return jnp.mean(logits, axis=0), seen["A"]  # flip: as steps.eval_logits averages

  @jax.jit  # one program: eager, each op of the forward and backward pass compiles alone
  def explain(variables: Any, xs: jax.Array, c: jax.Array) -> tuple[jax.Array, ...]:
    logits, pullback, act = jax.vjp(lambda d: logits_and_map(variables, xs, d),
                                    jnp.zeros(shape, fmap.dtype), has_aux=True)
    c = jnp.where(c < 0, jnp.argmax(logits), c)              # -1: the predicted class
    grads, = pullback(jax.nn.one_hot(c, logits.shape[-1], dtype=logits.dtype))
    alpha = jnp.mean(grads.astype(jnp.float32), axis=(1, 2))          # (B, K)
    maps = jnp.einsum("bhwk,bk->bhw", act.astype(jnp.float32), alpha)
    return logits, c, jax.nn.relu(maps[0] + maps[1][:, ::-1] if flip else maps[0])

  logits, c, cam = explain(variables, xs, jnp.asarray(-1 if class_index is None else class_index))
  c = int(c)
  if not 0 <= c < logits.shape[-1]:
    raise ValueError(f"class {c} out of range: the model has {logits.shape[-1]} classes")
  peak = float(cam.max())
  cam = cam / peak if peak > 0 else cam
  h, w = x.shape[1:3]
  big = jax.image.resize(cam, (h, w), "bilinear")
  return {"cam": np.clip(np.asarray(big), 0, 1), "cam_small": np.asarray(cam), "class": c,
          "prob": float(jax.nn.softmax(logits)[c]), "layer": fmap.name,
          "logits": np.asarray(logits), "flip": flip}


def class_index(run: TrainedRun, cls: Union[None, int, str]) -> Optional[int]:
  """A class given by index or by name (None: the predicted one)."""
  if cls is None or isinstance(cls, int):
    return cls
  if str(cls).lstrip("-").isdigit():
    return int(cls)
  names = list(run.predictor.class_names or [])
  if cls not in names:
    raise ValueError(f"unknown class {cls!r}; classes: "
                     f"{', '.join(map(str, names)) or '(this run records no names: use an index)'}")
  return names.index(cls)


def plot_gradcam(run: TrainedRun, image: np.ndarray, out: str, cls: Union[None, int, str] = None,
                 layer: Optional[str] = None, overwrite: bool = False) -> dict:
  """Write image | Grad-CAM | overlay to `out` for a stored-shape uint8 `image`; with
  the run's `eval_flip`, of the mirror-averaged pass that evaluation scores."""
  viz.check_out(out, overwrite)
  x = run.model_input(image)
  flip = bool(run.config.get("eval_flip"))
  result = grad_cam(run.model, run.variables, x, class_index(run, cls), layer, flip=flip)
  shown = viz.denormalize(np.asarray(x)[0], run.config)
  size = (3 * 240, 270)
  fig = viz.figure(*size)
  name = run.class_name(result["class"])
  title = f"Grad-CAM ({result['layer']}{', +mirror' if flip else ''})"
  panels = [("input", shown, {}), (title, result["cam"], {"cmap": "jet", "vmin": 0, "vmax": 1})]
  for i, (title, img, kw) in enumerate(panels):
    viz.show_image(fig.add_subplot(1, 3, i + 1), img, title, **kw)
  ax = fig.add_subplot(1, 3, 3)
  viz.show_image(ax, shown, f"{name} (p={result['prob']:.2f})")
  ax.imshow(result["cam"], cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
  fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.03, wspace=0.06)
  viz.save(fig, out, overwrite)
  return {**result, "path": out, "size": size, "name": name}
