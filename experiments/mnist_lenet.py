"""LeNet-5 (LeCun et al. 1998) on MNIST padded to 32x32.

  cnn-jax train --config experiments/mnist_lenet.py --workdir workdirs/mnist_lenet
"""
from cnn_jax.config import base_config, parse_arg, smoke_variant


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.model = "lenet5"
  c.dataset.name = "mnist"
  c.dataset.image_size = (32, 32)
  c.batch_size = 128
  c.num_epochs = 15
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_epochs = 0.5
  if args.smoke:
    smoke_variant(c)
  return c
