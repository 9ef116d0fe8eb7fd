"""What running a work directory's command again may change, and the record of what it did.

A work directory holds one run; its command run again resumes it from its latest
checkpoint. What the run was configured with is `<workdir>/config.json`; before anything
loads or compiles, `check` compares the new config with it:
  * SHAPE_KEYS (the model, the data's shapes, the batch size, ...): never, whatever is
    asked (a new run from the weights: --config.restore_from);
  * more num_epochs, and config.RESUME_SAFE_KEYS (logging, checkpointing, the reader):
    always; how a longer run moves the learning-rate schedule is logged (`schedule_note`);
  * anything else (the optimizer, the schedule, the data, the seed, ...): refused, listing
    the keys with their old -> new values, unless config.resume_changes == "allow".
Every start appends its config and its changed keys to `<workdir>/config_history.jsonl`;
config.json is the latest of them. A finished run keeps its results in results.json: its
command run again prints them and writes nothing (`finished`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Optional, Union

import numpy as np
from etils import epath
from ml_collections import ConfigDict

from cnn_jax import config as config_lib
from cnn_jax.training import optim
from cnn_jax.training import workdir as workdir_lib
from cnn_jax.weights import files

log = logging.getLogger("cnn_jax")
CONFIG, HISTORY, RESULTS = "config.json", "config_history.jsonl", "results.json"
# What a resumed run must keep: the state's shapes, and batch_size (the data position of
# a step depends on it: a resume with another batch would silently train other steps).
SHAPE_KEYS = ("model", "model_kwargs", "model_input_shape", "dataset.name", "dataset.image_size",
              "optimizer.name", "optimizer.accumulate_steps", "optimizer.nesterov", "freeze",
              "skip_nonfinite_steps", "batch_size", "task", "detection.anchors")


def _as_json(config: Union[ConfigDict, dict]) -> dict:
  return config if isinstance(config, dict) else json.loads(config.to_json_best_effort())


def config_changes(saved: dict, config: Union[ConfigDict, dict]) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (saved value, new value)} for every key both configs have and that differs
  (a key one of them lacks, from an older or newer cnn_jax, is no change)."""
  new = _as_json(config)
  a, b = config_lib.flatten(saved), config_lib.flatten(new)
  a.setdefault("task", "classification")  # runs saved before tasks existed classify
  # A key neither the saved nor the new optimizer / schedule reads (e.g. a piecewise
  # default changed while the run is cosine) changes nothing.
  unused = {f"optimizer.{k}" for k in (optim.unused_keys(saved.get("optimizer", {}))
                                       & optim.unused_keys(new.get("optimizer", {})))}
  return {k: (a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k]
          and k not in unused
          and not (k in ("freeze", "skip_nonfinite_steps") and not a[k] and not b[k])}


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
  """'optimizer.learning_rate: 0.002 -> 0.5; num_epochs: 2 -> 4'."""
  return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


def structure_error(step_path: str, workdir: Any, mismatch: list[str], saved_config: dict,
                    config: ConfigDict) -> ValueError:
  """A checkpoint whose state another config built (checkpoint.structure_mismatch): one
  line naming the settings that changed. Not corruption: nothing is set aside."""
  parts = sorted({k.split("/")[0] for k in mismatch})
  changes = optional_changes(config_changes(saved_config, config))
  what = (f"changed: {describe_changes(changes)}" if changes else "no setting differs: a "
          "library update may have changed the layout")
  return ValueError(
      f"{step_path}: its saved {'/'.join(parts)} has another structure than this config builds "
      f"({len(mismatch)} arrays differ, e.g. {mismatch[0]}; {what}). A resume cannot change it "
      "(the checkpoint is intact, nothing was set aside): run with the saved value(s), or start "
      f"a new run from these weights with --workdir NEW --config.restore_from={workdir}")


def is_safe(key: str) -> bool:
  """A key any resume may change (config.RESUME_SAFE_KEYS; "section.*" covers a section)."""
  return any(key == k or (k.endswith(".*") and key.startswith(k[:-1]))
             for k in config_lib.RESUME_SAFE_KEYS)


