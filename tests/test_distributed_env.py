"""Tests of the multi-process start-up decision (`cnn_jax.distributed`) and launch scripts.

`plan` is pure: each environment below is a dict. `initialize` is checked with
`jax.distributed.initialize` monkeypatched to record its kwargs, and once for real: two
processes with a faked SLURM step environment join through JAX's own SLURM detection.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_jax import distributed
from cnn_jax.distributed import DistributedConfigError, Plan, plan

ROOT = Path(__file__).resolve().parents[1]


def slurm_step(*, procid=0, ntasks=2, nodes=2, localid=0, **extra):
  """The variables srun sets in a task (as seen with slurm-wlm 22.05, see docs/launch.md)."""
  env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_STEP_ID": "0",
         "SLURM_NTASKS": str(ntasks), "SLURM_STEP_NUM_TASKS": str(ntasks),
         "SLURM_STEP_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes),
         "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid)}
  env.update(extra)
  return env


# ----------------------------------------------------------------------------- plan()

@pytest.mark.parametrize("cfg", [None, {}, {"cluster": "auto"}, {"local_device_ids": "0,1"}])
def test_one_plain_process_is_a_no_op(cfg):
  assert plan(cfg, {}) is None


def test_slurm_step_hands_detection_to_jax():
  # Two tasks on one node: JAX's own choice (one device per task, $SLURM_LOCALID) is right.
  p = plan({}, slurm_step(procid=1, ntasks=2, nodes=1, localid=1))
  assert p == Plan({"initialization_timeout": 300}, {}, "slurm")


def test_slurm_one_task_per_node_keeps_all_local_devices():
  p = plan({}, slurm_step(procid=1, ntasks=2, nodes=2))
  assert p.kwargs == {"initialization_timeout": 300, "local_device_ids": []}


def test_slurm_gpu_bound_by_slurm_is_not_repinned():
  env = slurm_step(procid=3, ntasks=4, nodes=1, localid=3, CUDA_VISIBLE_DEVICES="3")
  assert plan({}, env).kwargs["local_device_ids"] == []
  env["CUDA_VISIBLE_DEVICES"] = "0,1,2,3"  # --gpus-per-node=4, 4 tasks: JAX pins LOCALID
  assert "local_device_ids" not in plan({}, env).kwargs


def test_slurm_batch_shell_and_single_task_are_single_process():
  batch_shell = slurm_step()
  del batch_shell["SLURM_STEP_NODELIST"]  # the sbatch shell is no step: JAX sees no SLURM
  assert plan({}, batch_shell) is None
  assert plan({}, slurm_step(ntasks=1, nodes=1)) is None
  assert plan({"cluster": "slurm"}, slurm_step(ntasks=1, nodes=1)) is None


def test_slurm_config_overrides():
  cfg = {"coordinator_port": 12345, "local_device_ids": "0,1", "initialization_timeout": 60,
         "cluster": "slurm"}
  p = plan(cfg, slurm_step())
  assert p.kwargs == {"initialization_timeout": 60, "local_device_ids": [0, 1]}
  assert p.env == {"JAX_COORDINATOR_PORT": "12345"}
  p = plan({"coordinator_address": "login1:999", "local_device_ids": "all"}, slurm_step())
  assert p.kwargs == {"initialization_timeout": 300, "local_device_ids": [],
                      "coordinator_address": "login1:999"}


def test_slurm_coordinator_port_replaces_the_port_of_the_exported_address():
  env = slurm_step(JAX_COORDINATOR_ADDRESS="node01:61443")  # as launch/slurm.sbatch exports
  assert "coordinator_address" not in plan({}, env).kwargs   # JAX reads the variable itself
  p = plan({"coordinator_port": 7000}, env)
  assert p.kwargs["coordinator_address"] == "node01:7000"


def test_cluster_slurm_outside_an_srun_step_is_a_clear_error():
  with pytest.raises(DistributedConfigError, match="not a task of an srun step.*SLURM_JOB_ID"):
    plan({"cluster": "slurm"}, {})
  batch_shell = slurm_step()
  del batch_shell["SLURM_STEP_NODELIST"]
  with pytest.raises(DistributedConfigError, match="missing SLURM_STEP_NODELIST"):
    plan({"cluster": "slurm"}, batch_shell)


def test_cluster_none_wins_over_everything():
  assert plan({"cluster": "none"}, slurm_step()) is None
  assert plan({"cluster": "none", "num_processes": 2}, {}) is None


@pytest.mark.parametrize("cluster", ["tpu", "jax"])
def test_tpu_and_jax_call_initialize_without_arguments(cluster):
  assert plan({"cluster": cluster}, {}) == Plan({"initialization_timeout": 300}, {}, cluster)
  with pytest.raises(DistributedConfigError, match="num_processes"):
    plan({"cluster": cluster, "num_processes": 2}, {})


def test_tpu_and_open_mpi_are_detected_in_auto_mode():
  assert plan({}, {"TPU_WORKER_HOSTNAMES": "a,b"}).source == "tpu"
  assert plan({}, {}, tpu_present=True).source == "tpu"
  ompi = {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "2"}
  assert plan({}, ompi) == Plan({"initialization_timeout": 300}, {}, "ompi")
  assert plan({}, dict(ompi, OMPI_COMM_WORLD_SIZE="1")) is None


def test_explicit_config_passes_all_three():
  cfg = {"coordinator_address": "10.0.0.1:1234", "num_processes": "2", "process_id": 1}
  assert plan(cfg, {}) == Plan({"initialization_timeout": 300,
                                "coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                                "process_id": 1}, {}, "config")


def test_explicit_config_from_ml_collections():
  from cnn_jax import config as config_lib
  c = config_lib.base_config().distributed
  assert plan(c, {}) is None  # the defaults: one process
  c.coordinator_address, c.num_processes, c.process_id = "h:1", 2, 0
  assert plan(c, {}).kwargs["num_processes"] == 2


def test_coordinator_address_may_come_from_jax_env():
  p = plan({"num_processes": 2, "process_id": 0}, {"JAX_COORDINATOR_ADDRESS": "h:5"})
  assert p.kwargs["coordinator_address"] == "h:5"


def test_explicit_single_process_is_a_no_op():
  assert plan({"num_processes": 1}, {}) is None
  assert plan({"num_processes": 1, "process_id": 0, "coordinator_address": "h:1"}, {}) is None


@pytest.mark.parametrize("cfg,match", [
    ({"cluster": "mpi"}, "expected one of"),
    ({"num_processes": 2, "process_id": 0}, "not coordinator_address"),
    ({"coordinator_address": "h:1", "num_processes": 2}, "not process_id"),
    ({"coordinator_address": "h:1", "process_id": 1}, "not num_processes"),
    ({"num_processes": 2, "process_id": 2, "coordinator_address": "h:1"}, "outside"),
    ({"num_processes": 0}, ">= 1"),
    ({"num_processes": 1, "process_id": 1}, "num_processes=1"),
    ({"coordinator_address": "h", "num_processes": 2, "process_id": 0}, "host:port"),
    ({"coordinator_address": "h:99999", "num_processes": 2, "process_id": 0}, "host:port"),
    ({"num_processes": "two"}, "integer"),
    ({"num_processes": True}, "integer"),
    ({"coordinator_port": 0}, "1..65535"),
    ({"initialization_timeout": 0}, "> 0"),
    ({"local_device_ids": "0,0"}, "distinct"),
    ({"local_device_ids": "0,x"}, "ints"),
    ({"local_device_ids": -1}, "distinct and >= 0"),
])
def test_inconsistent_config_is_a_clear_error(cfg, match):
  with pytest.raises(DistributedConfigError, match=match):
    plan(cfg, {})


# ----------------------------------------------------------------------- initialize()

@pytest.fixture
def fake_jax_initialize(monkeypatch):
  """Record jax.distributed.initialize's kwargs instead of starting a process group."""
  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(distributed, "_tpu_chips_present", lambda: False)
  monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
  return calls


