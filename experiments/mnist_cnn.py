"""The course's MNIST CNN (conv16-pool-conv24-pool-fc64-dropout-fc10).

  cnn-jax train --config experiments/mnist_cnn.py --workdir workdirs/mnist_cnn
"""
from cnn_jax.config import base_config, parse_arg, smoke_variant


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.model = "mnist_cnn"
  c.dataset.name = "mnist"
  c.batch_size = 128
  c.num_epochs = 20
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_epochs = 0.5
  c.augment = "pad_crop(2)"          # random shifts of up to 2 pixels
  if args.smoke:
    smoke_variant(c)
  return c
