"""MNIST to 99.5% test accuracy within 5 minutes on a 2-core CPU.

The recipe: `small_convnet` (Keras' conv32-pool-conv64-pool-conv128 net, 3.1 M
multiply-adds per image) with batch norm, Adam with a one-cycle schedule to 9.7e-3, label
smoothing 0.16, 7 epochs on all 60,000 training images with random 2-pixel shifts on the
device (the split kept on the device), no validation split (the final model is tested
once): 99.60% in 256 s. The learning rate and smoothing are the choice of this file's
sweep (`get_sweep`, docs/sweeps.md), made on a held-out tenth of train; before it, 3e-3
and 0.1 gave 99.55% (without label smoothing, 8 epochs: 99.49%).

  cnn-jax train --config experiments/mnist_best.py --workdir workdirs/mnist_best
"""
import os
import runpy

from cnn_jax.config import base_config, parse_arg, smoke_variant

against_the_clock = runpy.run_path(os.path.join(os.path.dirname(__file__), "mnist_fast.py"))[
    "against_the_clock"]


def get_config(arg=None):
  args = parse_arg(arg)
  c = against_the_clock(base_config())
  c.model = "small_convnet"
  c.model_kwargs.batch_norm = True
  c.num_epochs = 7
  c.optimizer.learning_rate = 0.009704  # the sweep's choice (trial 12)
  c.label_smoothing = 0.1609
  if args.smoke:
    smoke_variant(c)
  return c


def get_sweep(arg=None):
  """`cnn-jax sweep --config experiments/mnist_best.py --workdir W`: the learning rate and
  label smoothing of this recipe, 16 trials (TPE, median pruning per epoch).

  Selection needs a validation split the recipe does not have: each trial trains on
  train[:90%] and is judged on train[90%:] (the test split stays untouched by the choice);
  the best trial's final and best-on-validation test accuracies are in its results.json.
  """
  del arg  # the same sweep for :smoke (a quick check of the command)
  return {
      "space": {"optimizer.learning_rate": "loguniform(1e-3, 1e-2)",
                "label_smoothing": "uniform(0.0, 0.2)"},
      "config": {"dataset.train_split": "train[:90%]", "dataset.val_split": "train[90%:]",
                 "best_metric": "accuracy"},
      "trials": 16, "metric": "validation/accuracy", "sampler": "tpe", "pruner": "median",
  }
