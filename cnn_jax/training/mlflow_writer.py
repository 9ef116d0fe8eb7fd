"""An MLflow copy of a run's metrics: `config.tracking = "mlflow:URI"`.

URI is any MLflow tracking URI: `sqlite:///W/mlflow.db` (a local database file, no server),
`http://host:5000` (a tracking server), ... Each work directory is one MLflow run, in the
MLflow experiment named after the experiment file (`mnist_cnn:smoke`; "cnn_jax" when the
command named none):
  params  the flattened config ("optimizer.learning_rate" -> "0.001");
  metrics every line of metrics.jsonl, same names ("train/loss", "validation/accuracy"),
          same steps, the line's time as the timestamp;
  tags    cnn_jax.workdir (the absolute path: a resume finds its MLflow run by it),
          cnn_jax.experiment; the run's name is the work directory's folder name.
A resume continues the same MLflow run; steps an interrupted run logged after its last
checkpoint are logged again (MLflow keeps both: it cannot delete points; metrics.jsonl
keeps one). A key a resume changed (resume_changes="allow") keeps its first value as a
param and gets a tag `cnn_jax.changed.<key>` = "old -> new" (MLflow params are immutable).
The run ends FINISHED, KILLED (preempted) or FAILED.

Metrics are sent in batches when the metric writer flushes (each epoch) and at the end.
Tracking is a copy: a write that fails (a locked database, a server down) is logged once
and training goes on; metrics.jsonl stays the record. Only process 0 writes (it owns the
metric writer). MLflow is imported only here, only when tracking is on (it takes seconds).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Optional

from ml_collections import ConfigDict

from cnn_jax import config as config_lib
from cnn_jax.training import run_status

log = logging.getLogger("cnn_jax")
PREFIX = "mlflow:"
WORKDIR_TAG, EXPERIMENT_TAG = "cnn_jax.workdir", "cnn_jax.experiment"
# How status.json's endings read in MLflow (mlflow.entities.RunStatus names).
MLFLOW_STATUS = {"finished": "FINISHED", "preempted": "KILLED", "failed": "FAILED"}
_BATCH, _PARAMS_BATCH, _MAX_VALUE = 1000, 100, 6000  # MLflow's per-request limits


def parse(tracking: str) -> str:
  """The tracking URI of config.tracking, or a one-line error saying what to write."""
  if not isinstance(tracking, str) or not tracking.startswith(PREFIX) or not tracking[len(PREFIX):]:
    raise ValueError(f"config.tracking={tracking!r}: expected 'mlflow:URI', e.g. "
                     "'mlflow:sqlite:///runs/mlflow.db' (a local database, no server) or "
                     "'mlflow:http://host:5000'; '' turns tracking off")
  return tracking[len(PREFIX):]


def _client(uri: str) -> Any:
  try:
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 - seconds; only with tracking on
  except ImportError as e:
    raise RuntimeError(f"config.tracking={PREFIX}{uri} needs MLflow, which is not installed "
                       f"({e}): pip install 'cnn_jax[tracking]' (or set tracking='')") from None
  return MlflowClient(tracking_uri=uri)


def _param_value(v: Any) -> str:
  text = v if isinstance(v, str) else json.dumps(v)
  return text[:_MAX_VALUE]


def _artifacts(uri: str) -> Optional[str]:
  """Where a new experiment's artifacts go: beside a sqlite database (MLflow's default is
  ./mlruns under whatever folder the command ran in); a server's own default otherwise."""
  if not uri.startswith("sqlite:///"):
    return None
  db = os.path.abspath(uri[len("sqlite:///"):])
  return "file://" + os.path.join(os.path.dirname(db), "mlartifacts")


