"""The course's 784-128-64-10 MLP on MNIST (109,386 parameters; the course reports 98.36%).

  cnn-jax train --config experiments/mnist_mlp.py --workdir workdirs/mnist_mlp
"""
from cnn_jax.config import base_config, smoke_variant


def get_config(arg=None):
  c = base_config()
  c.model = "mlp"
  c.dataset.name = "mnist"
  c.batch_size = 128
  c.model_kwargs.dropout_rate = 0.2   # after each hidden layer
  c.num_epochs = 30
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  if arg == "smoke":
    smoke_variant(c)
  return c
