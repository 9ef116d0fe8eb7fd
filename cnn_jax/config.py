"""Default configuration every experiment starts from, and its validation.

An experiment file in experiments/ defines `get_config(arg=None)` that takes
`base_config()` and changes what it needs; `arg="smoke"` gives a seconds-long variant.
Every key an experiment may set exists here, so a typo is caught with a suggestion
instead of being silently ignored.
"""
from __future__ import annotations

import difflib
import os
from typing import Any

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

# Sub-configs whose keys are free-form (passed straight to a constructor).
FREE_FORM = ("model_kwargs",)
MATMUL_PRECISIONS = ("default", "high", "highest")
TASKS = ("classification", "detection", "localization")
BOX_TASKS = ("detection", "localization")  # examples carry boxes: box-aware host ops only
# Device-side augmentations that leave every pixel where it was (so boxes stay right).
BOX_SAFE_AUGMENT = frozenset({"brightness", "contrast", "saturation", "hue", "color", "noise"})


def base_config() -> ConfigDict:
  c = ConfigDict()
  c.seed = 0
  c.model = "mnist_cnn"
  c.model_kwargs = ConfigDict()          # extra constructor arguments for the model
  c.model_input_shape = placeholder(tuple)             # (H, W, C); None: the registry's shape for the model
  # What the loop trains: "classification" (logits, cross entropy, top-1 / top-5),
  # "detection" (c.model is the backbone, built with include_top=False, under a YOLO v2
  # head: loss, NMS and mAP in cnn_jax/detection/task.py; settings in c.detection) or
  # "localization" (one class + one box per image: detection/localization_task.py).
  c.task = "classification"

  c.dataset = ConfigDict()
  c.dataset.name = "mnist"                # a tfds name (e.g. "imagenette/160px-v2"), "folder", "voc", "shapes"
  c.dataset.path = placeholder(str)        # name="folder": DIR holding DIR/<split>/<class>/*.jpg
  c.dataset.path_env = ""                 # the variable the experiment reads path from (named in errors)
  c.dataset.channels = 3                   # folder images are converted to 1 (grey) or 3 (RGB)
  c.dataset.skip_corrupt = False           # folder: skip (and count) unreadable files instead of failing
  # name="voc": DIR/<image_dir>/*.jpg + Pascal VOC XML (DIR/annotations, Annotations or
  # annots); splits slice one listing shuffled with split_seed, e.g. "train[:80%]".
  c.dataset.image_dir = "images"
  c.dataset.annotation_dir = placeholder(str)  # None: the first of annotations/Annotations/annots/xml
  # Class names in label order. voc: the classes (None: the sorted object names of all the
  # XML files). folder: what predictions and pictures call each class folder, in sorted
  # folder order, or as (folder, name) pairs (None: DIR/classes.txt or DIR/labels.txt,
  # `folder name` lines, if present; else the folder names).
  c.dataset.class_names = placeholder(tuple)
  c.dataset.split_seed = 0
  c.dataset.data_dir = placeholder(str)              # tfds data_dir (env CNN_JAX_DATA_DIR / TFDS_DATA_DIR)
  c.dataset.raw_dir = placeholder(str)               # original files for tfds manual_dir (env CNN_JAX_RAW_DIR)
  # Model selection (best/) uses the validation split, never the test split: by default a
  # held-out tenth of train (tfds split slicing). Test is evaluated once, at the end.
  c.dataset.train_split = "train[:90%]"
  c.dataset.val_split = "train[90%:]"    # "" : no validation (no per-epoch eval, no best/)
  c.dataset.test_split = "test"          # "" : no test evaluation at the end
  c.dataset.image_size = placeholder(tuple)            # (H, W) to centre-pad / crop to, e.g. (32, 32) for LeNet
  c.dataset.allow_download = True
  c.dataset.max_train_examples = placeholder(int)    # for smoke runs
  c.dataset.max_eval_examples = placeholder(int)    # validation and test
  # Host-side ops per example, in grain workers (cnn_jax/data/ops.py), e.g.
  # "random_resized_crop(128)|flip_lr" / "resize_small(146)|central_crop(128)". "": as stored.
  c.dataset.pp_train = ""
  c.dataset.pp_eval = ""
  c.dataset.mean = placeholder(tuple)      # per-channel normalization; None: the data set's own
  c.dataset.std = placeholder(tuple)
  c.dataset.workers = 0                    # grain worker processes (0: batches built in threads)
  c.dataset.threads = 2                    # grain reader threads (per worker)
  c.dataset.prefetch = 4                   # batches read ahead
  c.dataset.cache = True                   # decode small fixed-shape splits once (data/cache.py)
  c.dataset.cache_dir = placeholder(str)   # default $CNN_JAX_CACHE_DIR or ~/.cache/cnn_jax
  c.dataset.cache_max_mb = 4096           # a split decoding to more than this is not cached
  c.dataset.cache_total_mb = 8192         # the whole cache folder; least recently used entries go first
  # Keep the whole train split on the device and gather each batch there (no host reader,
  # no per-step copy): "auto" does it for an in-memory split with no host-side pp_train
  # on a single process under parallel="sharded" when it fits on_device_max_mb; the
  # batches are the same as the host reader's. "always" insists (error if it cannot); "never".
  c.dataset.on_device = "auto"
  c.dataset.on_device_max_mb = 1024

  # Training augmentation, ops joined by "|" and run on the device (cnn_jax/data/augment.py),
  # e.g. "pad_crop(4)|flip_lr|color(0.4, 0.4, 0.4, 0.1)|cutout(8)|mixup(0.2)". Image ops, in
  # the order written: pad_crop(padding) flip_lr(p=0.5) flip_ud(p=0.5)
  # translate(max_dx, max_dy=None) rotate(max_degrees) scale(min_scale, max_scale)
  # color(brightness, contrast, saturation, hue) brightness(d) contrast(lo, hi)
  # saturation(lo, hi) hue(d) noise(std) cutout(size); then batch ops, which mix labels
  # too: mixup(alpha) cutmix(alpha). "" : none.
  c.augment = ""

  # Test-time augmentation: evaluate on each image and its mirror image, average the logits.
  c.eval_flip = False

  # task="detection" (cnn_jax/detection/task.py). Boxes are normalized corners.
  c.detection = ConfigDict()
  c.detection.anchors = placeholder(tuple)   # ((w, h), ...) normalized; None: k-means on the train boxes
  c.detection.num_anchors = 5                # k of the k-means (YOLO v2's choice)
  c.detection.max_objects = placeholder(int)  # objects per image in a batch; None: the data's maximum
  c.detection.hidden = 256                   # width of the 3x3 conv before the prediction (0: none)
  c.detection.lambda_coord = 1.0
  c.detection.lambda_noobj = 1.0
  c.detection.ignore_iou = 0.6               # no "no object" loss for a prediction this close to a box
  c.detection.nms_iou = 0.45                 # non-maximum suppression, per class
  c.detection.score_threshold = 0.005        # detections kept for mAP (low: AP integrates over scores)
  c.detection.pre_nms_top_k = 256
  c.detection.max_detections = 100

  # task="localization" (cnn_jax/detection/localization_task.py): the course's weighting.
  c.localization = ConfigDict()
  c.localization.pooling = "avg"             # avg | flatten (keeps where things are; fixed size)
  c.localization.hidden = 0                  # a dense layer before the heads (0: none)
  c.localization.cls_weight = 0.8
  c.localization.box_weight = 0.2
  c.localization.box_loss = "smooth_l1"      # smooth_l1 | mse

  c.batch_size = 128                     # global batch, over all devices and hosts
  c.eval_batch_size = 1000
  c.num_epochs = 10
  c.label_smoothing = 0.0

  c.optimizer = ConfigDict()
  c.optimizer.name = "adam"              # sgd | momentum | nesterov | adam | adamw | rmsprop
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "constant"      # constant | cosine | warmup_cosine | piecewise | onecycle | exponential | triangular
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.end_learning_rate = 0.0
  # piecewise: the rate is multiplied by decay_factors[i] from epoch decay_epochs[i] on
  # (increasing, inside (0, num_epochs)); None: at 1/2 and 3/4 of num_epochs, each by 0.1.
  c.optimizer.decay_epochs = placeholder(tuple)
  c.optimizer.decay_factors = placeholder(tuple)   # None: 0.1 at each decay epoch
  c.optimizer.decay_rate = 0.95          # exponential, per epoch
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.decay = 0.9                # rmsprop
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 0.0
  c.optimizer.norm_bias_lr_scale = 1.0   # learning-rate factor for norm layers' biases (airbench: 64)
  c.optimizer.accumulate_steps = 1       # gradient accumulation (optax.MultiSteps)

  c.parallel = "sharded"                 # sharded (jit over a Mesh) | pmap
  # Numerics (docs: README "What is exact where"). "default" is XLA's: float32 on CPU,
  # TF32 convolutions / matmuls on Ampere+ GPUs, bf16 passes on TPU — fast, and what a
  # PyTorch user gets by default for convolutions. "highest" gives full float32 everywhere.
  c.matmul_precision = "default"         # default | high | highest
  # Computation dtype of the model: "bfloat16" runs every layer in bf16 while parameters,
  # optimizer state, batch-norm statistics and the loss stay float32 (mixed precision, as
  # the Flax ImageNet example's half_precision).
  c.dtype = "float32"                    # float32 | bfloat16
  # XLA's persistent compilation cache: a second start of the same run skips compiling.
  # None: $CNN_JAX_COMPILATION_CACHE or ~/.cache/cnn_jax/jax_compilation; "" turns it off.
  c.compilation_cache_dir = placeholder(str)
  # True: XLA's deterministic GPU ops (--xla_gpu_deterministic_ops; slower scatters and
  # reductions), so a resumed GPU run is bit-identical too. CPU runs are deterministic anyway.
  c.deterministic = False
  c.freeze = ()                          # parameter prefixes to freeze, e.g. ("conv1", "layer1")

  # Multi-host start-up (see cnn_jax/distributed.py); every key may stay unset: the
  # SLURM / TPU environment is detected, and one process needs nothing.
  c.distributed = ConfigDict()
  c.distributed.cluster = "auto"         # auto | none | slurm | tpu | jax
  c.distributed.coordinator_address = placeholder(str)
  c.distributed.coordinator_port = placeholder(int)
  c.distributed.num_processes = placeholder(int)
  c.distributed.process_id = placeholder(int)
  c.distributed.local_device_ids = placeholder(str)
  c.distributed.initialization_timeout = 300

  c.log_every_steps = 50
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 0           # 0: only at the end of each epoch
  c.keep_checkpoints = 3
  c.best_metric = "accuracy"             # validation metric that picks the best checkpoint
  c.best_mode = "auto"                   # max | min | auto (min for names with loss / error)
  c.async_checkpointing = True
  c.restore_from = placeholder(str)                  # start a new run from another run's weights
  # What a resume (the same --workdir again) may change; cnn_jax/training/resume.py. More
  # num_epochs: always (the log says how the schedule moves); RESUME_SAFE_KEYS: always;
  # any other key (optimizer.*, schedule, model, data, seed, ...): refused, listing the keys
  # with their old -> new values, unless this is "allow" (each resume's config and changed
  # keys are kept in <workdir>/config_history.jsonl). "refuse" | "allow".
  c.resume_changes = "refuse"
  c.skip_nonfinite_steps = False         # skip NaN / inf steps instead of stopping
  c.progress_bar = True
  c.tensorboard_samples = 8              # validation images + predictions in TensorBoard (0: off)
  # Metrics copied to a tracking service too (training/mlflow_writer.py): "mlflow:URI", e.g.
  # "mlflow:sqlite:///runs/mlflow.db" (a local database file, no server) or
  # "mlflow:http://host:5000"; needs `pip install 'cnn_jax[tracking]'`. "": metrics.jsonl
  # and TensorBoard only.
  c.tracking = ""
  return c


