"""What a sweep varies, and the config each trial trains.

A search space is written as `KEY=KIND(ARGS)`, KEY a dotted config key:

  optimizer.learning_rate=loguniform(1e-4, 1e-1)   log-uniform float in [A, B]
  label_smoothing=uniform(0, 0.2)                   uniform float in [A, B]
  model_kwargs.width=int(16, 64, 16)                integer in [A, B], step C (default 1)
  batch_size=logint(32, 256)                        integer, log scale
  augment=choice('pad_crop(2)', '')                 one of the values (also `categorical`)

either as `--space` flags or in the experiment file, next to `get_config`, as big_vision
keeps its sweeps:

  def get_sweep(arg=None):
    return {"space": {"optimizer.learning_rate": "loguniform(1e-4, 1e-2)"},
            "config": {"dataset.val_split": "train[90%:]"},   # fixed for every trial
            "trials": 12, "metric": "validation/accuracy", "sampler": "tpe"}

A trial's config is `get_config(arg)`, then the sweep's fixed settings and `--config.KEY=V`
overrides, then the trial's parameters: the same keys a `cnn-jax train` command sets.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import inspect
import json
from typing import Any, Mapping, Optional, Sequence

import optuna
from ml_collections import ConfigDict

from cnn_jax import config as config_lib
from cnn_jax import config_args

KINDS = ("loguniform", "uniform", "int", "logint", "choice", "categorical")


@dataclasses.dataclass(frozen=True)
class Param:
  """One swept config key: `kind` with its arguments (floats, ints or choices)."""
  key: str
  kind: str
  args: tuple

  @property
  def text(self) -> str:
    return f"{self.key}={self.kind}({', '.join(map(repr, self.args))})"

  def suggest(self, trial: optuna.Trial) -> Any:
    """The trial's value (a re-queued trial gets back the value it had)."""
    if self.kind in ("loguniform", "uniform"):
      return trial.suggest_float(self.key, *self.args, log=self.kind == "loguniform")
    if self.kind in ("int", "logint"):
      lo, hi, *step = self.args
      return trial.suggest_int(self.key, lo, hi, step=step[0] if step else 1,
                               log=self.kind == "logint")
    return trial.suggest_categorical(self.key, list(self.args))

  def grid(self) -> list[Any]:
    """The values a grid sweep tries."""
    if self.kind in ("choice", "categorical"):
      return list(self.args)
    if self.kind == "int":
      lo, hi, *step = self.args
      return list(range(lo, hi + 1, step[0] if step else 1))
    raise ValueError(f"--sampler grid needs a finite set of values, but {self.text} is "
                     f"continuous: write {self.key}=choice(V1, V2, ...) or int(A, B, STEP)")

  @property
  def log_scale(self) -> bool:
    return self.kind in ("loguniform", "logint")


def _literal(node: ast.expr, text: str) -> Any:
  if isinstance(node, ast.Name):  # choice(adam, sgd): bare words are strings
    return {"True": True, "False": False, "None": None}.get(node.id, node.id)
  try:
    return ast.literal_eval(node)
  except ValueError:
    raise ValueError(f"cannot read {ast.unparse(node)!r} in {text!r}: use numbers, "
                     "quoted strings, True/False/None") from None


def parse(text: str) -> Param:
  """`KEY=KIND(ARGS)` -> Param; a one-line error naming what is wrong and the forms known."""
  key, sep, spec = text.partition("=")
  key, spec = key.strip(), spec.strip()
  forms = "loguniform(A, B), uniform(A, B), int(A, B[, STEP]), logint(A, B), choice(V1, V2, ...)"
  if not sep or not key or not spec:
    raise ValueError(f"--space {text!r}: expected KEY=KIND(ARGS), e.g. "
                     f"optimizer.learning_rate=loguniform(1e-4, 1e-1); KIND is one of {forms}")
  try:
    call = ast.parse(spec, mode="eval").body
  except SyntaxError:
    call = None
  if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)) or call.keywords:
    raise ValueError(f"--space {text!r}: {spec!r} is not KIND(ARGS); KIND is one of {forms}")
  kind, args = call.func.id, tuple(_literal(a, text) for a in call.args)
  if kind not in KINDS:
    raise ValueError(f"--space {text!r}: unknown kind {kind!r}; known: {forms}")
  if kind in ("choice", "categorical"):
    if not args:
      raise ValueError(f"--space {text!r}: choice needs at least one value")
    bad = [a for a in args if not isinstance(a, (type(None), bool, int, float, str))]
    if bad:
      raise ValueError(f"--space {text!r}: choices must be numbers, strings, True/False/None; "
                       f"got {bad[0]!r}")
    return Param(key, kind, args)
  numbers = (int,) if kind in ("int", "logint") else (int, float)
  want = "(A, B[, STEP]) integers" if kind == "int" else "(A, B) numbers"
  if (len(args) not in ((2, 3) if kind == "int" else (2,))
      or not all(isinstance(a, numbers) and not isinstance(a, bool) for a in args)):
    raise ValueError(f"--space {text!r}: {kind} takes {want}")
  lo, hi = args[0], args[1]
  if not lo < hi or (kind.startswith("log") and lo <= 0) or (len(args) == 3 and args[2] <= 0):
    raise ValueError(f"--space {text!r}: need A < B" + (" and A > 0 (log scale)"
                                                         if kind.startswith("log") else "")
                     + (" and STEP > 0" if len(args) == 3 else ""))
  return Param(key, kind, tuple(float(a) for a in args) if numbers != (int,) else args)


