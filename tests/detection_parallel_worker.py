"""Train and evaluate a detector under "sharded" and "pmap" on 2 simulated CPU devices.

  python detection_parallel_worker.py OUT_DIR

Its own process: the simulated device count is fixed when JAX starts. Prints one JSON
line per mode with the validation metrics, and saves every parameter and batch statistic
of the trained state to OUT_DIR/MODE.npz for a leaf-by-leaf comparison.
"""
import json
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax.training import trainer  # noqa: E402
from test_detection_task import detection_config, voc_folder  # noqa: E402

out = pathlib.Path(sys.argv[1])
voc_folder(out, n=24)
assert jax.device_count() == 2
for mode in ("sharded", "pmap"):
  c = detection_config(out, num_epochs=1, parallel=mode)
  c.eval_batch_size = 10  # 24 = 10 + 10 + 4: the last batch padded and masked
  r = trainer.train_and_evaluate(c, str(out / f"run_{mode}"))
  state = jax.device_get(r["state"])
  tree = {"params": state.params, "batch_stats": state.batch_stats}
  flat = {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  np.savez(out / f"{mode}.npz", **flat)
  print(json.dumps({"mode": mode, **r["validation"]}), flush=True)