# Keys a resume may change without resume_changes="allow": they change how a run is
# watched, saved or read, never the weights it trains to (batches do not depend on the
# reader's workers / threads / cache / on_device: data/input_pipeline.py).
RESUME_SAFE_KEYS = (
    "log_every_steps", "progress_bar", "tensorboard_samples", "tracking", "eval_every_epochs",
    "eval_batch_size", "checkpoint_every_steps", "keep_checkpoints", "async_checkpointing",
    "compilation_cache_dir", "deterministic", "restore_from", "resume_changes",
    "dataset.workers", "dataset.threads", "dataset.prefetch", "dataset.cache",
    "dataset.cache_dir", "dataset.cache_max_mb", "dataset.cache_total_mb", "dataset.on_device", "dataset.on_device_max_mb",
    "dataset.data_dir", "dataset.raw_dir", "dataset.path_env", "dataset.allow_download", "distributed.*")
RESUME_CHANGES = ("refuse", "allow")


# Names other frameworks use for a config key (what a user types first).
KEY_ALIASES = {"lr": "learning_rate", "wd": "weight_decay", "epochs": "num_epochs",
               "bs": "batch_size", "optimizer": "name", "opt": "name", "schedule_name": "schedule"}


def dataset_dir(env_var: str, name: str) -> str:
  """Where a shipped experiment finds its image folder: $env_var if set, else
  `<repository>/../shared/datasets/<name>` as an absolute path, so that an experiment runs
  from any working directory, not only from the repository root."""
  repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.environ.get(env_var) or os.path.normpath(
      os.path.join(repository, "..", "shared", "datasets", name))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """A config (ConfigDict or its JSON dict) as {"optimizer.learning_rate": ..., ...}; a
  free-form sub-config (model_kwargs) is one key, as a dict. The one flattening: resume
  checks, run tables, MLflow params and `cnn-jax config` all compare these keys."""
  out: dict[str, Any] = {}
  for k, v in tree.items():
    if isinstance(v, (dict, ConfigDict)) and k not in FREE_FORM:
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v.to_dict() if isinstance(v, ConfigDict) else v
  return out


