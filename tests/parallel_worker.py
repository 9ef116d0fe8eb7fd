"""Train a small batch-norm + dropout net and zoo batch-norm models under a given parallel
mode and device count; OUT.npz holds "MODEL/params/..." and "MODEL/batch_stats/...".

  python parallel_worker.py MODE NUM_DEVICES OUT.npz [MODEL,MODEL,...]

MODEL is a key of MODELS: a registered name with the constructor keywords it runs with.

Run as its own process because the simulated CPU device count is fixed at JAX start-up.
"""
import os
import sys

mode, ndev, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# XLA:CPU's YNNPACK fusions off: with them (jax 0.10.2) the 8-device program computes
# tiny_cnn's conv3 kernel gradient 3e-4 off a float64 reference on 28x28 input (1.6e-5 in
# the parameters after one step, 1.1e-2 in running variance after 8), while the 1-device and
# pmap programs agree with it to 6e-7: an XLA accuracy defect, not data parallelism's.
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={ndev} "
                           "--xla_cpu_experimental_ynn_fusion_type=")
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


# name -> (registered model, model_kwargs, input shape). small_convnet_bn: the zoo's
# small_convnet with its batch_norm switch on (three conv-BN-relu, two 2x2 max pools: on
# 20x20 the first pool tiles 18x18, the second reduce_window's 7x7 -> 3x3), narrowed so its
# three compilations stay cheap; its batch norm code is the zoo's layers.batch_norm.
MODELS = {
    "parity_net": ("parity_net", {}, (28, 28, 1)),
    "tiny_cnn": ("tiny_cnn", {}, (28, 28, 1)),
    "small_convnet_bn": ("small_convnet", {"batch_norm": True, "widths": (8, 16, 16)},
                         (20, 20, 1)),
}


def train(name: str) -> dict[str, np.ndarray]:
  """8 steps of SGD with momentum (2 epochs of 4 batches of 64) through the real loop."""
  model, kwargs, shape = MODELS[name]
  cfg = tiny_config(model, num_epochs=2, batch_size=64, eval_batch_size=64, parallel=mode,
                    best_metric="", model_input_shape=shape)
  cfg.model_kwargs = dict(kwargs)
  cfg.optimizer.name = "momentum"
  cfg.optimizer.learning_rate = 0.05
  data = random_split(256, shape=shape, seed=0), random_split(64, shape=shape, seed=1)
  workdir = os.path.join(os.path.dirname(out), f"wd_{name}_{mode}_{ndev}")
  r = trainer.train_and_evaluate(cfg, workdir, *data)
  state = jax.device_get(r["state"])
  flat = {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v) for p, v in
          jax.tree_util.tree_flatten_with_path({"params": state.params,
                                                "batch_stats": state.batch_stats})[0]}
  return {**flat, "eval_accuracy": r["validation"]["accuracy"],
          "eval_loss": r["validation"]["loss"]}


# ParityNet (dropout), tiny_cnn (the zoo's three conv-BN-relu-pool blocks; 28x28: its last
# pool takes 7x7 to 3x3) and small_convnet_bn, those named in argv[4] (default all), in one
# process.
names = sys.argv[4].split(",") if len(sys.argv) > 4 else list(MODELS)
results = {m: train(m) for m in names}
np.savez(out, **{f"{m}/{k}": v for m, r in results.items() for k, v in r.items()})
