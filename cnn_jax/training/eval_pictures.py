"""Pictures written to TensorBoard at each evaluation, on process 0 only.

* `filters/first_conv`: the first convolution's kernels, host-side numpy on a few KB.
* `samples/predictions`: the first `config.tensorboard_samples` validation images with
  their true and predicted classes (classifiers only).

A picture is never worth a run: anything that goes wrong is logged once and that picture
dropped for the rest of the run.

How the sample predictions are computed, and why this way: the N images are read once
(the eval host pipeline, `input_pipeline.EvalBatch`, on the first N examples), and each
evaluation runs one small jitted forward pass (`steps.eval_logits`, so flip TTA and the
matmul precision are the evaluation's own) over that fixed (N, H, W, C) batch. It is
compiled once per run (fixed shapes, the jitted function kept in `memo`). The eval step
itself cannot give them: it returns sums over a batch, and making it also return
per-example logits would cost every evaluation batch a device-to-host copy and change the
step that every parallel mode compiles. The forward runs on one device, on that device's
copy of the replicated parameters (`addressable_data(0)`): no collective, so process 0
can run it alone under `sharded` (even with other processes) and `pmap`.
Measured on a shared 2-core CPU: the compile takes 0.2-0.5 s (mnist_cnn) / 0.8-1.2 s
(resnet20) once per run; then each evaluation 30-70 ms, mostly matplotlib's text.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.data import input_pipeline
from cnn_jax.training import steps
from cnn_jax.training.metric_writers import MetricWriter
from cnn_jax.training.train_state import variables_of
from cnn_jax.viz import filters
from cnn_jax.viz import samples as samples_viz  # matplotlib only when a picture is drawn

log = logging.getLogger("cnn_jax")


def write_eval_pictures(writer: MetricWriter, s: Any, state: Any, step: int,
                        memo: dict[str, Any]) -> None:
  """Write this evaluation's pictures. `memo` is the run's own dict, kept between
  evaluations (what was found once, e.g. the first convolution's path, the sample images
  and their compiled forward pass, or that a picture cannot be made for this model)."""
  _filters(writer, s, state, step, memo)
  _samples(writer, s, state, step, memo)


def _filters(writer: MetricWriter, s: Any, state: Any, step: int, memo: dict[str, Any]) -> None:
  """The first convolution's kernels as an image (`filters/first_conv`)."""
  path = memo.get("filters_path")
  if path == "":
    return
  try:
    variables = {"params": state.params, "batch_stats": state.batch_stats}  # only traced:
    image, path = filters.first_conv_image(s.model, variables, s.input_shape, path)  # 1 kernel read
    writer.image("filters/first_conv", image, step)
    memo["filters_path"] = path or ""
  except Exception as e:  # noqa: BLE001
    log.info("no filters picture for TensorBoard (%s: %s)", type(e).__name__, e)
    memo["filters_path"] = ""


@dataclasses.dataclass
class Samples:
  """The sample images, read once, and the forward pass compiled for them."""
  images: np.ndarray                 # (N, H, W, C) uint8, after dataset.pp_eval
  labels: np.ndarray                 # (N,)
  class_names: Optional[list[str]]
  probs_fn: Callable[[Any, jax.Array], jax.Array]  # (variables, images) -> probabilities


def read_samples(s: Any) -> Optional[Samples]:
  """The first config.tensorboard_samples examples of the validation split (else the
  test split) through the eval host pipeline; None when off or not a classifier."""
  n = int(s.config.get("tensorboard_samples", 0) or 0)
  source = s.val_data if s.val_data is not None else s.test_data
  if n <= 0 or source is None or s.config.get("task", "classification") != "classification":
    return None
  n = min(n, len(source))
  if n == 0:
    return None
  batch = input_pipeline.EvalBatch(source, n, s.config.dataset.pp_eval)(0)
  logits = functools.partial(steps.eval_logits, s.model.apply, preprocess=s.preprocess,
                             matmul_precision=s.config.matmul_precision,
                             flip=bool(s.config.get("eval_flip")))
  probs_fn = jax.jit(lambda v, x: jax.nn.softmax(logits(v, x).astype(jnp.float32)))
  names = getattr(source, "class_names", None)
  return Samples(batch["image"], batch["label"], list(names) if names else None, probs_fn)


def local_variables(state: Any) -> dict[str, Any]:
  """The model's variables as one local device's copy of the replicated state: a program
  on them runs on that device alone, whatever the state's sharding."""
  def one(x: Any) -> Any:
    if not isinstance(x, jax.Array):
      return x
    if not x.is_fully_replicated:
      raise ValueError(f"a state array of shape {x.shape} is not replicated ({x.sharding})")
    return x.addressable_data(0)
  return jax.tree_util.tree_map(one, variables_of(state))


def sample_predictions(samples: Samples, state: Any) -> np.ndarray:
  """(N, classes) probabilities of the sample images under `state`'s weights."""
  variables = local_variables(state)
  device = next(iter(jax.tree_util.tree_leaves(variables)[0].devices()))
  return np.asarray(samples.probs_fn(variables, jax.device_put(samples.images, device)))


def _samples(writer: MetricWriter, s: Any, state: Any, step: int, memo: dict[str, Any]) -> None:
  """The sample images with true / predicted class and confidence (`samples/predictions`)."""
  samples = memo.get("samples")
  if samples is False:
    return
  try:
    if samples is None:
      samples = memo["samples"] = read_samples(s) or False
      if samples is False:
        return
    image = samples_viz.predictions_image(samples.images, samples.labels,
                                          sample_predictions(samples, state), samples.class_names)
    writer.image("samples/predictions", image, step)
  except Exception as e:  # noqa: BLE001
    log.info("no sample predictions picture for TensorBoard (%s: %s)", type(e).__name__, e)
    memo["samples"] = False
