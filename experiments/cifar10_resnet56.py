"""ResNet-56 on CIFAR-10, He et al. 2016's recipe (their figure: 93.03% on the original).

Same recipe as cifar10_resnet20.py (`:cpu`, `:smoke` too), three times deeper.

  cnn-jax train --config experiments/cifar10_resnet56.py --workdir workdirs/cifar10_resnet56
"""
import os
import runpy

resnet20_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "cifar10_resnet20.py"))["get_config"]


def get_config(arg=None):
  return resnet20_config(arg, model="resnet56")
