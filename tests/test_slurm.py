"""launch/slurm.sbatch under a real SLURM (one node, 2 tasks, CPU): start-up, preemption, requeue.

  bash launch/slurm_local_cluster.sh && pytest -m slurm tests/test_slurm.py -s

Two jobs of the same two-process `cnn-jax train` on tfds' dummy_mnist (prepared here, so
nothing outside the test is needed):

* "resumed": once training runs, `scancel --signal=USR1 --batch` does what
  `#SBATCH --signal=B:USR1@120` does before the time limit. The batch shell forwards it to
  srun, both trainers checkpoint and exit, the script runs `scontrol requeue`; the second
  attempt (same job id) resumes from the workdir and finishes;
* "reference": the same command, never interrupted.

Both must end with bit-identical parameters and the same final evaluation.
The sweep test: launch/sweep.sbatch as a 2-task job array of `cnn-jax sweep` workers
sharing one study; a task stopped mid-trial loses no trial (docs/sweeps.md). Takes about
2-4 minutes on 2 CPU cores; the jobs run one after the other (each takes both CPUs).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnn_jax.training import workdir as workdir_lib

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
# 4 steps an epoch (train[:90%] = 18 examples, 2 per process per step): long enough
# (~20 s of training) to signal mid-run.
EPOCHS = 40
TRAIN_FLAGS = ["--config.dataset.name=dummy_mnist", "--config.batch_size=4",
               "--config.eval_batch_size=8", f"--config.num_epochs={EPOCHS}",
               "--config.progress_bar=False",  # asynchronous checkpoints, as users run
               "--config.log_every_steps=5", "--config.checkpoint_every_steps=10"]
# One node with 2 CPUs: override the GPU-cluster defaults of the script's #SBATCH lines.
SBATCH_FLAGS = ["--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1",
                "--gpus-per-node=0", "--time=10"]
JOB_TIMEOUT_S = 400


def _cluster_ready() -> str:
  """Why the test cannot run here, or "" when a SLURM node is idle."""
  if not shutil.which("sbatch"):
    return "sbatch not found: run `bash launch/slurm_local_cluster.sh` (root) first"
  try:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                         timeout=20)
  except subprocess.TimeoutExpired:
    return "sinfo timed out: slurmctld is not answering"
  if out.returncode != 0 or not {"idle", "mixed", "allocated", "completing"} & set(out.stdout.split()):
    return f"no usable SLURM node (sinfo: {out.stdout.strip() or out.stderr.strip()})"
  return ""


def _job(job_id: str) -> dict[str, str]:
  out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                       text=True, timeout=30).stdout
  return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def _submit(workdir: Path, log: Path, data_dir: Path, env: dict) -> str:
  cmd = ["sbatch", "--parsable", *SBATCH_FLAGS, f"--output={log}",
         str(ROOT / "launch/slurm.sbatch"), "experiments/mnist_cnn.py:smoke", str(workdir),
         f"--config.dataset.data_dir={data_dir}", *TRAIN_FLAGS]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  return out.stdout.strip().split(";")[0]


def _wait_for(pred, what: str, timeout: float = JOB_TIMEOUT_S, every: float = 1.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    got = pred()
    if got:
      return got
    time.sleep(every)
  pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _final_json(log_text: str) -> dict:
  """The last JSON result the trainer printed (one per process; they must agree)."""
  blocks = re.findall(r"^\{\n.*?^\}", log_text, flags=re.S | re.M)
  assert len(blocks) >= 2, log_text[-3000:]
  a, b = json.loads(blocks[-1]), json.loads(blocks[-2])
  assert a["test"] == b["test"] and a["validation"] == b["validation"]
  assert a["final_step"] == b["final_step"]
  return a


def _params(workdir: Path) -> dict[str, np.ndarray]:
  import jax
  from cnn_jax import inference
  _, variables, _ = inference.load(str(workdir), "latest")
  return {"/".join(str(k) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(variables)[0]}


def _excerpt(text: str) -> str:
  keep = ("job ", "coordinator", "SIGUSR1", "checkpointed on a signal", "CANCELLED", "srun exited", "requeue", "cnn_jax.distributed: process",
          "resumed", "received SIGUSR1", "epoch 1:", f"epoch {EPOCHS}:", '"final_step"')
  return "\n".join(l for l in text.splitlines() if any(k in l for k in keep))


@pytest.fixture(scope="module")
def env_and_data(tmp_path_factory):
  why = _cluster_ready()
  if why:
    pytest.skip(why)
  import tensorflow_datasets as tfds
  data_dir = tmp_path_factory.mktemp("data")
  tfds.testing.DummyMnist(data_dir=str(data_dir),
                          file_format="array_record").download_and_prepare()
  # sbatch exports this environment to the job (--export=ALL): same venv and checkout.
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_LOCAL"))}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
             CNN_JAX=f"{sys.executable} -m cnn_jax.cli")
  return env, data_dir


def test_sbatch_two_tasks_preempt_requeue_resume_matches_uninterrupted(env_and_data,
                                                                       tmp_path):
  env, data_dir = env_and_data
  t0 = time.monotonic()
  res_log, ref_log = tmp_path / "resumed.out", tmp_path / "reference.out"
  res_id = _submit(tmp_path / "resumed", res_log, data_dir, env)
  ref_id = _submit(tmp_path / "reference", ref_log, data_dir, env)

  # Signal once both processes train (past the first checkpoint, far from the end).
  def training() -> bool:
    text = res_log.read_text() if res_log.exists() else ""
    return "epoch 3:" in text
  _wait_for(training, f"job {res_id} to train 3 epochs", every=0.2)
  t_signal = time.monotonic() - t0
  subprocess.run(["scancel", "--signal=USR1", "--batch", res_id], check=True, timeout=30)

  # Slurm makes a requeued job eligible only ~2 minutes later; start it at once instead.
  def requeued() -> bool:
    return (f"requeueing job {res_id}" in res_log.read_text()
            and _job(res_id).get("JobState") == "PENDING")
  _wait_for(requeued, f"job {res_id} to be requeued", timeout=120, every=0.5)
  subprocess.run(["scontrol", "update", f"JobId={res_id}", "StartTime=now"], check=True,
                 timeout=30)

  def done(job_id):
    def check():
      info = _job(job_id)
      return info if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED",
                                              "TIMEOUT", "NODE_FAIL") else None
    return check
  res_info = _wait_for(done(res_id), f"job {res_id} to finish")
  ref_info = _wait_for(done(ref_id), f"job {ref_id} to finish")
  elapsed = time.monotonic() - t0
  res_text, ref_text = res_log.read_text(), ref_log.read_text()
  print(f"\n=== reference job {ref_id}: {ref_info.get('JobState')} "
        f"restarts={ref_info.get('Restarts')} RunTime={ref_info.get('RunTime')}\n"
        f"{_excerpt(ref_text)}\n"
        f"=== resumed job {res_id}: {res_info.get('JobState')} "
        f"restarts={res_info.get('Restarts')} RunTime={res_info.get('RunTime')} "
        f"(SIGUSR1 sent {t_signal:.1f} s after submission)\n{_excerpt(res_text)}")

  for job_id, info, text in ((ref_id, ref_info, ref_text), (res_id, res_info, res_text)):
    assert info["JobState"] == "COMPLETED", f"job {job_id}: {info}\n{text[-4000:]}"
    # Both tasks joined one jax.distributed group through JAX's own SLURM detection.
    assert "cnn_jax.distributed: process 0 of 2 (slurm)" in text, text[-4000:]
    assert "cnn_jax.distributed: process 1 of 2 (slurm)" in text, text[-4000:]
    assert re.search(r"coordinator \S+:\d+", text), text[-4000:]  # exported by the script
  assert ref_info["Restarts"] == "0" and "attempt 2" not in ref_text
  # The interrupted job: signal forwarded, checkpoint saved, requeued, same job id resumed.
  assert res_info["Restarts"] == "1", res_info
  assert "SIGUSR1: time limit near" in res_text
  assert res_text.count("received SIGUSR1: saved a checkpoint at step") == 2, res_text[-4000:]
  # Both ranks exit on their own after the checkpoint: none is killed by --kill-on-bad-exit.
  assert res_text.count("trainer checkpointed on a signal (exit 138)") == 2, res_text[-4000:]
  # The requeue itself ends the batch script ("CANCELLED ... DUE TO JOB REQUEUE" when
  # slurmstepd is quicker than the script's own exit); any other cancellation is a failure.
  cancelled = [l for l in res_text.splitlines()
               if "CANCELLED" in l and "DUE TO JOB REQUEUE" not in l]
  assert not cancelled and "srun exited with status 0" in res_text, cancelled
  stopped_at = int(re.search(r"saved a checkpoint at step (\d+)", res_text).group(1))
  assert 0 < stopped_at < 4 * EPOCHS
  assert f"requeueing job {res_id}" in res_text and f"job {res_id} attempt 2" in res_text
  assert re.search(rf"resumed from step {stopped_at}\b", res_text), res_text[-4000:]

  # Same result as the uninterrupted run: final evaluation and bit-identical parameters.
  res_final, ref_final = _final_json(res_text), _final_json(ref_text)
  assert res_final["final_step"] == ref_final["final_step"] == 4 * EPOCHS
  assert res_final["test"] == ref_final["test"]
  assert res_final["validation"] == ref_final["validation"]
  res_params, ref_params = _params(tmp_path / "resumed"), _params(tmp_path / "reference")
  assert res_params.keys() == ref_params.keys()
  different = [k for k in ref_params if not np.array_equal(res_params[k], ref_params[k])]
  assert not different, different
  print(f"=== stopped at step {stopped_at}, resumed to step {res_final['final_step']}; "
        f"final test {res_final['test']} identical; {len(ref_params)} parameter arrays "
        f"bit-identical; {elapsed:.0f} s in all")


# --- launch/sweep.sbatch: a job array of sweep workers ------------------------------------

SWEEP_EPOCHS = 20
SWEEP_FLAGS = ["--space", "optimizer.learning_rate=loguniform(1e-3,1e-1)", "--trials", "3",
               "--seed", "0", "--heartbeat", "1", "--pruner", "none",
               "--config.dataset.name=dummy_mnist", "--config.batch_size=4",
               "--config.eval_batch_size=8", f"--config.num_epochs={SWEEP_EPOCHS}",
               "--config.progress_bar=False", "--config.log_every_steps=4",
               "--config.checkpoint_every_steps=8", "--config.tensorboard_samples=0"]


def _array_states(job_id: str) -> dict[str, str]:
  """{array task id: JobState} of an array job."""
  out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                       text=True, timeout=30).stdout
  states = {}
  for line in out.splitlines():
    info = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    if "ArrayTaskId" in info:
      states[info["ArrayTaskId"]] = info.get("JobState", "?")
  return states


def _sweep_trials(workdir: Path):
  import optuna
  url = f"sqlite:///{workdir}/study.db"
  if not (workdir / "study.db").exists():
    return []
  try:
    return optuna.load_study(study_name="sweep", storage=url).get_trials()
  except KeyError:  # the study is being created
    return []


@pytest.mark.parametrize("kill", ["scancel", "sigkill"])
def test_sweep_array_two_tasks_share_a_study_killed_task_loses_no_trial(env_and_data,
                                                                        tmp_path, kill):
  """sbatch --array=0-1 launch/sweep.sbatch: two workers of one study (3 trials). Once both
  train, task 1's worker is stopped: `scancel JOB_1` (SIGTERM: its trainer checkpoints and
  the worker puts its trial back in the queue) or SIGKILL to the worker process (no
  checkpoint, no word to the database: task 0 sees the trial's process gone). Task 0 runs
  the trial's parameters again, resuming from its last checkpoint, and the third trial.
  Each parameter set ends COMPLETE exactly once."""
  from optuna.trial import TrialState
  env, data_dir = env_and_data
  workdir = tmp_path / "W"
  cmd = ["sbatch", "--parsable", "--array=0-1", "--ntasks=1", "--cpus-per-task=1",
         "--gpus-per-task=0", "--time=15", f"--output={tmp_path}/sweep-%a.out",
         str(ROOT / "launch/sweep.sbatch"), "experiments/mnist_cnn.py:smoke", str(workdir),
         *SWEEP_FLAGS, f"--config.dataset.data_dir={data_dir}"]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  job_id = out.stdout.strip().split(";")[0]
  t0 = time.monotonic()

  def logs() -> str:
    return "\n".join(f"=== task {i}\n" + (tmp_path / f"sweep-{i}.out").read_text()[-3000:]
                     for i in (0, 1) if (tmp_path / f"sweep-{i}.out").exists())

  def both_training():
    running = [t for t in _sweep_trials(workdir) if t.state == TrialState.RUNNING]
    if len(running) < 2:
      return None
    dirs = [Path(t.user_attrs.get("workdir", "/nonexistent")) for t in running]
    ready = all((d / "metrics.jsonl").exists() and
                (d / "metrics.jsonl").read_text().count("validation/accuracy") >= 2 and
                any(p.name.isdigit() for p in (d / "checkpoints").glob("*")) for d in dirs)
    return running if ready else None
  running = _wait_for(both_training, f"both tasks of {job_id} to train ({logs()})", every=0.5)
  task1 = [t for t in running if _in_job(t.user_attrs["worker"]["pid"], f"{job_id}_1", job_id)]
  assert len(task1) == 1, [t.user_attrs["worker"] for t in running]
  if kill == "scancel":
    subprocess.run(["scancel", f"{job_id}_1"], check=True, timeout=30)
  else:
    os.kill(task1[0].user_attrs["worker"]["pid"], signal.SIGKILL)
  dead = _wait_for(lambda: [t for t in running if not workdir_lib.process_alive(t.user_attrs["worker"]["pid"])],
                   "the killed task's worker to be gone", timeout=60)
  assert [t.number for t in dead] == [task1[0].number]
  killed = dead[0]
  killed_dir = Path(killed.user_attrs["workdir"])
  committed = sorted(int(p.name) for p in (killed_dir / "checkpoints").glob("*")
                     if p.name.isdigit())

  def finished():
    states = _array_states(job_id)
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    return states if len(states) == 2 and all(s in final for s in states.values()) else None
  states = _wait_for(finished, f"array job {job_id} to finish")
  text = logs()
  print(f"\n=== sweep array {job_id}: {states} in {time.monotonic() - t0:.0f} s; killed task 1 "
        f"ran trial {killed.number} (checkpoints {committed})\n{text}")
  assert states["0"] == "COMPLETED", text
  assert states["1"] != "COMPLETED", text

  trials = _sweep_trials(workdir)
  complete = [t for t in trials if t.state == TrialState.COMPLETE]
  params = [tuple(sorted(t.params.items())) for t in complete]
  assert len(complete) == 3 and len(set(params)) == 3, [(t.number, t.state, t.params)
                                                       for t in trials]
  assert trials[killed.number].state == TrialState.FAIL
  copy = [t for t in complete if t.system_attrs.get("failed_trial") == killed.number]
  assert len(copy) == 1 and copy[0].params == killed.params
  assert copy[0].user_attrs["workdir"] == str(killed_dir)
  history = [json.loads(l) for l in (killed_dir / "config_history.jsonl").read_text().splitlines()]
  assert [h["resumed"] for h in history] == [False, True]
  assert history[1]["step"] in committed  # a checkpoint committed before the kill
  # the surviving task took the trial over, and ended the sweep
  pids = {t.user_attrs["worker"]["pid"] for t in complete}
  assert killed.user_attrs["worker"]["pid"] not in pids
  assert "best: trial" in (tmp_path / "sweep-0.out").read_text()


def _in_job(pid: int, *job_ids: str) -> bool:
  """Whether the process belongs to the job (its SLURM_JOB_ID / array id in its environment)."""
  with open(f"/proc/{pid}/environ", "rb") as f:
    env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
  task = f"{env.get(b'SLURM_ARRAY_JOB_ID', b'').decode()}_{env.get(b'SLURM_ARRAY_TASK_ID', b'').decode()}"
  return task in job_ids
