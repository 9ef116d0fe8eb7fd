"""Detector speed on this machine: training images/s and `cnn-jax detect` latency.

  python benchmarks/detection_speed.py [--config experiments/raccoon_yolo.py] [--steps 12]
      [--json benchmarks/results/detection_speed.json]

Everything is built by the training code itself (`setup.setup(config)` on the config's
data), so the figures are the run's, side by side in one process:
  * host pipeline alone: images/s of `train_batches` (decode, box-aware pp, padding);
  * train step on one fixed batch already on the device: images/s (compile excluded);
  * the loop's combination (pipeline + step, as `trainer` runs them): images/s;
  * detect latency per photo: `detection.detect.Detector.detect` on held-out photos
    (host pp + model + decode + NMS, compile excluded), median.
The weights are the initial ones: speed does not depend on them (NMS sees at most
pre_nms_top_k candidates either way). NMS alone on 1,000 boxes: benchmarks/nms.py.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import runpy
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax.data import input_pipeline  # noqa: E402
from cnn_jax.detection import detect  # noqa: E402
from cnn_jax.training import setup as setup_lib  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="experiments/raccoon_yolo.py")
  ap.add_argument("--steps", type=int, default=12)
  ap.add_argument("--photos", type=int, default=20)
  ap.add_argument("--json", default=None)
  args = ap.parse_args()
  config = runpy.run_path(args.config)["get_config"]()
  s = setup_lib.setup(config)
  bs = config.batch_size
  state = s.compiled.init_state(jax.random.key(0))

  def loader(steps):
    return input_pipeline.train_batches(s.train_data, bs, config.seed,
                                        steps_per_epoch=s.steps_per_epoch, num_steps=steps,
                                        pp=config.dataset.pp_train, **s.batch_options())

  t = time.perf_counter()
  host = list(itertools.islice(loader(args.steps + 1), args.steps + 1))
  host_ips = (args.steps + 1) * bs / (time.perf_counter() - t)

  batch = s.compiled.put_batch(host[0])
  state, m = s.compiled.train_step(state, batch)  # compile
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(args.steps):
    state, m = s.compiled.train_step(state, batch)
  jax.block_until_ready(m)
  step_ips = args.steps * bs / (time.perf_counter() - t)

  t = None
  for i, b in enumerate(loader(args.steps + 1)):
    state, m = s.compiled.train_step(state, s.compiled.put_batch(b))
    if i == 0:
      jax.block_until_ready(m)
      t = time.perf_counter()
  jax.block_until_ready(m)
  loop_ips = args.steps * bs / (time.perf_counter() - t)

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  detector = detect.Detector(s.model, variables, config, list(s.val_data.class_names))
  photos = [s.val_data[i][0] for i in range(min(args.photos, len(s.val_data)))]
  detector.detect(photos[0])  # compile
  times = []
  for p in photos:
    t = time.perf_counter()
    detector.detect(p, 0.0)
    times.append(time.perf_counter() - t)
  result = {
      "config": args.config, "model": config.model, "input": list(s.input_shape),
      "batch_size": bs, "pipeline_images_per_sec": host_ips, "step_images_per_sec": step_ips,
      "loop_images_per_sec": loop_ips, "loop_vs_step": loop_ips / step_ips,
      "detect_ms_median": 1e3 * statistics.median(times),
      "detect_photo_sizes": sorted({p.shape[:2] for p in photos})[:3],
      "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
      "cpus": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__}
  print(json.dumps(result, indent=2, default=str))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  main()
