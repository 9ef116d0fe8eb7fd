"""The course's 784-128-64-10 MLP on Fashion-MNIST (109,386 parameters; the course: 84.18%).

  cnn-jax train --config experiments/fashion_mnist_mlp.py --workdir workdirs/fashion_mnist_mlp
"""
from cnn_jax.config import base_config, parse_arg, smoke_variant


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.model = "mlp"
  c.dataset.name = "fashion_mnist"
  c.batch_size = 128
  c.model_kwargs.dropout_rate = 0.2
  c.num_epochs = 30
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  if args.smoke:
    smoke_variant(c)
  return c
