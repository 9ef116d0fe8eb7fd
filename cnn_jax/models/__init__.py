"""Model registry: every network by name, with the input shape it expects.

    model = models.get_model("lenet5", num_classes=10)
    variables = model.init(rng, jnp.zeros((1, *models.input_shape("lenet5"))), train=False)

Each model lives in its own file and registers itself here on import. Every model's
`__call__(x, train: bool)` returns logits; batch-norm statistics live in the
`batch_stats` collection and dropout draws from the `dropout` RNG stream. The layer that
makes the logits is always named `head`, so `transfer.replace_head` finds it in every
model (tests/test_transfer.py checks all of them).

Every model takes `dtype`, the dtype it computes in (`models.get_model("resnet20",
dtype=jnp.bfloat16)`: mixed precision, as the Flax ImageNet example's half_precision):
parameters and batch-norm statistics stay float32, the input is cast to `dtype` on entry
and the logits are cast back to float32, so the loss and the metrics are float32.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


@dataclass(frozen=True)
class ModelSpec:
  name: str
  factory: Callable[..., nn.Module]
  input_shape: tuple[int, int, int]  # (H, W, C) the model is built for
  description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}

# config.dtype -> the computation dtype models take.
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Files that register models; imported lazily so `import cnn_jax` stays light.
_MODEL_MODULES = ("mlp", "lenet", "mnist_cnn", "small_convnet", "alexnet", "zfnet", "vgg",
                  "googlenet", "resnet", "darknet", "airbench", "tiny_cnn")
_EXTRA_MODEL_MODULES: list[str] = []


def register(name: str, input_shape: tuple[int, int, int], description: str = ""):
  """Decorator (or call) that adds a model class / factory to the registry."""

  def wrap(factory):
    if name in _REGISTRY and _REGISTRY[name].factory is not factory:
      raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelSpec(name, factory, tuple(input_shape), description)
    return factory

  return wrap


def _load_all() -> None:
  for mod in _MODEL_MODULES + tuple(_EXTRA_MODEL_MODULES):
    importlib.import_module(f"cnn_jax.models.{mod}")


def names() -> list[str]:
  """All registered model names, sorted."""
  _load_all()
  return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
  _load_all()
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, _REGISTRY, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Build the named model; kwargs go to its constructor (e.g. num_classes=10, dtype=bf16)."""
  if "dtype" in kwargs and "dtype" not in constructor_args(name):
    raise TypeError(f"model {name!r} has no dtype argument: it cannot compute in "
                    f"{jnp.dtype(kwargs['dtype']).name}")
  return get_spec(name).factory(**kwargs)


def compute_dtype(name: str) -> Any:
  """The jnp dtype of a `config.dtype` name ("float32" | "bfloat16")."""
  if name not in DTYPES:
    raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {name!r}")
  return DTYPES[name]


def constructor_args(name: str) -> set[str]:
  """The constructor arguments the named model takes (through functools.partial)."""
  import dataclasses
  import functools
  factory = get_spec(name).factory
  while isinstance(factory, functools.partial):
    factory = factory.func
  if dataclasses.is_dataclass(factory):
    return {f.name for f in dataclasses.fields(factory)}
  import inspect
  return set(inspect.signature(factory).parameters)


def input_shape(name: str) -> tuple[int, int, int]:
  """The (H, W, C) input the named model is designed for."""
  return get_spec(name).input_shape


def abstract_variables(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
  """What `model.init` makes for one (H, W, C) input, as ShapeDtypeStructs.

  jax.eval_shape: the shapes of every variable without computing (or allocating) any.
  """
  import jax
  import jax.numpy as jnp
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return jax.eval_shape(lambda r, x: model.init(r, x, train=False), rngs, x)