def known_keys(c: Any = None, prefix: str = "") -> list[str]:
  """Every dotted key of the base config ("optimizer.learning_rate"); free-form sub-configs
  (model_kwargs) count as one key."""
  c = base_config() if c is None else c
  out = []
  for k, v in c.items():
    if isinstance(v, ConfigDict) and k not in FREE_FORM:
      out += known_keys(v, f"{prefix}{k}.")
    else:
      out.append(f"{prefix}{k}")
  return out


def suggest_keys(path: str) -> list[str]:
  """The keys an unknown dotted `path` probably meant: its alias (lr -> learning_rate),
  else the closest spellings. The one suggester for configs and --config.KEY flags."""
  known = known_keys()
  *section, last = path.split(".")
  alias = ".".join([*section, KEY_ALIASES.get(last, last)])
  return [alias] if alias in known else difflib.get_close_matches(path, known, n=3, cutoff=0.6)


def _check_keys(cfg: Any, ref: Any, prefix: str) -> None:
  for key in cfg.keys():
    path = f"{prefix}{key}"
    if key not in ref:
      close = suggest_keys(path)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      raise KeyError(f"unknown config key {path!r}.{hint}")
    if key in FREE_FORM:
      continue
    if isinstance(cfg[key], ConfigDict) and isinstance(ref[key], ConfigDict):
      _check_keys(cfg[key], ref[key], path + ".")


