"""The course's object localizer on synthetic shapes: one class + one box per image.

A filled square, circle or triangle on a noisy 32x32 background (`data/synthetic.py`,
generated in a second, no download); `tiny_cnn` features flattened (a box regressor needs
to know *where*), class logits and a sigmoid box, loss 0.8 x cross entropy + 0.2 x
smooth L1, trained by the same loop as every classifier and detector.

  cnn-jax train --config experiments/shapes_localizer.py --workdir workdirs/shapes_localizer
"""
from cnn_jax.config import base_config, parse_arg, smoke_variant


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.task = "localization"
  c.model = "tiny_cnn"
  c.model_input_shape = (32, 32, 3)
  c.dataset.name = "shapes"
  c.dataset.train_split = "train[:90%]"
  c.dataset.val_split = "train[90%:]"
  c.dataset.test_split = "test"
  c.dataset.mean, c.dataset.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  c.localization.pooling = "flatten"
  c.batch_size = 32
  c.eval_batch_size = 256
  c.num_epochs = 5
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = "cosine"
  c.best_metric = "mean_iou"
  c.log_every_steps = 50
  if args.smoke:
    smoke_variant(c)
  return c
