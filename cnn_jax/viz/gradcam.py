"""Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class lies.

With A the output of the last convolution (H' x W' x K) and y_c the class's logit,
  alpha_k = mean over positions of dy_c / dA_k,   cam = relu(sum_k alpha_k A_k),
scaled to [0, 1] by its maximum and resized (bilinear) to the model's input, as
Grad-CAM is usually drawn. The resize spreads the conv's grid over the whole input, so
in a network with VALID convolutions (whose last grid covers the input minus a border)
the map may sit up to about half that border off; SAME-padded networks line up.

How dy_c / dA is taken without changing the model: `flax.linen.intercept_methods` wraps
the chosen conv module's `__call__` so that it returns A + delta, with delta a zero
array we differentiate with respect to: d y_c / d delta at delta = 0 is d y_c / dA, and
the same call hands A back as an auxiliary output. (flax's `Module.perturb` does the
same, but only in models that call it.) A is the conv module's own output, before
the activation that follows it.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np

from cnn_jax import viz


def grad_cam(model: Any, variables: Any, x: Any, class_index: Optional[int] = None,
             layer: Optional[str] = None) -> dict:
  """Grad-CAM of the first image of `x` (model input, float NHWC).

  class_index None: the predicted class. layer: a conv's param path (default the last
  conv). Returns {"cam": (H, W) in [0, 1] at the input's size, "cam_small": at the conv's
  size, "class": c, "prob": softmax probability of c, "layer": path, "logits"}.
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  x = jnp.asarray(x[:1])
  path = viz.find_conv(model, variables, x, layer)
  shape = next(s.shape for s in viz.stages(model, variables, x) if s.path == path)

  def logits_and_act(delta: jax.Array) -> tuple[jax.Array, jax.Array]:
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if (context.method_name == "__call__" and "/".join(context.module.path) == path
          and "A" not in seen):
        seen["A"] = out
        out = out + delta
      return out

    with nn.intercept_methods(interceptor):
      logits = model.apply(variables, x, train=False)
    return logits[0], seen["A"]

  logits, _ = logits_and_act(jnp.zeros(shape, jnp.float32))
  c = int(jnp.argmax(logits)) if class_index is None else int(class_index)
  if not 0 <= c < logits.shape[-1]:
    raise ValueError(f"class {c} out of range: the model has {logits.shape[-1]} classes")
  def class_logit(delta: jax.Array) -> tuple[jax.Array, jax.Array]:
    out, act = logits_and_act(delta)
    return out[c], act

  grads, act = jax.grad(class_logit, has_aux=True)(jnp.zeros(shape, jnp.float32))
  alpha = grads[0].mean(axis=(0, 1))                     # (K,)
  cam = jax.nn.relu(jnp.einsum("hwk,k->hw", act[0], alpha))
  peak = float(cam.max())
  cam = cam / peak if peak > 0 else cam
  h, w = x.shape[1:3]
  big = jax.image.resize(cam, (h, w), "bilinear")
  return {"cam": np.clip(np.asarray(big), 0, 1), "cam_small": np.asarray(cam), "class": c,
          "prob": float(jax.nn.softmax(logits)[c]), "layer": path, "logits": np.asarray(logits)}


def class_index(run: "viz.Run", cls: Union[None, int, str]) -> Optional[int]:
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


def plot_gradcam(run: "viz.Run", image: np.ndarray, out: str, cls: Union[None, int, str] = None,
                 layer: Optional[str] = None, overwrite: bool = False) -> dict:
  """Write image | Grad-CAM | overlay to `out` for a stored-shape uint8 `image`."""
  viz.check_out(out, overwrite)
  x = run.model_input(image)
  result = grad_cam(run.model, run.variables, x, class_index(run, cls), layer)
  shown = viz.denormalize(np.asarray(x)[0], run.config)
  size = (3 * 240, 270)
  fig = viz.figure(*size)
  name = run.class_name(result["class"])
  panels = [("input", shown, {}), (f"Grad-CAM ({result['layer']})", result["cam"],
                                   {"cmap": "jet", "vmin": 0, "vmax": 1})]
  for i, (title, img, kw) in enumerate(panels):
    viz.show_image(fig.add_subplot(1, 3, i + 1), img, title, **kw)
  ax = fig.add_subplot(1, 3, 3)
  viz.show_image(ax, shown, f"{name} (p={result['prob']:.2f})")
  ax.imshow(result["cam"], cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
  fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.03, wspace=0.06)
  viz.save(fig, out, overwrite)
  return {**result, "path": out, "size": size, "name": name}
