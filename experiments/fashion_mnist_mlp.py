"""The course's 784-128-64-10 MLP on Fashion-MNIST (109,386 parameters; the course: 84.18%).

mnist_mlp.py's network and optimizer, 30 epochs, no augmentation.

  cnn-jax train --config experiments/fashion_mnist_mlp.py --workdir workdirs/fashion_mnist_mlp
"""
import os
import runpy

mnist_mlp_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "mnist_mlp.py"))["get_config"]


def get_config(arg=None):
  c = mnist_mlp_config(arg)
  c.dataset.name = "fashion_mnist"
  if c.num_epochs > 1:  # not :smoke
    c.num_epochs = 30
  c.augment = ""
  return c
