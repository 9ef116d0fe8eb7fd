"""Everything a run needs before its first step, built from the config by plain functions.

`setup(config)` validates the config, loads the train / validation / test splits, checks
that they fit the model (before anything compiles), builds model, optimizer and
preprocessing, and compiles the steps for the chosen parallel mode.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from cnn_jax import config as config_lib
from cnn_jax import layers, models, parallel
from cnn_jax.data import augment, input_pipeline, sources
from cnn_jax.training import optim, steps
from cnn_jax.training.train_state import create_train_state

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


@dataclasses.dataclass
class Setup:
  """Everything built from a config before the first step."""
  config: ConfigDict
  model: Any
  input_shape: tuple[int, int, int]     # what the model sees (after pad / crop)
  data_shape: tuple[int, int, int]      # what the data set stores (what predict must feed)
  num_classes: int
  preprocess: augment.PreprocessFn
  train_data: Optional[Any]             # random-access sources (data/sources.py)
  val_data: Optional[Any]
  test_data: Optional[Any]
  steps_per_epoch: int
  compiled: parallel.Compiled
  learning_rate: Callable[[int], float]  # the rate applied at a train step (logged)
  max_objects: Optional[int] = None     # detection: objects per image in a batch

  def batch_options(self) -> dict[str, Any]:
    """How this run's batches are read: grain options, and detection's object padding."""
    return {**input_pipeline.reader_options(self.config.dataset), "max_objects": self.max_objects}


def build_model(config: ConfigDict, num_classes: int,
                input_shape: Optional[tuple[int, int, int]] = None) -> Any:
  """The registered model with num_classes, config.dtype and, under pmap, cross-device
  batch norm (refused, before anything compiles, where a batch norm would not get it).

  task="detection": the registered model is the backbone of a YOLO v2 detector.
  config.dtype="bfloat16" computes in bfloat16 with float32 parameters (mixed precision);
  runs saved before the key existed are float32. input_shape (H, W, C), for the pmap
  check: default config.model_input_shape or the registry's shape.
  """
  task = config.get("task", "classification")
  dtype = models.compute_dtype(config.get("dtype", "float32"))
  pmap = config.parallel == "pmap"
  if task != "classification":
    model = task_module(config).build_model(config, num_classes,
                                            parallel.PMAP_AXIS if pmap else None, dtype)
  else:
    kwargs = dict(config.model_kwargs.to_dict() if config.model_kwargs else {})
    kwargs.setdefault("num_classes", num_classes)
    if dtype != jnp.float32:  # float32 is every model's default
      kwargs.setdefault("dtype", dtype)
    if pmap and "axis_name" in models.constructor_args(config.model):
      kwargs.setdefault("axis_name", parallel.PMAP_AXIS)  # cross-device batch norm
    model = models.get_model(config.model, **kwargs)
  if pmap:
    check_cross_device_batch_norm(config, model, tuple(
        input_shape or config.model_input_shape or models.input_shape(config.model)))
  return model


def unsynchronised_batch_norms(model: Any, input_shape: tuple[int, int, int]) -> list[str]:
  """Paths of the model's batch norms that have no axis_name: under pmap each would
  normalize a device's slice of the batch by the slice's own moments, silently another
  function than one device (or "sharded") computes. Traced, never computed."""
  found: list[str] = []

  def spy(next_fn, args, kwargs, context):
    m = context.module
    if isinstance(m, layers.BatchNorm) and context.method_name == "__call__" and not m.axis_name:
      found.append("/".join(m.path))
    return next_fn(*args, **kwargs)

  with nn.intercept_methods(spy):
    models.abstract_variables(model, input_shape)
  return sorted(set(found))


def check_cross_device_batch_norm(config: ConfigDict, model: Any,
                                  input_shape: tuple[int, int, int]) -> None:
  """parallel="pmap": refuse a model whose batch norm would be per device (one line)."""
  unsynced = unsynchronised_batch_norms(model, input_shape)
  if not unsynced:
    return
  where = f"batch norm {', '.join(unsynced[:3])}{' ...' if len(unsynced) > 3 else ''}"
  task = config.get("task", "classification")
  if "axis_name" not in models.constructor_args(config.model):
    raise ValueError(
        f"model {config.model!r} has batch norm but no axis_name field, so under "
        "parallel='pmap' each device would normalize by its own slice's moments: give it an "
        "axis_name field passed to layers.batch_norm, or use --config.parallel=sharded")
  what = (f"model {config.model!r}" if task == "classification"
          else f"the {task} model on {config.model!r}")
  raise ValueError(
      f"{what}: {where} ignores axis_name, so under parallel='pmap' each "
      "device would normalize by its own slice's moments: pass the module's axis_name to "
      "layers.batch_norm, or use --config.parallel=sharded")


def max_objects_of(config: ConfigDict) -> Optional[int]:
  """Objects per image in a batch: None for classification (runs saved before tasks
  existed have no `detection` key at all), 1 for localization."""
  task = config.get("task", "classification")
  if task == "detection":
    return int(config.detection.max_objects)
  return 1 if task == "localization" else None


def task_module(config: ConfigDict) -> Any:
  """The module that supplies a non-classification task's model, loss and eval step."""
  if config.get("task") == "detection":
    from cnn_jax.detection import task  # noqa: PLC0415
    return task
  from cnn_jax.detection import localization_task  # noqa: PLC0415
  return localization_task


