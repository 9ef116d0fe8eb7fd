"""benchmarks/mutation.py's mutants, tested in long-lived pytest workers (no restart per mutant).

    python benchmarks/mutation_fast.py cnn_jax/detection/nms.py --tests tests/test_nms.py
    python benchmarks/mutation_fast.py cnn_jax/detection/nms.py --recheck --tests tests/test_nms.py

mutation.py starts one pytest process per mutant: importing jax, flax and the suite's
conftest costs 3-4 s of CPU each time, more than the tests of a numeric module take, so
300 mutants cost 20 CPU minutes of imports alone. This runner creates the same mutants (the
same cosmic-ray session, operator set and `operator#occurrence` keys, in the same kind of
private copy of the tree) and runs each one inside a worker process that imported
everything once:

* the mutated file is re-executed into the module object (`importlib.reload`), and every
  function or class of the old version that another loaded cnn_jax module or test module
  imported by name is replaced by the new one; the test modules are imported afresh;
* the tests run with `pytest.main` (-x, one process); exit code 0 = survived, anything
  else = killed;
* a mutant that runs longer than the timeout kills its worker (counted as killed, as in
  mutation.py) and a fresh worker takes the next one;
* every `--canary` mutants a worker re-runs the *unmutated* module: if the tests fail
  there, state leaked from a mutant and the run stops, results untrusted.

A reference to the old code this patching cannot reach (a registry, a closure in another
module) would let a mutant look like a survivor, never like a kill, so the score can only
be underestimated; the JSON it writes has mutation.py's format, so
`mutation.py --recheck` re-runs the survivors one subprocess each, as mutation.py would.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io
import json
import multiprocessing as mp
import os
import queue
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mutation  # noqa: E402  (benchmarks/mutation.py: the copy, operators, JSON format)

REPO = mutation.REPO


def _patch_references(module, old: dict) -> None:
  """Point every loaded cnn_jax / test module's by-name import of an old function or class
  of `module` at its re-executed version."""
  new = vars(module)
  by_id = {id(v): k for k, v in old.items()
           if callable(v) and getattr(v, "__module__", None) == module.__name__
           and k in new and new[k] is not v}
  if not by_id:
    return
  for name, m in list(sys.modules.items()):
    if m is None or m is module or not (name.startswith("cnn_jax") or name.startswith("test")):
      continue
    for k, v in list(vars(m).items()):
      key = by_id.get(id(v))
      if key is not None and old[key] is v:
        setattr(m, k, new[key])


def _run_tests(dotted: str, pytest_args: list[str]) -> int:
  """Reload the (possibly mutated) module, re-import the test modules, run pytest."""
  import pytest
  module = sys.modules[dotted]
  old = dict(vars(module))
  try:
    importlib.reload(module)
  except Exception:  # noqa: BLE001 - the mutant breaks the import: the tests would fail
    return 2
  _patch_references(module, old)
  for name in [n for n, m in sys.modules.items()
               if m is not None and str(getattr(m, "__file__", "") or "").startswith(
                   str(Path.cwd() / "tests"))]:
    del sys.modules[name]
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    return int(pytest.main(["-x", "-q", "-n", "0", "-p", "no:randomly", "-p", "no:cacheprovider",
                            *pytest_args]))


def _worker(copy: str, module: str, pytest_args: list[str], canary: int, jobs, results) -> None:
  """Loop: (job_id, operator, occurrence) -> (job_id, outcome, diff)."""
  sys.path.insert(0, copy)
  os.chdir(copy)
  import cosmic_ray.plugins
  from cosmic_ray import mutating
  dotted = ".".join(Path(module).with_suffix("").parts)
  mod = importlib.import_module(dotted)
  if Path(mod.__file__).resolve() != (Path(copy) / module).resolve():
    results.put(("fatal", f"import {dotted} loads {mod.__file__}, not the copy", ""))
    return
  done = 0
  while True:
    job = jobs.get()
    if job is None:
      return
    job_id, operator_name, occurrence = job
    if done and canary and done % canary == 0 and _run_tests(dotted, pytest_args) != 0:
      results.put(("fatal", "the unmutated module failed its tests after "
                   f"{done} mutants in this worker: state leaked between mutants", ""))
      return
    operator = cosmic_ray.plugins.get_operator(operator_name)()
    with mutating.use_mutation(Path(module), operator, occurrence) as (original, mutated):
      if mutated is None:
        results.put((job_id, "no-test", ""))
        continue
      code = _run_tests(dotted, pytest_args)
    done += 1
    diff = "\n".join(mutating._make_diff(original, mutated, module))
    results.put((job_id, "survived" if code == 0 else "killed", diff))


def run(module: str, tests: list[str], out_dir: Path, workdir: Path | None, timeout: float | None,
        canary: int, recycle: int, recheck: bool = False,
        max_seconds: float | None = None) -> dict:
  """Mutation-test `module`; writes and returns mutation.py's summary format. `recheck`:
  only the survivors of the module's last JSON (as mutation.py --recheck)."""
  from cosmic_ray.work_db import WorkDB, use_db
  from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult
  source = (REPO / module).read_text()
  sha = hashlib.sha256(source.encode()).hexdigest()
  out_path = mutation.result_path(module, out_dir)
  previous = None
  if recheck:
    previous = json.loads(out_path.read_text())
    if previous["source_sha256"] != sha:
      raise SystemExit(f"mutation_fast: {module} changed since {out_path}; --recheck needs the "
                       "same source (mutant numbers would differ): run without --recheck")
  copy = Path(tempfile.mkdtemp(prefix="cnn_jax_mutation_fast_", dir=workdir))
  saved_cwd, saved_env = os.getcwd(), dict(os.environ)
  try:
    mutation.copy_tree(copy)
    env = mutation.copy_env(copy)
    mutation.check_imports_copy(copy, module, env)
    command = mutation.test_command(tests)
    start = time.perf_counter()
    baseline_code = _baseline(copy, module, tests, env)
    baseline = time.perf_counter() - start
    if baseline_code != 0:
      raise SystemExit(f"mutation_fast: the tests fail on the unmutated code ({command})")
    timeout = timeout or max(60.0, 3.0 * baseline)  # as mutation.py: a timeout is a kill
    mutation.write_config(copy / "cosmic-ray.toml", module, command, timeout)
    session = copy / "session.sqlite"
    import subprocess
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "init", "cosmic-ray.toml",
                    session.name], cwd=copy, env=env, check=True)
    os.chdir(copy)
    to_run = mutation.skip_work(
        session, None if previous is None else {v["key"] for v in previous["survivors"]})
    with use_db(str(session), WorkDB.Mode.open) as db:
      pending = [(item.job_id, item.mutations[0].operator_name, item.mutations[0].occurrence)
                 for item in db.pending_work_items]
    print(f"mutation_fast: {module}: {to_run} mutants, tests take {baseline:.0f} s in a "
          f"fresh process (timeout {timeout:.0f} s per mutant)", flush=True)
    os.environ.clear()
    os.environ.update(env)  # inherited by the spawned workers
    ctx = mp.get_context("spawn")
    start = time.perf_counter()
    outcomes: dict[str, tuple[str, str]] = {}
    jobs_left = list(pending)
    deadline = start + max_seconds if max_seconds else float("inf")
    stopped = False
    while jobs_left and not stopped:
      jobs, results = ctx.Queue(), ctx.Queue()
      batch, jobs_left = jobs_left[:recycle], jobs_left[recycle:]
      for job in batch:
        jobs.put(job)
      jobs.put(None)
      proc = ctx.Process(target=_worker, args=(str(copy), module, tests, canary, jobs, results))
      proc.start()
      for i, job in enumerate(batch):
        # The first result of a worker also waits for its imports.
        wait = timeout + (120 if i == 0 else 0)
        try:
          job_id, outcome, diff = results.get(
              timeout=max(1.0, min(wait, deadline - time.perf_counter())))
        except queue.Empty:
          proc.kill()
          proc.join()
          (copy / module).write_text(source)  # killed inside its mutation: put it back
          if time.perf_counter() >= deadline:  # --max-seconds: record what finished
            stopped = True
            print(f"mutation_fast: stopped after {max_seconds:.0f} s (--max-seconds), "
                  f"{len(outcomes)}/{len(pending)} mutants run", flush=True)
            break
          outcomes[job[0]] = ("timeout", "")
          jobs_left = batch[i + 1:] + jobs_left
          print(f"mutation_fast: {job[1]}#{job[2]} timed out", flush=True)
          break
        if job_id == "fatal":
          proc.kill()
          raise SystemExit(f"mutation_fast: {outcome}")
        outcomes[job_id] = (outcome, diff)
        if len(outcomes) % 10 == 0:
          print(f"mutation_fast: {len(outcomes)}/{len(pending)} done, "
                f"{sum(o == 'survived' for o, _ in outcomes.values())} survived, "
                f"{time.perf_counter() - start:.0f} s", flush=True)
      else:
        proc.join(timeout=60)
        if proc.is_alive():
          proc.kill()
    elapsed = time.perf_counter() - start
    with use_db(str(session), WorkDB.Mode.open) as db:
      for job_id, (outcome, diff) in outcomes.items():
        if outcome == "no-test":
          db.set_result(job_id, WorkResult(worker_outcome=WorkerOutcome.NO_TEST))
        elif outcome == "timeout":
          db.set_result(job_id, WorkResult(worker_outcome=WorkerOutcome.NORMAL, output="timeout",
                                           test_outcome=TestOutcome.KILLED))
        else:
          db.set_result(job_id, WorkResult(
              worker_outcome=WorkerOutcome.NORMAL, diff=diff,
              test_outcome=TestOutcome.SURVIVED if outcome == "survived" else TestOutcome.KILLED))
    results_list, skipped = mutation.collect(session)
    if (copy / module).read_text() != source:
      raise SystemExit(f"mutation_fast: {copy / module} was left mutated; results not trusted")
  finally:
    os.chdir(saved_cwd)
    os.environ.clear()
    os.environ.update(saved_env)
    shutil.rmtree(copy, ignore_errors=True)

  results_list = [r for r in results_list if r["outcome"] in ("killed", "survived", "timeout")]
  survivors = [{k: r[k] for k in ("key", "line", "definition", "operator", "diff")}
               for r in results_list if r["outcome"] == "survived"]
  killed_before = 0 if previous is None else previous["mutants"] - previous["survived"]
  mutants = len(results_list) + killed_before  # killed before: tests were only added
  killed = mutants - len(survivors)
  summary = {
      "module": module,
      "tool": "cosmic-ray " + mutation._version("cosmic-ray") + " mutants, in-process runner "
              "(benchmarks/mutation_fast.py)",
      "operators": sorted(mutation.KEEP_OPERATORS),
      "tests": tests,
      "command": shlex.join(["python", "benchmarks/mutation_fast.py", module, "--tests", *tests]),
      "source_sha256": sha,
      "mutants": mutants,
      "killed": killed,
      "survived": len(survivors),
      "timeouts": sum(r["outcome"] == "timeout" for r in results_list) + (
          previous["timeouts"] if previous else 0),
      "score": round(killed / mutants, 4) if mutants else None,
      "survivors": survivors,
      "rechecked_survivors_of_earlier_run": previous is not None,
      # A recheck runs only the earlier survivors: an earlier partial run stays partial.
      "complete": not stopped and (previous or {}).get("complete", True),
      "not_run": len(pending) - len(outcomes) + (previous or {}).get("not_run", 0),
      **mutation.run_facts(skipped, baseline, timeout, elapsed),
  }
  mutation.write_summary(summary, out_path)
  print(f"mutation_fast: {module}: {summary['score']:.1%} ({killed}/{mutants} killed, "
        f"{len(survivors)} survived, {summary['timeouts']} timeouts) in {elapsed:.0f} s -> "
        f"{out_path}")
  for s in survivors:
    print(f"  line {s['line']} {s['key']}: " + " | ".join(
        ln for ln in s["diff"].splitlines() if ln[:1] in "+-" and ln[:3] not in ("---", "+++")))
  return summary