# What each task's evaluation reports: the names config.best_metric may take.
EVAL_METRICS = {
    "classification": ("loss", "accuracy", "top5_accuracy"),
    "detection": ("mAP50", "mAP50_07", "mAP", "mAP75"),  # and AP50/<class name>
    "localization": ("loss", "accuracy", "mean_iou", "iou50"),
}


def _positive_int(config: ConfigDict, key: str, hint: str) -> None:
  v = config.get(key) if "." not in key else config.dataset.get(key.split(".", 1)[1])
  if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
    raise ValueError(f"{key} must be a positive integer, got {v!r}; {hint}")


def _check_run_settings(config: ConfigDict) -> None:
  """Settings that used to fail late (a ZeroDivisionError after an epoch of training, a
  KeyError logged every epoch, an empty checkpoints/) or silently (a NaN learning rate)."""
  import math
  _positive_int(config, "log_every_steps", "it is how many steps one logged mean covers")
  _positive_int(config, "eval_every_epochs", "validation runs every N epochs (and after the last)")
  _positive_int(config, "keep_checkpoints", "checkpoints/ keeps the newest N; with 0 a run "
                "could never resume (best/ is kept apart)")
  samples = config.get("tensorboard_samples", 0)
  if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
    raise ValueError(f"tensorboard_samples must be an integer >= 0 (0: no sample pictures), "
                     f"got {samples!r}")
  _positive_int(config, "dataset.max_train_examples", "leave it unset for the whole split")
  _positive_int(config, "dataset.max_eval_examples", "leave it unset for the whole split, or "
                "set val_split='' / test_split='' to skip an evaluation")
  lr = config.optimizer.get("learning_rate")
  if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:  # 0: weights stay
    raise ValueError(f"optimizer.learning_rate must be a finite number >= 0, got {lr!r}")
  task = config.get("task", "classification")
  names = EVAL_METRICS.get(task, ())
  metric = config.get("best_metric")
  if metric and names and metric not in names and not (
      task == "detection" and str(metric).startswith("AP50/")):
    close = ([n for n in names if n.startswith(str(metric))]
             or difflib.get_close_matches(str(metric), names, n=1))
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"best_metric={metric!r} is not a validation metric of a {task} run; it "
                     f"reports {', '.join(names)}{' and AP50/<class>' if task == 'detection' else ''}"
                     f".{hint} (best_metric='' turns best/ off)")