def optional_changes(changes: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
  """The changes a resume makes only with resume_changes="allow" (not safe, not more epochs)."""
  def more_epochs(k: str, v: tuple[Any, Any]) -> bool:
    return k == "num_epochs" and isinstance(v[0], (int, float)) and v[1] > v[0]
  return {k: v for k, v in changes.items() if not is_safe(k) and not more_epochs(k, v)}


@dataclasses.dataclass(frozen=True)
class Resume:
  saved: Optional[dict]                   # the config the run last ran with; None: a new run
  changes: dict[str, tuple[Any, Any]]     # every key that differs from it


def _exists(path: Union[str, epath.Path]) -> bool:
  return workdir_lib.is_remote(path) or os.path.isdir(os.fspath(path))  # a bucket: not asked


def has_checkpoints(workdir: epath.Path, subdir: str = "checkpoints") -> bool:
  folder = workdir / subdir
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def check(config: ConfigDict, workdir: epath.Path) -> Resume:
  """What this start of `workdir` is: a new run or a resume; raises (one line, before
  anything loads or compiles) for a change no resume may make or one not allowed."""
  if not has_checkpoints(workdir) or not (workdir / CONFIG).exists():
    source = config.get("restore_from")
    if source and not (_exists(source) or (files.is_weights_file(source)
                                           and os.path.isfile(source))):
      raise FileNotFoundError(f"config.restore_from={source} does not exist: give the --workdir "
                              "of a trained run (its best/ or checkpoints/ are read), or a "
                              "torchvision .pth or Keras .h5 / .keras weights file")
    return Resume(None, {})
  saved = json.loads((workdir / CONFIG).read_text())
  changes = config_changes(saved, config)
  never = {k: changes[k] for k in SHAPE_KEYS if k in changes}
  if never:
    raise ValueError(
        f"{workdir} holds a run with a different configuration ({describe_changes(never)}), which "
        "no resume can change. Use a new --workdir, or start a new run from its weights with "
        f"--workdir NEW --config.restore_from={workdir}")
  optional = optional_changes(changes)
  if optional and config.get("resume_changes", "refuse") != "allow":
    raise ValueError(
        f"resuming {workdir} with changed settings ({describe_changes(optional)}): a resume "
        "continues the run as it was configured. Run with the saved values; or continue with "
        f"these, recorded in {HISTORY}, with --config.resume_changes=allow; or start a new run "
        f"with --workdir NEW (--config.restore_from={workdir} for its weights)")
  return Resume(saved, changes)


def _write(path: epath.Path, text: str) -> None:
  """Whole or not at all (a kill mid-write leaves the old file)."""
  tmp = path.parent / f"{path.name}.tmp"
  tmp.write_text(text)
  tmp.replace(path)


def record(workdir: epath.Path, config: ConfigDict, resume: Resume, step: int) -> None:
  """Append this start to config_history.jsonl; config.json becomes this config."""
  new = _as_json(config)
  entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step,
           "resumed": resume.saved is not None,
           "changed": {k: list(v) for k, v in resume.changes.items()}, "config": new}
  history = workdir / HISTORY
  previous = history.read_text() if history.exists() else ""
  if workdir_lib.is_remote(workdir):  # an object store cannot append
    _write(history, previous + json.dumps(entry) + "\n")
  else:
    with open(os.fspath(history), "a") as f:
      f.write(json.dumps(entry) + "\n")
  _write(workdir / CONFIG, json.dumps(new, indent=2))
  if resume.changes:
    log.info("resumed at step %d with changed settings: %s (kept in %s)", step,
             describe_changes(resume.changes), history)


def schedule_note(resume: Resume, config: ConfigDict, learning_rate: Callable[[int], float],
                  make_learning_rate: Callable[[ConfigDict, int], Callable[[int], float]],
                  step: int, steps_per_epoch: int) -> Optional[str]:
  """For a resume with more num_epochs: how the learning-rate schedule moves (a cosine or
  one-cycle schedule is defined over num_epochs, so it is stretched; a constant one is not).
  make_learning_rate(optimizer config, num_epochs): the saved run's schedule (optim.py)."""
  old_epochs, new_epochs = resume.changes.get("num_epochs", (None, None))
  if resume.saved is None or old_epochs is None or new_epochs <= old_epochs:
    return None
  old_lr = make_learning_rate(ConfigDict(resume.saved["optimizer"]), old_epochs)
  # This config's schedule over the old num_epochs: what the epochs alone change.
  shorter = make_learning_rate(config.optimizer, old_epochs)
  old_total, name = old_epochs * steps_per_epoch, config.optimizer.get("schedule", "constant")
  probe = sorted({*np.linspace(0, old_total - 1, 64).astype(int).tolist(), step})
  if all(np.isclose(shorter(t), learning_rate(t), rtol=1e-6, atol=0) for t in probe):
    return (f"num_epochs {old_epochs} -> {new_epochs}: the {name} learning-rate schedule does "
            f"not depend on num_epochs; it goes on as it was (learning rate at step {step}: "
            f"{learning_rate(step):.4g})")
  return (f"num_epochs {old_epochs} -> {new_epochs}: the {name} learning-rate schedule is "
          f"defined over num_epochs and is stretched to {new_epochs} epochs: the learning rate at "
          f"step {step} moves from {old_lr(step):.4g} to {learning_rate(step):.4g} (its end moves "
          f"from step {old_total} to step {new_epochs * steps_per_epoch})")


def save_results(workdir: epath.Path, summary: dict[str, Any]) -> None:
  """The final results, what `finished` prints when the finished run's command runs again
  (a run that cannot store them, e.g. on a full disk, is trained again by that command)."""
  try:
    _write(workdir / RESULTS, json.dumps({k: v for k, v in summary.items() if k != "state"},
                                         indent=2))
  except OSError as e:
    log.error("cannot write %s (%s): the run is done, but running its command again will "
              "evaluate it again", workdir / RESULTS, e.strerror or e)


def finished(workdir: epath.Path, step: int, total_steps: int) -> Optional[dict[str, Any]]:
  """The stored results of a run that already trained all its steps (logged in one line),
  else None: its command run again must not write its test lines twice."""
  path = workdir / RESULTS
  if step < total_steps or not path.exists():
    return None
  stored = json.loads(path.read_text())
  if stored.get("final_step") != step:
    return None
  shown = "; ".join(f"{name} " + " ".join(f"{k} {v:.4f}" for k, v in stored[name].items()
                                          if k not in ("num_examples", "step"))
                    for name in ("test", "test_best") if isinstance(stored.get(name), dict))
  log.info("%s already finished (step %d of %d), nothing was written; its results (%s): %s. "
           "To train longer, raise --config.num_epochs", workdir, step, total_steps, path,
           shown or "no test split")
  return stored