class MLflowWriter:
  """One MLflow run per work directory, fed by the metric writer (process 0)."""

  def __init__(self, tracking: str, workdir: str, config: ConfigDict,
               experiment: Optional[str] = None):
    self.uri = parse(tracking)
    self._client = _client(self.uri)
    from mlflow.entities import Param, RunTag  # noqa: PLC0415 - see _client
    self._pending: list[Any] = []
    self._failing = False
    workdir = os.fspath(workdir)
    workdir = workdir if "://" in workdir else os.path.abspath(workdir)  # gs:// stays a URL
    name = experiment or "cnn_jax"
    found = self._client.get_experiment_by_name(name)
    if found is None:
      try:
        self.experiment_id = self._client.create_experiment(name, _artifacts(self.uri))
      except Exception:  # noqa: BLE001 - another worker of a sweep created it meanwhile
        found = self._client.get_experiment_by_name(name)
        if found is None:
          raise
    if found is not None:
      self.experiment_id = found.experiment_id
    earlier = self._client.search_runs([self.experiment_id],
                                       f"tags.`{WORKDIR_TAG}` = '{workdir}'", max_results=1)
    params = {k: _param_value(v) for k, v in config_lib.flatten(
        json.loads(config.to_json_best_effort())).items()}
    tags = []
    if earlier:
      run = earlier[0]
      self.run_id = run.info.run_id
      self._client.update_run(self.run_id, status="RUNNING")
      tags = [RunTag(f"cnn_jax.changed.{k}", f"{run.data.params[k]} -> {v}"[:_MAX_VALUE])
              for k, v in params.items() if k in run.data.params and run.data.params[k] != v]
      params = {k: v for k, v in params.items() if k not in run.data.params}
      log.info("MLflow: continuing run %s in %s", self.run_id, self.uri)
    else:
      run = self._client.create_run(self.experiment_id, run_name=os.path.basename(workdir),
                                    tags={WORKDIR_TAG: workdir, EXPERIMENT_TAG: name})
      self.run_id = run.info.run_id
      log.info("MLflow: run %s in experiment %r of %s", self.run_id, name, self.uri)
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, max(len(items), len(tags)), _PARAMS_BATCH):
      self._client.log_batch(self.run_id, params=items[i:i + _PARAMS_BATCH],
                             tags=tags[i:i + _PARAMS_BATCH])

  def write(self, step: int, values: dict[str, float], when: float) -> None:
    """Queue one metrics.jsonl line (sent by `flush`)."""
    from mlflow.entities import Metric  # noqa: PLC0415 - see _client
    ms = round(when * 1000)
    self._pending += [Metric(k, v, ms, int(step)) for k, v in values.items()]
    if len(self._pending) >= _BATCH:
      self.flush()

  def flush(self) -> None:
    while self._pending:
      batch = self._pending[:_BATCH]
      try:
        self._client.log_batch(self.run_id, metrics=batch)
      except Exception as e:  # noqa: BLE001 - a copy: metrics.jsonl has the lines
        if not self._failing:
          log.error("MLflow (%s): cannot log metrics (%s: %s); they are kept and sent again "
                    "at the next flush; training goes on", self.uri, type(e).__name__,
                    str(e).splitlines()[0][:300] if str(e) else "")
          self._failing = True
        return
      self._pending = self._pending[len(batch):]
      if self._failing:
        log.warning("MLflow (%s): logging again", self.uri)
        self._failing = False

  def close(self, status: str) -> None:
    """Send what waits and end the run: status is a run_status ending."""
    self.flush()
    try:
      self._client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"),
                                  int(time.time() * 1000))
    except Exception as e:  # noqa: BLE001 - as in flush
      log.error("MLflow (%s): cannot end run %s (%s)", self.uri, self.run_id, e)
    if self._pending:
      log.error("MLflow (%s): %d metric values were not sent (metrics.jsonl has them)",
                self.uri, len(self._pending))


def from_config(config: ConfigDict, workdir: str) -> Optional[MLflowWriter]:
  """The writer config.tracking asks for (None for ''), its MLflow run started."""
  tracking = config.get("tracking") or ""
  if not tracking:
    return None
  return MLflowWriter(tracking, workdir, config, run_status.experiment_name())
