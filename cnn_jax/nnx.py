"""Every zoo model as a Flax NNX module, through `flax.nnx.bridge` (no second copy).

New Flax code is written in NNX; the zoo is written in linen. Rewriting each network in
NNX would give two copies of every architecture to keep equal, so instead the linen model
is wrapped with `nnx.bridge.ToNNX`: its variables become NNX `Param` / `BatchStat`
variables at the same paths, and each call runs the linen model's own `apply`.

    from flax import nnx
    from cnn_jax import nnx as zoo_nnx

    model = zoo_nnx.get_model("resnet20", rngs=nnx.Rngs(0), num_classes=10)
    logits = model(images)              # training mode: batch statistics, dropout
    model.eval(); logits = model(images)  # running averages, no dropout

Train / eval follows NNX: a module starts in training mode (as `nnx.BatchNorm` and
`nnx.Dropout` do), `module.train()` / `module.eval()` switch it, and a parent NNX model's
`.train()` / `.eval()` reach a zoo backbone inside it. The zoo's linen models take one
`train` flag for both batch norm and dropout, so `ZooModule` carries NNX's two attributes
(`use_running_average`, `deterministic`) and maps them to that flag; `model(x, train=...)`
overrides the mode for one call, the explicit flag of the rest of this project.

In training mode the batch statistics are updated in place (the linen `batch_stats`
collection is passed as mutable and the bridge writes it back), and dropout draws from the
module's `dropout` RNG stream, or from `rngs=` given to the call: an `nnx.Rngs`, or a key
used as is, so that `model(x, rngs=key)` drops exactly the units that linen's
`apply(..., rngs={"dropout": key})` drops (training/steps.py's train step, for one).

`from_linen` / `to_linen_variables` move trained weights between the two: the variables
dict of a cnn_jax checkpoint (`cnn_jax.load`) or of `models.get_model(...).init` goes in,
and the same dict comes back out of a module trained in NNX. `from_workdir` builds the NNX
module of a trained run (any task: detectors are built from the run's config).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge
from flax.nnx.bridge import variables as bridge_variables

from cnn_jax import inference, models
from cnn_jax.weights import check_variables

__all__ = ["ZooModule", "get_model", "from_linen", "from_workdir", "to_linen_variables",
           "wrap"]

RngsLike = Union[nnx.Rngs, jax.Array, None]


class ZooModule(nnx.Module):
  """A linen model as an NNX module: `self.net` is the `nnx.bridge.ToNNX` that holds its
  variables; `self.rngs` is the dropout stream of training-mode calls.

  A wrapper around ToNNX rather than a subclass: ToNNX hands every attribute of its own
  (but its `to_nnx__*` ones) to linen as a variable, so the mode attributes that NNX's
  `.train()` / `.eval()` set cannot live on it.
  """

  def __init__(self, net: bridge.ToNNX, rngs: nnx.Rngs):
    self.net = net
    self.rngs = rngs.fork()  # its own stream: the caller's Rngs is not shared with it
    self.use_running_average = False  # NNX's default: training mode until .eval()
    self.deterministic = False

  @property
  def linen_module(self) -> nn.Module:
    """The wrapped linen model (its `apply` is what every call runs)."""
    return self.net.to_nnx__module

  def __call__(self, x: jax.Array, *, train: Optional[bool] = None,
               rngs: RngsLike = None) -> Any:
    """The linen model's output (logits, or what a detector returns) for batch `x`.

    train: None -> the module's mode (`.train()` / `.eval()`); True / False for this call.
    rngs: the dropout randomness of a training-mode call: an `nnx.Rngs` (its `dropout`
    stream, else its default one), a key (used as the linen `dropout` key itself), or
    None (the module's own stream).
    """
    if train is None:
      if self.use_running_average != self.deterministic:
        raise ValueError(
            "cnn_jax zoo models take one train flag for batch norm and dropout, but this "
            f"module has use_running_average={self.use_running_average} and deterministic="
            f"{self.deterministic}; use .train() / .eval(), or call it with train=True/False")
      train = not self.use_running_average
    if not train:
      return self.net(x, train=False)
    if isinstance(rngs, jax.Array):
      key = rngs
    else:
      key = (rngs if rngs is not None else self.rngs).dropout()
    # ToNNX hands a lone key to linen as its `params` stream, and linen's make_rng falls
    # back to `params` for a stream it was not given, so the layers' make_rng("dropout")
    # get `key` itself, as from apply(..., rngs={"dropout": key}). tests/test_nnx.py
    # checks that equality for every zoo model with dropout.
    return self.net(x, train=True, rngs=key, mutable=["batch_stats"])


def _bridge_of(module: Union[ZooModule, bridge.ToNNX]) -> bridge.ToNNX:
  if isinstance(module, ZooModule):
    return module.net
  if isinstance(module, bridge.ToNNX):
    return module
  raise TypeError(f"expected a cnn_jax.nnx.ZooModule (from cnn_jax.nnx.get_model / from_linen) "
                  f"or an nnx.bridge.ToNNX, got {type(module).__name__}")


def wrap(linen_module: nn.Module, variables: Optional[Mapping[str, Any]] = None, *,
         rngs: Optional[nnx.Rngs] = None,
         sample_input: Optional[jax.Array] = None) -> ZooModule:
  """Any linen module with the zoo's `__call__(x, train)` (a registered model, a detector
  from `detection`) as a `ZooModule`.

  variables: its linen variables ({'params': ..., 'batch_stats': ...}), used as they are
  (not copied, not checked: `from_linen` checks a registered model's). Without them the
  module is initialized by `nnx.bridge.lazy_init` on `sample_input` (linen infers layer
  shapes from an input), with `rngs` (default nnx.Rngs(0)) as the `params` stream.
  """
  rngs = nnx.Rngs(0) if rngs is None else rngs
  net = bridge.ToNNX(linen_module)
  if variables is None:
    if sample_input is None:
      raise ValueError("wrap needs the linen variables or a sample_input to initialize them")
    net.lazy_init(sample_input, train=False, rngs=rngs)
  else:
    # What ToNNX itself does with the variables of its lazy_init: one NNX attribute per
    # top-level submodule, holding Param / BatchStat variables under the linen paths.
    for name, value in bridge_variables.linen_vars_to_nnx_attrs(dict(variables)).items():
      setattr(net, name, nnx.data(value))
  return ZooModule(net, rngs)


def _input_shape(name: str, input_shape: Optional[Sequence[int]]) -> tuple[int, int, int]:
  shape = tuple(input_shape) if input_shape is not None else models.input_shape(name)
  if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
    raise ValueError(f"input_shape must be (H, W, C) of positive ints, got {input_shape!r}")
  return shape  # type: ignore[return-value]


def get_model(name: str, rngs: Optional[nnx.Rngs] = None, *,
              input_shape: Optional[Sequence[int]] = None, **kwargs: Any) -> ZooModule:
  """The registered model `name` as a freshly initialized NNX module (training mode).

  rngs: initialization (`params`, else default stream) and later dropout randomness;
  default nnx.Rngs(0) (a new one each call: a shared default would advance between calls).
  input_shape: the (H, W, C) of the sample input linen initializes on, default the
  registry's; it only matters for a model whose dense layers see a flattened feature map
  of that size (vgg with avgpool_size=None). kwargs go to the model's constructor
  (num_classes=10, dtype=jnp.bfloat16, include_top=False, ...), as `models.get_model`.
  """
  model = models.get_model(name, **kwargs)
  x = jnp.zeros((1, *_input_shape(name, input_shape)), jnp.float32)
  return wrap(model, rngs=rngs, sample_input=x)


def from_linen(name: str, variables: Mapping[str, Any], *, rngs: Optional[nnx.Rngs] = None,
               input_shape: Optional[Sequence[int]] = None, **kwargs: Any) -> ZooModule:
  """The registered model `name` as an NNX module holding `variables` (trained weights).

  The variables are checked against the model the constructor kwargs build (shapes only,
  through jax.eval_shape: nothing runs), so weights of another model or another
  num_classes are a ValueError listing what differs, not a failure inside the first call.
  rngs: the dropout stream of training-mode calls (default nnx.Rngs(0)).
  """
  model = models.get_model(name, **kwargs)
  check_variables(model, dict(variables), _input_shape(name, input_shape))
  return wrap(model, variables, rngs=rngs)


def from_workdir(workdir: str, which: str = "best", *,
                 rngs: Optional[nnx.Rngs] = None) -> ZooModule:
  """The NNX module of a trained run (`which`: "best" or "latest" checkpoint), built and
  checked as `cnn_jax.load` builds it, in eval mode: the weights are for inference or
  fine-tuning, and a first call in training mode would move the saved batch statistics.
  Its input is the run's preprocessed batch (`cnn_jax.load(workdir).preprocess(images)`):
  the model does not hold the run's preprocessing, nor evaluation's `eval_flip`."""
  model, variables, _, _ = inference.load_run(workdir, which)
  module = wrap(model, variables, rngs=rngs)
  module.eval()
  return module


def to_linen_variables(module: Union[ZooModule, bridge.ToNNX]) -> dict[str, Any]:
  """The linen variables dict ({'params': ..., 'batch_stats': ...}) of an NNX zoo module,
  what `model.apply` / a cnn_jax checkpoint takes: the same conversion the bridge makes
  before every call, so these are exactly the variables the module computes with."""
  net = _bridge_of(module)
  attrs = {k: v for k, v in vars(net).items()
           if not k.startswith("to_nnx__") and not k.startswith("_pytree__")}
  return bridge_variables.nnx_attrs_to_linen_vars(attrs)
