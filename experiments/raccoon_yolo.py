"""YOLO v2 on the raccoon photos (Pascal VOC boxes, one class), a ResNet-18 backbone.

Data: ../shared/datasets/raccoon or $CNN_JAX_RACCOON_DIR (images/*.jpg, annotations/*.xml).
Split: the 200 annotated photos shuffled once with dataset.split_seed=0; train[:80%] (160)
trains, train[80%:] (40) is held out: evaluated every epoch (mAP@0.5 VOC all-point,
VOC2007 11-point, COCO AP@[.5:.95]); report the final epoch's held-out figures (best/
is chosen on the same 40 photos, so its number is optimistic).

Anchors: k-means (IoU distance) on the training boxes, written into the run's config.
Augmentation: box-aware on the host (zoom 0.7-1.3 about the centre, shift up to 20%,
mirror, squash to 224x224), colour jitter on the device. Adam with warmup + cosine.

Transfer (the intended start: no downloaded weights): the backbone of a classifier
trained here on the Imagenette copy,
  cnn-jax train --config experiments/imagenette_resnet18.py --workdir workdirs/imagenette_resnet18
  cnn-jax train --config experiments/raccoon_yolo.py --workdir workdirs/raccoon_yolo \\
      --config.restore_from=workdirs/imagenette_resnet18
  cnn-jax detect --workdir workdirs/raccoon_yolo photo.jpg --out detections/
"""

from cnn_jax.config import base_config, dataset_dir, parse_arg, smoke_variant
from cnn_jax.data.input_pipeline import IMAGENET_MEAN_STD

SIZE = 224


def detection_config(path: str, smoke: bool, size: int = SIZE):
  """What raccoon and kangaroo share: only the folder differs."""
  c = base_config()
  c.task = "detection"
  c.model = "resnet18"                 # the backbone (include_top=False): 7x7 grid at 224
  c.model_input_shape = (size, size, 3)
  c.dataset.name = "voc"
  c.dataset.path = path
  c.dataset.train_split = "train[:80%]"
  c.dataset.val_split = "train[80%:]"
  c.dataset.test_split = ""
  c.dataset.split_seed = 0
  c.dataset.pp_train = f"random_affine(scale=(0.7, 1.3), translate=0.2)|flip_lr|resize({size})"
  c.dataset.pp_eval = f"resize({size})"
  c.dataset.mean, c.dataset.std = IMAGENET_MEAN_STD
  c.augment = "color(0.3, 0.3, 0.3, 0.02)"
  c.detection.num_anchors = 5
  c.batch_size = 16
  c.eval_batch_size = 20
  c.num_epochs = 60
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_epochs = 3
  c.optimizer.grad_clip_norm = 10.0
  c.best_metric = "mAP50"
  c.log_every_steps = 10
  if smoke:
    smoke_variant(c)
    c.model_input_shape = (64, 64, 3)
    c.dataset.pp_train = "random_affine(scale=(0.7, 1.3), translate=0.2)|flip_lr|resize(64)"
    c.dataset.pp_eval = "resize(64)"
    c.dataset.max_train_examples = 32
    c.dataset.max_eval_examples = 16
    c.detection.num_anchors = 3
    c.optimizer.warmup_epochs = 0.5
    c.batch_size = 8
    c.eval_batch_size = 8
  return c


def get_config(arg=None):
  args = parse_arg(arg)
  c = detection_config(dataset_dir("CNN_JAX_RACCOON_DIR", "raccoon"), args.smoke)
  c.dataset.path_env = "CNN_JAX_RACCOON_DIR"
  return c