def check_key(key: str, what: str) -> None:
  """A config key the trainer knows (a typo would otherwise sweep nothing)."""
  if key in config_lib.known_keys() or key.split(".")[0] in config_lib.FREE_FORM:
    return
  close = config_lib.suggest_keys(key)
  raise ValueError(f"{what}: unknown config key {key!r}"
                   + (f"; did you mean {', '.join(close)}?" if close else ""))


def parse_space(items: Sequence[str] | Mapping[str, str]) -> dict[str, Param]:
  """--space flags (or get_sweep's "space" mapping of KEY -> KIND(ARGS)) by key."""
  texts = [f"{k}={v}" for k, v in items.items()] if isinstance(items, Mapping) else list(items)
  space: dict[str, Param] = {}
  for text in texts:
    p = parse(text)
    check_key(p.key, f"--space {text!r}")
    if p.key in space:
      raise ValueError(f"--space: {p.key} is given twice ({space[p.key].text}, {p.text})")
    space[p.key] = p
  return space


def _module(path: str) -> Any:
  file = path.split(":")[0]
  spec = importlib.util.spec_from_file_location("cnn_jax_sweep_experiment", file)
  if spec is None or not file.endswith(".py"):
    raise ValueError(f"--config {path!r}: expected an experiment file FILE.py[:VARIANT]")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except FileNotFoundError:
    raise FileNotFoundError(f"config file {file} does not exist") from None
  return module


def _call(fn: Any, args: list[str]) -> Any:
  return fn(*args) if args and inspect.signature(fn).parameters else fn()


def experiment_sweep(path: str) -> dict[str, Any]:
  """The experiment's `get_sweep(arg)` (same ARG as get_config), or {} when it has none."""
  module = _module(path)
  get_sweep = getattr(module, "get_sweep", None)
  if get_sweep is None:
    return {}
  sweep = _call(get_sweep, path.split(":")[1:])
  unknown = set(sweep) - {"space", "config", "trials", "metric", "direction", "sampler",
                          "pruner"}
  if not isinstance(sweep, Mapping) or unknown:
    raise ValueError(f"{path}: get_sweep must return a dict with keys space, config, trials, "
                     f"metric, direction, sampler, pruner; got {sorted(unknown or [])}")
  return dict(sweep)


def set_key(config: ConfigDict, key: str, value: Any) -> None:
  """config[key] = value for a dotted key (a float key given an int stays a float)."""
  *path, last = key.split(".")
  target = config
  for p in path:
    target = target[p]
  current = target.get(last)
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  try:
    with config.unlocked():  # model_kwargs takes new keys
      target[last] = value
  except TypeError as e:
    raise ValueError(f"config key {key}: cannot set {value!r} ({e})") from None


@dataclasses.dataclass
class Spec:
  """Everything that defines a sweep's trials; stored with the study so that every worker
  (a restart, a SLURM array task) runs the same sweep."""
  config_path: str                      # experiments/x.py[:variant]
  overrides: list[str]                  # "--config.KEY=VALUE" as given
  fixed: dict[str, Any]                 # get_sweep's "config"
  space: dict[str, Param]
  metric: str = "validation/accuracy"   # SPLIT/NAME of the run's results
  direction: str = "maximize"
  _base: Optional[ConfigDict] = dataclasses.field(default=None, repr=False, compare=False)

  def to_json(self) -> dict[str, Any]:
    """As stored with the study (JSON: a tuple comes back a list, and must compare equal)."""
    return json.loads(json.dumps(
        {"config": self.config_path, "overrides": self.overrides, "fixed": self.fixed,
         "space": [p.text for p in self.space.values()], "metric": self.metric,
         "direction": self.direction}))

  def base_config(self) -> ConfigDict:
    """get_config(arg) with the --config.KEY=VALUE overrides (read as `cnn-jax train` reads
    them) and the sweep's fixed settings for the keys no override sets; built once (it runs
    the experiment file), a fresh copy each call."""
    if self._base is None:
      self._base = self._build_base()
    return copy.deepcopy(self._base)

  def _build_base(self) -> ConfigDict:
    config, _ = config_args.parse(["--config", self.config_path, *self.overrides],
                                  "cnn-jax sweep", workdir=False)
    given = {flag[len("--config."):].split("=", 1)[0] for flag in self.overrides}
    for key, value in self.fixed.items():
      check_key(key, "get_sweep's config")
      if key not in given:
        set_key(config, key, value)
    return config

  def config_for(self, params: Mapping[str, Any]) -> ConfigDict:
    config = self.base_config()
    for key, value in params.items():
      set_key(config, key, value)
    return config_lib.validate(config)

  def check(self, config: Optional[ConfigDict] = None) -> None:
    """What makes the sweep impossible, said before any trial starts."""
    config = config or self.base_config()
    split, _, name = self.metric.partition("/")
    if split not in ("validation", "test") or not name:
      raise ValueError(f"--metric {self.metric!r}: expected validation/NAME (or test/NAME), "
                       "e.g. validation/accuracy or validation/loss")
    if split == "validation" and not config.dataset.val_split:
      raise ValueError(f"{self.config_path} has no validation split (dataset.val_split is "
                       "empty), so there is nothing to select on: add "
                       "--config.dataset.val_split='train[90%:]' (and train_split='train[:90%]')"
                       " or get_sweep's config")
    if self.direction not in ("maximize", "minimize"):
      raise ValueError(f"--direction must be maximize or minimize, got {self.direction!r}")
