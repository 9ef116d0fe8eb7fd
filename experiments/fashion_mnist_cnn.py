"""A CNN on Fashion-MNIST (the course's MLP reaches 84.18%).

  cnn-jax train --config experiments/fashion_mnist_cnn.py --workdir workdirs/fashion_mnist_cnn
"""
from cnn_jax.config import base_config, parse_arg, smoke_variant


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.model = "small_convnet"
  c.dataset.name = "fashion_mnist"
  c.batch_size = 128
  c.num_epochs = 15
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_epochs = 0.5
  c.augment = "flip_lr"
  c.label_smoothing = 0.1
  if args.smoke:
    smoke_variant(c)
  return c