def data_input_shape(config: ConfigDict, raw_shape: tuple[int, ...]) -> tuple[int, int, int]:
  """The model input shape for stored images of `raw_shape` (dataset.image_size pads / crops)."""
  h, w, c = raw_shape
  if config.dataset.image_size:
    h, w = config.dataset.image_size
  return (h, w, c)


SPLIT_KEYS = {"train": "train_split", "validation": "val_split", "test": "test_split"}


def batch_image_shape(config: ConfigDict, data: Any, split: str) -> tuple[int, int, int]:
  """(H, W, C) of the images a split's batches carry: stored images after the host-side pp.

  split: "train" (pp_train), "validation" or "test" (pp_eval).
  """
  pp = config.dataset.pp_train if split == "train" else config.dataset.pp_eval
  stored = data.image_shape or (None, None, getattr(data, "channels", 3))
  try:
    boxes = config.get("task") in config_lib.BOX_TASKS
    shape = input_pipeline.parse_pp(pp, boxes).output_shape(tuple(stored))
  except ValueError as e:
    key = "pp_train" if split == "train" else "pp_eval"
    raise ValueError(f"dataset.{key}: {e}") from None
  if None in shape:
    key = "pp_train" if split == "train" else "pp_eval"
    name = config.dataset.get(SPLIT_KEYS.get(split, ""), split)  # e.g. "train[:90%]"
    raise ValueError(f"{config.dataset.name}/{name} images differ in size and "
                     f"dataset.{key}={pp!r} does not bring them to one size: add a resize / crop "
                     f"op, e.g. --config.dataset.{key}='resize_small(146)|central_crop(128)'")
  return tuple(int(v) for v in shape)


def check_input(config: ConfigDict, data: Any, num_classes: int, split: str) -> tuple[int, int, int]:
  """Fail before compiling when a split (each checked by its own shape) cannot feed the model.

  Returns the split's batch image shape.
  """
  shape = batch_image_shape(config, data, split)
  split = config.dataset.get(SPLIT_KEYS.get(split, ""), split)  # e.g. "train[:90%]" in messages
  got = data_input_shape(config, shape)
  expected = tuple(config.model_input_shape or models.input_shape(config.model))
  if tuple(got) != expected:
    hint = ""
    if got[2] == expected[2]:
      hint = (f" Set --config.dataset.image_size='({expected[0]}, {expected[1]})' to pad/crop the "
              "images, size them with dataset.pp_train / pp_eval, or set "
              "--config.model_input_shape to build the model for this size.")
    raise ValueError(f"model {config.model!r} expects {expected[0]}x{expected[1]}x{expected[2]} "
                     f"images but {config.dataset.name}/{split} gives "
                     f"{got[0]}x{got[1]}x{got[2]}.{hint}")
  if data.num_classes > num_classes:
    raise ValueError(f"{config.dataset.name}/{split} has {data.num_classes} classes but the "
                     f"model's head has {num_classes} outputs: raise (or unset) "
                     "--config.model_kwargs.num_classes")
  if data.num_classes != num_classes and not config.model_kwargs.get("num_classes"):
    raise ValueError(f"{config.dataset.name}/{split} has {data.num_classes} classes but another "
                     f"split has {num_classes}: the splits must share one label set")
  labels = getattr(data, "labels", None)
  if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{config.dataset.name}/{split} has labels in [{labels.min()}, "
                     f"{labels.max()}] but the model has {num_classes} classes; set "
                     "--config.model_kwargs.num_classes or fix the labels.")
  return shape


def request_determinism(config: ConfigDict) -> None:
  """Ask XLA for deterministic GPU ops; must run before JAX starts its backend (the CLI does)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if config.get("deterministic") and DETERMINISTIC_FLAG not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_FLAG}".strip()


def check_determinism(config: ConfigDict) -> None:
  if (config.deterministic and jax.default_backend() == "gpu"
      and DETERMINISTIC_FLAG not in os.environ.get("XLA_FLAGS", "")):
    raise ValueError(
        f"deterministic=True needs XLA_FLAGS={DETERMINISTIC_FLAG} before JAX starts (set it in the "
        "environment, or use `cnn-jax train`, which sets it); without it GPU scatters and "
        "reductions may differ from run to run.")


def use_compilation_cache(path: Optional[str] = None) -> None:
  """Keep compiled steps across runs (a restart or a second run skips XLA compilation).

  In `path` (config.compilation_cache_dir), else $CNN_JAX_COMPILATION_CACHE, else
  ~/.cache/cnn_jax/jax_compilation; "" turns it off. Any program that took 0.5 s or more
  to compile is kept.
  """
  if path is None:
    path = os.environ.get("CNN_JAX_COMPILATION_CACHE", os.path.join(
        os.path.expanduser("~"), ".cache", "cnn_jax", "jax_compilation"))
  if path and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def load_splits(config: ConfigDict, for_training: bool = True) -> dict[str, Any]:
  """The whole train split (if for_training: each process reads its part of every global
  batch, input_pipeline.TrainBatch) and this process's share of validation and test."""
  ds = config.dataset
  load = functools.partial(sources.load_source, ds, process_index=jax.process_index(),
                           process_count=jax.process_count())
  return {
      "train": (sources.load_source(ds, ds.train_split, max_examples=ds.max_train_examples)
                if for_training else None),
      "val": load(ds.val_split, max_examples=ds.max_eval_examples) if ds.val_split else None,
      "test": load(ds.test_split, max_examples=ds.max_eval_examples) if ds.test_split else None,
  }


