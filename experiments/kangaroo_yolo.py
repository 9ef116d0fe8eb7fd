"""YOLO v2 on the kangaroo photos (Pascal VOC boxes, one class, 1-8 per photo).

Data: ../shared/datasets/kangaroo or $CNN_JAX_KANGAROO_DIR (images/*.jpg, annots/*.xml).
One photo of the published set (images/00090.jpg) is truncated: skip_corrupt drops it
(logged), so 163 remain. The same recipe as experiments/raccoon_yolo.py (its docstring: split, anchors,
augmentation, transfer from the Imagenette classifier); 164 photos, train[:80%] = 131.

  cnn-jax train --config experiments/kangaroo_yolo.py --workdir workdirs/kangaroo_yolo \\
      --config.restore_from=workdirs/imagenette_resnet18
"""
import os
import runpy

from cnn_jax.config import dataset_dir, parse_arg

_raccoon = runpy.run_path(os.path.join(os.path.dirname(__file__), "raccoon_yolo.py"))


def get_config(arg=None):
  args = parse_arg(arg)
  c = _raccoon["detection_config"](dataset_dir("CNN_JAX_KANGAROO_DIR", "kangaroo"), args.smoke)
  c.dataset.path_env = "CNN_JAX_KANGAROO_DIR"
  c.dataset.skip_corrupt = True  # images/00090.jpg of the published set is truncated
  return c