def _baseline(copy: Path, module: str, tests: list[str], env: dict[str, str]) -> int:
  """The tests once, unmutated, in a fresh process (as mutation.py does)."""
  import subprocess
  return subprocess.run(shlex.split(mutation.test_command(tests)), cwd=copy, env=env,
                        capture_output=True).returncode


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("module", help="e.g. cnn_jax/detection/nms.py")
  parser.add_argument("--tests", nargs=argparse.REMAINDER,
                      help="pytest arguments (default: mutation.py's DEFAULT_TESTS); last")
  parser.add_argument("--out", type=Path, default=mutation.DEFAULT_OUT)
  parser.add_argument("--workdir", type=Path)
  parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 3x the "
                      "unmutated tests' time in a fresh process, at least 60)")
  parser.add_argument("--canary", type=int, default=25,
                      help="re-run the unmutated module every N mutants in a worker (0: never)")
  parser.add_argument("--recheck", action="store_true",
                      help="run only the survivors recorded in the module's JSON (after adding "
                           "tests; the module's source must be unchanged)")
  parser.add_argument("--max-seconds", type=float, help="stop after this long and record "
                      "the mutants that finished (complete: false in the JSON)")
  parser.add_argument("--recycle", type=int, default=60,
                      help="mutants per worker process before a fresh one starts")
  args = parser.parse_args(argv)
  module = str(Path(args.module))
  tests = args.tests or mutation.DEFAULT_TESTS.get(module)
  if not tests:
    parser.error(f"no default tests for {module}: pass --tests tests/test_x.py ...")
  run(module, tests, args.out.resolve(), args.workdir, args.timeout, args.canary, args.recycle,
      args.recheck, args.max_seconds)


if __name__ == "__main__":
  main()
