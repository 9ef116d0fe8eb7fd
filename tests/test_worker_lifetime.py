"""A SIGKILLed training process takes its grain worker processes with it.

They used to live on under PID 1 (in 1 of 2 kills: 2 workers of 260 MB and multiprocessing's
resource tracker): a kill while a worker was still starting (spawn re-imports the main
module) came before the worker armed PR_SET_PDEATHSIG, and nothing else watched the parent.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

READER = textwrap.dedent("""
    import time
    import numpy as np
    from cnn_jax.data import input_pipeline
    from cnn_jax.data.split import Split

    if __name__ == "__main__":  # spawn re-imports this file in each worker
      split = Split(np.zeros((64, 8, 8, 1), np.uint8), np.zeros(64, np.int32), 2)
      batches = input_pipeline.train_batches(split, 8, 0, steps_per_epoch=8, num_steps=10**6,
                                             workers=2, prefetch=2)
      for i, _ in enumerate(batches):
        if i == 0:
          print("reading", flush=True)
        time.sleep(0.01)
""")


def session_processes(sid: int) -> dict[int, str]:
  """{pid: command line} of the live processes of session `sid` (from /proc)."""
  out = {}
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      if int(fields[3]) == sid and fields[0] != "Z":
        with open(f"/proc/{name}/cmdline", "rb") as f:
          out[int(name)] = f.read().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, IndexError):  # gone meanwhile
      continue
  return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("when", ["starting", pytest.param("reading", marks=pytest.mark.slow)])
def test_sigkill_leaves_no_grain_worker(tmp_path, when):
  """starting: killed the moment the first worker process exists (it is still importing);
  reading (slow: the old prctl failed there too): killed once batches flow. Two workers:
  with one, the old prctl(PR_SET_PDEATHSIG) sufficed in both cases here (likely because it
  is tied to the thread that started the worker, and grain starts two from pool threads)."""
  script = tmp_path / "reader.py"
  script.write_text(READER)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.getcwd())
  p = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True, start_new_session=True)
  deadline = time.time() + 120
  try:
    if when == "reading":
      assert p.stdout.readline().strip() == "reading"
    else:
      while not any("spawn_main" in c for c in session_processes(p.pid).values()):
        assert p.poll() is None and time.time() < deadline, "no worker process started"
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    deadline = time.time() + 30  # a worker killed while importing exits once its init runs
    while session_processes(p.pid) and time.time() < deadline:
      time.sleep(0.1)
    left = session_processes(p.pid)
    assert not left, f"orphans of the killed process: {left}"
  finally:
    for pid in session_processes(p.pid):  # never leave them to the next test
      os.kill(pid, signal.SIGKILL)
