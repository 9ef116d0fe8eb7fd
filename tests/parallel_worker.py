"""Train a small batch-norm + dropout net under a given parallel mode and device count.

  python parallel_worker.py MODE NUM_DEVICES OUT.npz

Run as its own process because the simulated CPU device count is fixed at JAX start-up.
"""
import os
import sys

mode, ndev, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

from typing import Optional  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax import layers  # noqa: E402
from cnn_jax.models import register  # noqa: E402
from cnn_jax.training import trainer  # noqa: E402
from helpers import random_split, tiny_config  # noqa: E402


@register("parity_net", (28, 28, 1), "conv-BN-pool-dense-dropout test net")
class ParityNet(nn.Module):
  num_classes: int = 10
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = layers.Conv2D(8, 3, name="conv")(x)
    x = layers.batch_norm(train, self.axis_name, name="bn")(x)
    x = layers.MaxPool(2, name="pool")(nn.relu(x))
    x = nn.relu(nn.Dense(32, name="fc1")(layers.Flatten()(x)))
    x = layers.Dropout(0.3, deterministic=not train, axis_name=self.axis_name, name="drop")(x)
    return nn.Dense(self.num_classes, name="fc2")(x)


assert jax.device_count() == ndev
cfg = tiny_config("parity_net", num_epochs=2, batch_size=64, eval_batch_size=64, parallel=mode,
                  best_metric="")
cfg.optimizer.name = "momentum"
cfg.optimizer.learning_rate = 0.05
train, test = random_split(256, seed=0), random_split(64, seed=1)
r = trainer.train_and_evaluate(cfg, os.path.join(os.path.dirname(out), f"wd_{mode}_{ndev}"), train, test)
state = jax.device_get(r["state"])
flat = {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v) for p, v in
        jax.tree_util.tree_flatten_with_path({"params": state.params,
                                              "batch_stats": state.batch_stats})[0]}
np.savez(out, **flat, eval_accuracy=r["validation"]["accuracy"], eval_loss=r["validation"]["loss"])
