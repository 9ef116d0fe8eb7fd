"""Pictures written to TensorBoard at each evaluation, on process 0 only.

Host-side numpy on a few KB of weights (the first convolution's filters). A picture is
never worth a run: anything that goes wrong is logged once and that picture dropped.
"""
from __future__ import annotations

import logging
from typing import Any

from cnn_jax.training.metric_writers import MetricWriter

log = logging.getLogger("cnn_jax")


def write_eval_pictures(writer: MetricWriter, s: Any, state: Any, step: int,
                        memo: dict[str, Any]) -> None:
  """Write this evaluation's pictures. `memo` is the run's own dict, kept between
  evaluations (what was found once, e.g. the first convolution's path, or that a picture
  cannot be made for this model)."""
  _filters(writer, s, state, step, memo)


def _filters(writer: MetricWriter, s: Any, state: Any, step: int, memo: dict[str, Any]) -> None:
  """The first convolution's kernels as an image (`filters/first_conv`)."""
  path = memo.get("filters_path")
  if path == "":
    return
  try:
    from cnn_jax.viz import filters  # noqa: PLC0415 - numpy only; matplotlib is not imported
    variables = {"params": state.params, "batch_stats": state.batch_stats}  # only traced:
    image, path = filters.first_conv_image(s.model, variables, s.input_shape, path)  # 1 kernel read
    writer.image("filters/first_conv", image, step)
    memo["filters_path"] = path or ""
  except Exception as e:  # noqa: BLE001
    log.info("no filters picture for TensorBoard (%s: %s)", type(e).__name__, e)
    memo["filters_path"] = ""
