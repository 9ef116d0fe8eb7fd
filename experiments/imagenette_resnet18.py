"""ResNet-18 on Imagenette (10 ImageNet classes) at 128 px, from scratch.

Inception-style random resized crop (scale 0.35-1, as fastai's Imagenette runs) + flip
on the host, ImageNet-style eval (shorter side to 146, centre crop 128), ImageNet
statistics, Nesterov SGD with a one-cycle schedule, label smoothing 0.1. Anchor: the
Imagenette leaderboard at 128 px (87.43% at 5 epochs, 91.57% at 20, xresnet50 with a
tuned recipe). `:resnet50` swaps the net.

Data: by default the Imagenette copy as an image folder (../shared/datasets/imagenette_224
or $CNN_JAX_IMAGENETTE_DIR: every image squashed to 224x224 and re-saved as JPEG, so
figures on it are not comparable with the leaderboard); the original with
tensorflow-datasets: --config.dataset.name=imagenette/320px-v2 --config.dataset.test_split=validation.

  cnn-jax train --config experiments/imagenette_resnet18.py --workdir workdirs/imagenette_resnet18
"""

from cnn_jax.config import base_config, dataset_dir, parse_arg, smoke_variant
from cnn_jax.data.input_pipeline import IMAGENET_MEAN_STD

# The ten WordNet ids and their names (a copy with other folders keeps its folder names).
IMAGENETTE_NAMES = (("n01440764", "tench"), ("n02102040", "English springer"),
                    ("n02979186", "cassette player"), ("n03000684", "chain saw"),
                    ("n03028079", "church"), ("n03394916", "French horn"),
                    ("n03417042", "garbage truck"), ("n03425413", "gas pump"),
                    ("n03445777", "golf ball"), ("n03888257", "parachute"))


def get_config(arg=None):
  args = parse_arg(arg, variants=("smoke", "resnet50"))
  c = base_config()
  c.model = "resnet50" if args.resnet50 else "resnet18"
  c.model_input_shape = (128, 128, 3)
  c.model_kwargs.num_classes = 10
  c.dataset.name = "folder"
  c.dataset.path = dataset_dir("CNN_JAX_IMAGENETTE_DIR", "imagenette_224")
  c.dataset.path_env = "CNN_JAX_IMAGENETTE_DIR"
  c.dataset.class_names = IMAGENETTE_NAMES
  c.dataset.test_split = "val"
  c.dataset.pp_train = "random_resized_crop(128, scale=(0.35, 1))|flip_lr"
  c.dataset.pp_eval = "resize_small(146)|central_crop(128)"
  c.dataset.mean, c.dataset.std = IMAGENET_MEAN_STD
  c.dataset.workers = 0
  c.dataset.threads = 2
  c.batch_size = 64
  c.eval_batch_size = 250
  c.num_epochs = 16
  c.label_smoothing = 0.1
  c.optimizer.name = "nesterov"
  c.optimizer.learning_rate = 0.2
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-5
  c.optimizer.schedule = "onecycle"
  c.log_every_steps = 20
  if args.smoke:
    smoke_variant(c)
    c.dataset.max_train_examples = 128
    c.dataset.max_eval_examples = 64
    c.batch_size = 32
    c.eval_batch_size = 32
  return c