def validate(config: ConfigDict) -> ConfigDict:
  """Raise a clear error for unknown keys or impossible values; return the config."""
  _check_keys(config, base_config(), "")
  if not isinstance(config.batch_size, int) or config.batch_size <= 0:
    raise ValueError(f"batch_size must be a positive integer, got {config.batch_size!r}")
  if not isinstance(config.eval_batch_size, int) or config.eval_batch_size <= 0:
    raise ValueError(f"eval_batch_size must be a positive integer, got {config.eval_batch_size!r}")
  if config.num_epochs <= 0:
    raise ValueError(f"num_epochs must be positive, got {config.num_epochs}")
  if config.best_mode not in ("auto", "max", "min"):
    raise ValueError(f"best_mode must be 'auto', 'max' or 'min', got {config.best_mode!r}")
  _check_run_settings(config)
  if config.matmul_precision not in MATMUL_PRECISIONS:
    raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got "
                     f"{config.matmul_precision!r}")
  from cnn_jax import models  # noqa: PLC0415 - the one list of computation dtypes
  if config.get("dtype", "float32") not in models.DTYPES:  # runs saved before: float32
    raise ValueError(f"dtype must be {' or '.join(map(repr, models.DTYPES))} (mixed precision: "
                     f"bfloat16 compute, float32 parameters), got {config.dtype!r}")
  if config.get("resume_changes", "refuse") not in RESUME_CHANGES:
    raise ValueError(f"resume_changes must be 'refuse' or 'allow' (let a resume change the "
                     f"optimizer, schedule, data, ...), got {config.resume_changes!r}")
  if config.parallel not in ("sharded", "pmap"):
    raise ValueError(f"parallel must be 'sharded' or 'pmap', got {config.parallel!r}")
  from cnn_jax.data import augment  # noqa: PLC0415 - jax only when a run is validated
  ops = augment.parse(config.augment)  # unknown ops / bad arguments, before anything compiles
  task = config.get("task", "classification")  # runs saved before tasks existed classify
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  from cnn_jax.data import input_pipeline  # noqa: PLC0415 - as augment above
  input_pipeline.check_eval_pp(config.dataset.get("pp_eval") or "", task in BOX_TASKS)
  if task in BOX_TASKS:
    moving = [o.text for o in ops if o.name not in BOX_SAFE_AUGMENT]
    if moving:
      raise ValueError(f"config.augment {config.augment!r}: {', '.join(moving)} would move pixels "
                       "but not the boxes; for detection, augment geometry on the host with "
                       "box-aware ops in dataset.pp_train (flip_lr, scale_jitter, translate, "
                       f"letterbox; cnn_jax/data/box_ops.py) and keep config.augment to "
                       f"{', '.join(sorted(BOX_SAFE_AUGMENT))}")
  if task == "detection":
    d = config.detection
    if not 0 < d.nms_iou <= 1 or not 0 <= d.score_threshold < 1:
      raise ValueError(f"detection.nms_iou must be in (0, 1] and detection.score_threshold in "
                       f"[0, 1), got {d.nms_iou} and {d.score_threshold}")
    if d.anchors is None and int(d.num_anchors) < 1:
      raise ValueError(f"detection.num_anchors must be positive, got {d.num_anchors}")
  return config


def parse_arg(arg: Any, variants: tuple[str, ...] = ("smoke",)) -> Any:
  """An experiment's `:ARG` ("smoke", "smoke,full") as attributes; unknown variants refused.

  experiments/x.py:smok would otherwise silently run the full experiment.
  """
  import types
  given = [a.strip() for a in str(arg or "").split(",") if a.strip()]
  unknown = [a for a in given if a not in variants]
  if unknown:
    raise ValueError(f"unknown variant {unknown[0]!r} of this experiment; it has: "
                     f"{', '.join(variants)} (or none)")
  return types.SimpleNamespace(**{v: v in given for v in variants})


def smoke_variant(c: ConfigDict) -> ConfigDict:
  """Shrink an experiment to a seconds-long run that exercises every code path (a
  piecewise schedule's decay epochs shrink with it, in proportion)."""
  if c.optimizer.get("decay_epochs"):
    c.optimizer.decay_epochs = tuple(e / c.num_epochs for e in c.optimizer.decay_epochs)
  c.num_epochs = 1
  c.dataset.max_train_examples = 512
  c.dataset.max_eval_examples = 300
  c.batch_size = 64
  c.eval_batch_size = 128
  return c


def best_mode(config: ConfigDict) -> str:
  """'min' or 'max': how `config.best_metric` ranks checkpoints.

  "auto" minimises metrics whose name says they are losses or errors (loss, error_rate,
  top5_error) and maximises everything else (accuracy, top5_accuracy).
  """
  if config.best_mode != "auto":
    return config.best_mode
  name = (config.best_metric or "").lower()
  return "min" if ("loss" in name or "error" in name) else "max"
