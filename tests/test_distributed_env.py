"""Pure-Python tests of the multi-process start-up decision (no JAX process group)."""
import os
import subprocess
from pathlib import Path

import pytest

from cnn_jax.distributed import (DistributedArgs, DistributedConfigError, expand_hostlist,
                                 expand_tasks_per_node, resolve_distributed_env,
                                 slurm_default_port)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ hostlists

@pytest.mark.parametrize("spec,hosts", [
    ("node01", ["node01"]),
    ("node01,node02", ["node01", "node02"]),
    ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
    ("node[001-003]", ["node001", "node002", "node003"]),
    ("node[8-10]", ["node8", "node9", "node10"]),
    ("node[08-10]", ["node08", "node09", "node10"]),
    ("n[1,3]", ["n1", "n3"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("gpu-a100-[1-2]-ib", ["gpu-a100-1-ib", "gpu-a100-2-ib"]),
    ("a[1-2],b,c[5]", ["a1", "a2", "b", "c5"]),
    ("my-host.example.org", ["my-host.example.org"]),
    ("", []),
])
def test_expand_hostlist(spec, hosts):
  assert expand_hostlist(spec) == hosts


@pytest.mark.parametrize("bad", ["node[01-03", "node01-03]", "node[3-1]", "node[a-b]",
                                 "node[[1]]", "node[1,,2]"])
def test_expand_hostlist_rejects_malformed(bad):
  with pytest.raises(ValueError):
    expand_hostlist(bad)


@pytest.mark.parametrize("spec,counts", [
    ("4", [4]), ("4(x2)", [4, 4]), ("2(x3),1", [2, 2, 2, 1]), ("1,3", [1, 3])])
def test_expand_tasks_per_node(spec, counts):
  assert expand_tasks_per_node(spec) == counts


def test_slurm_default_port_matches_jax_rule():
  # jax._src.clusters.slurm_cluster: jobid % 2**12 + (65535 - 2**12 + 1)
  assert slurm_default_port("0") == 61440
  assert slurm_default_port("4097") == 61441
  assert 61440 <= slurm_default_port("987654321") <= 65535


# ---------------------------------------------------------------------------------- SLURM

def slurm_env(*, procid, ntasks, localid, nodeid=0, nodelist="node[01-02]",
              tasks_per_node=None, job_id="4242", **extra):
  env = {"SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": nodelist,
         "SLURM_STEP_NODELIST": nodelist, "SLURM_STEP_ID": "0",
         "SLURM_NTASKS": str(ntasks), "SLURM_STEP_NUM_TASKS": str(ntasks),
         "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid),
         "SLURM_NODEID": str(nodeid)}
  if tasks_per_node is not None:
    env["SLURM_STEP_TASKS_PER_NODE"] = tasks_per_node
    env["SLURM_TASKS_PER_NODE"] = tasks_per_node
  env.update(extra)
  return env


def test_slurm_one_task_per_node_uses_all_local_gpus():
  env = slurm_env(procid=1, ntasks=2, localid=0, nodeid=1, tasks_per_node="1(x2)")
  args = resolve_distributed_env({}, env)
  assert args == DistributedArgs(coordinator_address=f"node01:{slurm_default_port('4242')}",
                                 num_processes=2, process_id=1, local_device_ids=None,
                                 source="slurm")
  kw = args.kwargs()
  assert kw["cluster_detection_method"] == "deactivate"
  assert kw["local_device_ids"] is None


def test_slurm_one_task_per_gpu_pins_the_local_id():
  # 2 nodes x 4 GPUs, --ntasks-per-node=4: task 6 is the 3rd task on the 2nd node.
  env = slurm_env(procid=6, ntasks=8, localid=2, nodeid=1, tasks_per_node="4(x2)",
                  nodelist="gpu[07-08]")
  args = resolve_distributed_env(None, env)
  assert args.coordinator_address.startswith("gpu07:")
  assert (args.num_processes, args.process_id, args.local_device_ids) == (8, 6, (2,))


def test_slurm_ranks_are_consistent_across_tasks():
  addrs = set()
  for procid in range(8):
    env = slurm_env(procid=procid, ntasks=8, localid=procid % 4, nodeid=procid // 4,
                    tasks_per_node="4(x2)", nodelist="rack[1-2]-n[01-02]")
    args = resolve_distributed_env({}, env)
    addrs.add(args.coordinator_address)
    assert args.process_id == procid and args.local_device_ids == (procid % 4,)
  assert addrs == {f"rack1-n01:{slurm_default_port('4242')}"}


def test_slurm_gpu_already_bound_by_slurm_is_not_repinned():
  env = slurm_env(procid=3, ntasks=4, localid=3, tasks_per_node="4",
                  CUDA_VISIBLE_DEVICES="3")
  assert resolve_distributed_env({}, env).local_device_ids is None


def test_slurm_step_nodelist_wins_over_job_nodelist():
  env = slurm_env(procid=0, ntasks=2, localid=0, tasks_per_node="1(x2)")
  env["SLURM_JOB_NODELIST"] = "big[01-10]"
  env["SLURM_STEP_NODELIST"] = "big[05-06]"
  assert resolve_distributed_env({}, env).coordinator_address.startswith("big05:")


def test_slurm_port_from_config_then_env():
  env = slurm_env(procid=0, ntasks=2, localid=0, tasks_per_node="1(x2)")
  assert resolve_distributed_env({"coordinator_port": 12355},
                                 env).coordinator_address == "node01:12355"
  env["JAX_COORDINATOR_PORT"] = "23456"
  assert resolve_distributed_env({}, env).coordinator_address == "node01:23456"


def test_slurm_explicit_config_values_win():
  env = slurm_env(procid=1, ntasks=2, localid=1, tasks_per_node="2")
  args = resolve_distributed_env(
      {"coordinator_address": "10.0.0.1:1234", "local_device_ids": "all"}, env)
  assert args.coordinator_address == "10.0.0.1:1234"
  assert (args.num_processes, args.process_id, args.local_device_ids) == (2, 1, None)
  assert args.source == "config+slurm"
  args = resolve_distributed_env({"local_device_ids": [0, 1]}, env)
  assert args.local_device_ids == (0, 1)


def test_slurm_single_task_or_batch_shell_is_single_process():
  assert resolve_distributed_env({}, slurm_env(procid=0, ntasks=1, localid=0)) is None
  # The batch shell itself (no srun step): never try to rendezvous with 8 processes.
  batch = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "n[1-2]",
           "SLURM_TASKS_PER_NODE": "4(x2)"}
  assert resolve_distributed_env({}, batch) is None
  with pytest.raises(DistributedConfigError, match="srun"):
    resolve_distributed_env({"cluster": "slurm"}, batch)


def test_cluster_none_disables_everything():
  env = slurm_env(procid=1, ntasks=2, localid=0, tasks_per_node="1(x2)")
  assert resolve_distributed_env({"cluster": "none"}, env) is None
  assert resolve_distributed_env({"num_processes": 1}, env) is None


# -------------------------------------------------------------------------------- TPU etc

@pytest.mark.parametrize("marker", ["TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                                    "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID"])
def test_tpu_env_hands_over_to_jax_autodetect(marker):
  args = resolve_distributed_env({}, {marker: "t1v-n-0,t1v-n-1"})
  assert args.auto_detect and args.source == "tpu"
  assert args.kwargs() == {"initialization_timeout": 300}  # i.e. initialize() with no args


def test_tpu_vm_without_env_markers_and_forced_tpu():
  assert resolve_distributed_env({}, {}, on_tpu_vm=True).auto_detect
  assert resolve_distributed_env({"cluster": "tpu"}, {}).auto_detect
  assert resolve_distributed_env({"cluster": "jax"}, {}).auto_detect
  with pytest.raises(DistributedConfigError, match="detect everything"):
    resolve_distributed_env({"cluster": "tpu", "num_processes": 4}, {})


def test_open_mpi_hands_over_to_jax():
  assert resolve_distributed_env({}, {"OMPI_COMM_WORLD_SIZE": "4"}).source == "ompi"
  assert resolve_distributed_env({}, {"OMPI_COMM_WORLD_SIZE": "1"}) is None


def test_nothing_set_is_single_process():
  assert resolve_distributed_env({}, {}) is None
  assert resolve_distributed_env(None, {"HOME": "/root"}) is None


# ------------------------------------------------------------------------ explicit config

def test_explicit_config():
  cfg = {"coordinator_address": "127.0.0.1:5555", "num_processes": 2, "process_id": 1,
         "local_device_ids": "0,1", "initialization_timeout": 60}
  args = resolve_distributed_env(cfg, {})
  assert args == DistributedArgs("127.0.0.1:5555", 2, 1, (0, 1), source="config",
                                 initialization_timeout=60)
  assert args.kwargs() == {"coordinator_address": "127.0.0.1:5555", "num_processes": 2,
                           "process_id": 1, "local_device_ids": [0, 1],
                           "cluster_detection_method": "deactivate",
                           "initialization_timeout": 60}


def test_explicit_config_from_ml_collections():
  ml_collections = pytest.importorskip("ml_collections")
  cfg = ml_collections.ConfigDict({"coordinator_address": "h:1", "num_processes": 3,
                                   "process_id": 2, "local_device_ids": None,
                                   "cluster": "auto"})
  args = resolve_distributed_env(cfg, {})
  assert (args.coordinator_address, args.num_processes, args.process_id) == ("h:1", 3, 2)


def test_plain_env_variables():
  env = {"JAX_COORDINATOR_ADDRESS": "10.1.1.1:7777", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "3"}
  args = resolve_distributed_env({}, env)
  assert (args.coordinator_address, args.num_processes, args.process_id,
          args.source) == ("10.1.1.1:7777", 4, 3, "env")
  # config beats env, field by field
  args = resolve_distributed_env({"process_id": 0}, env)
  assert args.process_id == 0 and args.source == "config+env"


def test_explicit_single_process_is_none():
  assert resolve_distributed_env({"num_processes": 1}, {}) is None
  assert resolve_distributed_env({"num_processes": 1, "process_id": 0}, {}) is None


@pytest.mark.parametrize("cfg,match", [
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, "outside"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": -1}, "outside"),
    ({"num_processes": 2, "process_id": 0}, "coordinator_address"),
    ({"coordinator_address": "h:1", "num_processes": 2}, "process_id"),
    ({"coordinator_address": "h:1", "process_id": 0}, "num_processes is not set"),
    ({"coordinator_address": "h", "num_processes": 2, "process_id": 0}, "host:port"),
    ({"coordinator_address": "h:99999", "num_processes": 2, "process_id": 0}, "host:port"),
    ({"num_processes": 0, "coordinator_address": "h:1", "process_id": 0}, ">= 1"),
    ({"num_processes": 1, "process_id": 3}, "num_processes=1"),
    ({"num_processes": "two"}, "integer"),
    ({"cluster": "k8s"}, "expected one of"),
    ({"initialization_timeout": 0}, "> 0"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 0,
      "local_device_ids": [0, 0]}, "distinct"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 0,
      "local_device_ids": "0,x"}, "ints"),
])
def test_inconsistent_config_is_a_clear_error(cfg, match):
  with pytest.raises(DistributedConfigError, match=match):
    resolve_distributed_env(cfg, {})


def test_bad_env_integer_is_a_clear_error():
  with pytest.raises(DistributedConfigError, match="SLURM_PROCID"):
    resolve_distributed_env({}, slurm_env(procid="x", ntasks=2, localid=0))


# ------------------------------------------------------------------------ launch scripts

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
  sys.exit(0)
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
  (bin_dir / "srun").write_text(
      '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
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
  assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "777"]


def test_sbatch_without_signal_does_not_requeue(tmp_path):
  env = _fake_slurm(tmp_path)
  env["CNN_JAX"] += " 0.1"   # the fake trainer finishes after 0.1 s
  out = subprocess.run(["bash", str(ROOT / "launch/slurm.sbatch"), "e.py", str(tmp_path / "wd")],
                       env=env, capture_output=True, text=True, timeout=30)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "trainer: finished" in out.stdout
  assert not (tmp_path / "scontrol.log").exists()


# ---------------------------------------------------------------------- initialize() itself

def test_initialize_single_process_is_a_no_op():
  from cnn_jax import distributed
  assert distributed.initialize({}, environ={}) is None
  assert distributed.initialize({"cluster": "none"}, environ={"SLURM_JOB_ID": "1"}) is None
  assert distributed.is_main_process()


def test_initialize_after_backend_start_is_a_clear_error():
  import jax
  from cnn_jax import distributed
  jax.devices()  # the backend is up: too late for jax.distributed.initialize
  cfg = {"coordinator_address": "127.0.0.1:1", "num_processes": 2, "process_id": 1}
  with pytest.raises(RuntimeError, match="before any JAX computation"):
    distributed.initialize(cfg, environ={})