@pytest.mark.parametrize("cfg,environ,expected", [
    ({}, {}, []),
    ({}, slurm_step(ntasks=2, nodes=1), [{"initialization_timeout": 300}]),
    ({}, slurm_step(ntasks=4, nodes=4), [{"initialization_timeout": 300,
                                          "local_device_ids": []}]),
    ({"cluster": "jax", "initialization_timeout": 9}, {}, [{"initialization_timeout": 9}]),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}, {},
     [{"initialization_timeout": 300, "coordinator_address": "h:1", "num_processes": 2,
       "process_id": 1}]),
])
def test_initialize_calls_jax_with(fake_jax_initialize, capsys, cfg, environ, expected):
  p = distributed.initialize(cfg, environ=environ)
  assert fake_jax_initialize == expected
  assert (p.kwargs if p else None) == (expected[0] if expected else None)
  if expected:
    assert "cnn_jax.distributed: process 0 of 1" in capsys.readouterr().err


def test_initialize_sets_the_coordinator_port_for_jax(fake_jax_initialize, monkeypatch):
  distributed.initialize({"coordinator_port": 6000}, environ=slurm_step())
  assert os.environ["JAX_COORDINATOR_PORT"] == "6000"  # the fixture's monkeypatch restores


def test_initialize_is_idempotent(fake_jax_initialize, monkeypatch):
  import jax
  p = distributed.initialize({"cluster": "jax"}, environ={})
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  assert distributed.initialize({"cluster": "jax"}, environ={}) is p
  assert len(fake_jax_initialize) == 1