DATA_INIT_EXAMPLES = 5000  # what airbench's whitening reads


def params_from_data(model: nn.Module, train_data: Any, preprocess: Callable
                     ) -> Optional[dict[tuple[str, ...], Any]]:
  """The parameters `model.data_init` computes from the train split's first 5,000 images,
  preprocessed as for evaluation (e.g. airbench's whitened stem); None for other models.

  Every process holds the whole train split in the same order, so every process
  computes the same values, and they are computed again (the same) on a resume.
  """
  data_init = getattr(model, "data_init", None)
  if data_init is None or train_data is None:
    return None
  n = min(DATA_INIT_EXAMPLES, len(train_data))
  images = np.stack([train_data[i][0] for i in range(n)])
  return data_init(np.asarray(preprocess(jnp.asarray(images), None, False))) or None


def setup(config: ConfigDict, train_data: Optional[Any] = None, val_data: Optional[Any] = None,
          test_data: Optional[Any] = None, *, for_training: bool = True) -> Setup:
  """Validate the config, load data, build model / optimizer and compile the steps.

  Splits passed in memory are whole splits, of which each process takes its share, and
  nothing is loaded from the config; otherwise the config's splits are loaded (train only
  when `for_training`).
  """
  config_lib.validate(config)
  check_determinism(config)
  parallel.check_batch_size(config.batch_size)
  parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
  if train_data is None and val_data is None and test_data is None:
    loaded = load_splits(config, for_training)
    train_data, val_data, test_data = loaded["train"], loaded["val"], loaded["test"]
  else:  # as load_splits reads a config's: whole train, this process's share of the others
    mine = sources.process_shares({"val": val_data, "test": test_data},
                                  jax.process_index(), jax.process_count())
    val_data, test_data = mine["val"], mine["test"]
  if for_training and train_data is None:
    raise ValueError("no training data: set --config.dataset.train_split")
  splits = {"train": train_data, "validation": val_data, "test": test_data}
  present = {name: d for name, d in splits.items() if d is not None}
  if not present:
    raise ValueError("no data to evaluate: set --config.dataset.val_split or test_split")
  first = next(iter(present.values()))
  task = config.get("task", "classification")
  if task == "detection":
    task_module(config).resolve(config, train_data, list(present.values()))
  num_classes = int(config.model_kwargs.get("num_classes", first.num_classes))
  shapes = {name: check_input(config, data, num_classes, name) for name, data in present.items()}
  # What predict must feed the device-side preprocessing: eval batches' images.
  data_shape = next(shapes[k] for k in ("validation", "test", "train") if k in shapes)
  input_shape = data_input_shape(config, data_shape)

  preprocess = augment.preprocess_from_config(config)  # the one that eval and predict use
  # Every process holds the whole train split: the same number of global batches.
  spe = (input_pipeline.steps_per_epoch(len(train_data), config.batch_size)
         if train_data is not None else 1)
  model = build_model(config, num_classes, input_shape)
  frozen = tuple(config.freeze or ())
  params = models.abstract_variables(model, input_shape)["params"] if frozen else None
  tx, learning_rate = optim.make_optimizer(config.optimizer, spe, config.num_epochs,
                                           skip_nonfinite=config.skip_nonfinite_steps,
                                           frozen=frozen, params=params)
  from_data = params_from_data(model, train_data, preprocess) if for_training else None
  init_fn = lambda rng: create_train_state(model, tx, rng, input_shape, from_data)
  train_fn = functools.partial(steps.train_step, preprocess=preprocess,
                               mix=augment.mix_from_config(config, num_classes),
                               loss_fn=(task_module(config).loss_fn(config)
                                        if task != "classification" else None),
                               label_smoothing=config.label_smoothing, frozen=frozen,
                               matmul_precision=config.matmul_precision)
  if task != "classification":
    eval_fn = functools.partial(task_module(config).eval_step, config=config,
                                preprocess=preprocess, matmul_precision=config.matmul_precision,
                                flip=config.eval_flip)
  else:
    eval_fn = functools.partial(steps.eval_step, preprocess=preprocess,
                                matmul_precision=config.matmul_precision, flip=config.eval_flip)
  compiled = parallel.compile_steps(config.parallel, init_fn, train_fn, eval_fn)
  return Setup(config, model, input_shape, data_shape, num_classes, preprocess, train_data,
               val_data, test_data, spe, compiled, learning_rate,
               max_objects_of(config))
