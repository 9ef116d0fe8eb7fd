"""ResNet-20 on CIFAR-10, He et al. 2016's recipe (their figure: 91.25% on the original).

Paper (section 4.2): SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10
at 32k and 48k iterations, stopped at 64k (182 epochs of 45k images), 4-pixel padding +
random 32x32 crop + horizontal flip, per-pixel mean subtraction (here: per-channel
normalization). That schedule is the default. `:cpu` is the documented CPU budget: the
same net and augmentation with a one-cycle schedule over 10 epochs (~1 h on 2 cores).

Data: the CIFAR-10 JPEG copy as an image folder by default (see cifar10_fast.py);
--config.dataset.name=cifar10 for the original through tensorflow-datasets.

  cnn-jax train --config experiments/cifar10_resnet20.py --workdir workdirs/cifar10_resnet20
  cnn-jax train --config experiments/cifar10_resnet20.py:cpu --workdir workdirs/cifar10_resnet20_cpu
"""
import os
import runpy

from cnn_jax.config import base_config, parse_arg, smoke_variant

cifar10_data = runpy.run_path(os.path.join(os.path.dirname(__file__), "cifar10_fast.py"))["cifar10_data"]


def get_config(arg=None, model="resnet20"):
  args = parse_arg(arg, variants=("smoke", "cpu"))
  c = cifar10_data(base_config())
  c.model = model
  c.batch_size = 128
  c.num_epochs = 182
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "piecewise"
  c.optimizer.decay_epochs = (91, 136)     # 32k and 48k iterations of 352 steps/epoch
  c.optimizer.decay_factors = (0.1, 0.1)
  c.augment = "pad_crop(4)|flip_lr"
  c.log_every_steps = 50
  if args.cpu:
    c.num_epochs = 10
    c.optimizer.name = "nesterov"
    c.optimizer.schedule = "onecycle"
    c.optimizer.learning_rate = 0.2
    c.optimizer.weight_decay = 5e-4
  if args.smoke:
    smoke_variant(c)
  return c