def test_initialize_after_backend_start_is_jaxs_clear_error():
  import jax
  jax.devices()  # the backend is up: too late for jax.distributed.initialize
  cfg = {"coordinator_address": "127.0.0.1:1", "num_processes": 2, "process_id": 1}
  with pytest.raises(RuntimeError, match="must be called before"):
    distributed.initialize(cfg, environ={})


SLURM_WORKER = r"""
import sys, jax
from cnn_jax import distributed
p = distributed.initialize({"coordinator_port": int(sys.argv[1])})
print("RESULT", jax.process_index(), jax.process_count(), jax.device_count(),
      jax.config.values["jax_cuda_visible_devices"], p.source, p.kwargs, flush=True)
"""


def test_jax_detects_a_faked_slurm_step_with_our_overrides(tmp_path):
  # Real JAX, no SLURM: the srun variables of a 2-node, 1-task-per-node step on localhost.
  # Checks JAX's own SLURM detection, the coordinator_port override and that
  # local_device_ids=[] leaves every device visible (jax_cuda_visible_devices stays "all").
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  base = {k: v for k, v in os.environ.items()
          if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_LOCAL"))}
  base.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  procs = [subprocess.Popen(
      [sys.executable, "-c", SLURM_WORKER, str(port)],
      env={**base, **slurm_step(procid=i, ntasks=2, nodes=2, localid=0,
                                SLURM_STEP_NODELIST="localhost")},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("faked SLURM step did not initialise in 120 s")
    assert p.returncode == 0, err[-2000:]
    outs.append(out.split("RESULT ", 1)[1].split())
  assert [o[:5] for o in outs] == [["0", "2", "2", "all", "slurm"],
                                   ["1", "2", "2", "all", "slurm"]]


# ---------------------------------------------------------------------- launch scripts

SCRIPTS = ["launch/local.sh", "launch/slurm.sbatch", "launch/tpu_vm.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_launch_scripts_parse_and_are_executable(script):
  path = ROOT / script
  assert path.exists(), script
  assert os.access(path, os.X_OK), f"{script} is not executable"
  subprocess.run(["bash", "-n", str(path)], check=True)


def test_sbatch_has_signal_requeue_and_append():
  text = (ROOT / "launch/slurm.sbatch").read_text()
  directives = [l.split(None, 1)[1].strip() for l in text.splitlines()
                if l.startswith("#SBATCH")]
  assert any(d.startswith("--signal=B:USR1@") for d in directives), directives
  assert "--requeue" in directives
  assert "--open-mode=append" in directives
  assert any(d.startswith("--nodes=") for d in directives)
  assert any(d.startswith("--gpus-per-node=") for d in directives)
  assert "trap" in text and "scontrol requeue" in text and "srun" in text


def test_local_sh_passes_arguments_through(tmp_path):
  env = dict(os.environ, CNN_JAX="echo")
  out = subprocess.run([str(ROOT / "launch/local.sh"), "experiments/x.py", str(tmp_path),
                        "--config.num_epochs=2", "--config.model=a b"],
                       env=env, check=True, capture_output=True, text=True).stdout
  assert out.strip() == (f"train --config experiments/x.py --workdir {tmp_path} "
                         "--config.num_epochs=2 --config.model=a b")


FAKE_TRAINER = r"""
import signal, sys, time
def on_signal(signum, frame):
  print(f"trainer: got signal {signum}, checkpoint saved", flush=True)
  sys.exit(128 + signum)  # as cnn-jax train does after a preemption checkpoint
signal.signal(signal.SIGUSR1, on_signal)
signal.signal(signal.SIGTERM, on_signal)
print("trainer: args " + " ".join(sys.argv[1:]), flush=True)
print("trainer: ready", flush=True)
time.sleep(float(sys.argv[1]) if sys.argv[1:2] and sys.argv[1] != "train" else 60)
print("trainer: finished", flush=True)
"""


def _fake_slurm(tmp_path):
  """A PATH with `srun` (runs the command in place) and `scontrol` (logs its args)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  # Like slurmstepd, the fake srun signals every process of the task (its process group).
  (bin_dir / "srun").write_text(
      '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
      'setsid "$@" & pid=$!\n'
      'trap \'kill -USR1 -- -$pid\' USR1\ntrap \'kill -TERM -- -$pid\' TERM\n'
      'while :; do wait $pid; rc=$?; kill -0 $pid 2>/dev/null || break; done\nexit $rc\n')
  (bin_dir / "scontrol").write_text(
      f'#!/usr/bin/env bash\necho "$@" >> {tmp_path}/scontrol.log\n')
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  trainer = tmp_path / "trainer.py"
  trainer.write_text(FAKE_TRAINER)
  import sys
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="777",
             SLURM_RESTART_COUNT="0", CNN_JAX=f"{sys.executable} {trainer}")
  return env


def test_sbatch_usr1_forwards_checkpoints_and_requeues(tmp_path):
  import signal
  env = _fake_slurm(tmp_path)
  proc = subprocess.Popen(["bash", str(ROOT / "launch/slurm.sbatch"), "experiments/x.py",
                           str(tmp_path / "wd"), "--config.a=1"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  lines = []
  try:
    for line in proc.stdout:
      lines.append(line)
      if "trainer: ready" in line:
        proc.send_signal(signal.SIGUSR1)   # what Slurm does 120 s before the limit
        break
    out, _ = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  out = "".join(lines) + out
  assert proc.returncode == 0, out
  assert "trainer: args train --config experiments/x.py" in out
  assert "--config.a=1" in out
  assert "got signal 10" in out and "trainer: finished" not in out, out
  # The task wrapper tells srun "not a failure" (else --kill-on-bad-exit kills the others).
  assert "rank ?: trainer checkpointed on a signal (exit 138)" in out, out
  assert "srun exited with status 0" in out, out
  assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "777"]


def test_sbatch_without_signal_does_not_requeue(tmp_path):
  env = _fake_slurm(tmp_path)
  env["CNN_JAX"] += " 0.1"   # the fake trainer finishes after 0.1 s
  out = subprocess.run(["bash", str(ROOT / "launch/slurm.sbatch"), "e.py", str(tmp_path / "wd")],
                       env=env, capture_output=True, text=True, timeout=30)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "trainer: finished" in out.stdout
  assert not (tmp_path / "scontrol.log").exists()
