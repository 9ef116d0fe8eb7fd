"""CIFAR-10 fast: an airbench-class recipe (Jordan 2024; Page 2018) sized for a CPU budget.

airbench94 reaches 94.01% on the original CIFAR-10 in ~10 epochs on one A100 with BN,
label smoothing 0.2, Nesterov SGD, flip + translate and test-time flipping. This config
keeps that recipe (one-cycle Nesterov SGD, lr 0.4 with logits scaled by 1/9 as Page's
ResNet-9, L2 5e-4, label smoothing 0.2, pad-4 crop + flip, eval with flip averaging) on
an airbench net with groups 32/64/128, ~4x cheaper than airbench94's 64/256/256, so
that 18 epochs fit in about an hour on a 2-core CPU. `:full` is airbench94's widths.

Data: by default the CIFAR-10 JPEG copy as an image folder (../shared/datasets/cifar10_jpeg
or $CNN_JAX_CIFAR10_DIR: figures on it are a lower bound on the original); the original
with tensorflow-datasets: --config.dataset.name=cifar10.

  cnn-jax train --config experiments/cifar10_fast.py --workdir workdirs/cifar10_fast
"""
from cnn_jax.config import base_config, dataset_dir, parse_arg, smoke_variant



def cifar10_data(c):
  """The CIFAR-10 image folder (train / test) with the original's normalization."""
  c.dataset.name = "folder"
  c.dataset.path = dataset_dir("CNN_JAX_CIFAR10_DIR", "cifar10_jpeg")
  c.dataset.path_env = "CNN_JAX_CIFAR10_DIR"
  c.dataset.mean = (0.4914, 0.4822, 0.4465)
  c.dataset.std = (0.2470, 0.2435, 0.2616)
  return c


def get_config(arg=None):
  args = parse_arg(arg, variants=("smoke", "full"))
  c = cifar10_data(base_config())
  c.model = "airbench"
  c.model_kwargs.widths = (32, 64, 128)
  c.batch_size = 512
  c.eval_batch_size = 1000
  c.num_epochs = 18
  c.label_smoothing = 0.2
  c.optimizer.name = "nesterov"
  c.optimizer.learning_rate = 0.4
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "onecycle"
  c.augment = "pad_crop(4)|flip_lr"
  c.eval_flip = True
  c.log_every_steps = 20
  if args.full:
    c.model_kwargs.widths = (64, 256, 256)
    c.num_epochs = 10
  if args.smoke:
    smoke_variant(c)
  return c
