"""Mutation testing of one cnn_jax module with cosmic-ray, in a private copy of the tree.

    python benchmarks/mutation.py cnn_jax/layers/pooling.py
    python benchmarks/mutation.py cnn_jax/layers/conv.py --tests tests/test_layers.py -k conv
    python benchmarks/mutation.py cnn_jax/layers/conv.py --recheck   # only the last survivors

Each mutant is one small edit of the module (an operator, a comparison, a number, a
boolean ...); it is *killed* when the module's tests fail on it (a timeout counts as
killed, and is reported apart), and *survives* when they pass. score = killed / mutants.

Why cosmic-ray and not mutmut 3: mutmut 3 does not mutate decorated functions (every
flax `@nn.compact __call__`, the `@_register` augmentation builders) and runs each mutant
in a fork of a process that has started XLA's thread pools. cosmic-ray edits the file
and runs the test command in a fresh subprocess per mutant. It edits the file *in
place*, so this script copies the tree (tracked and untracked-but-not-ignored files) to
a private directory, runs there with PYTHONPATH pointing at the copy, and checks that
`import cnn_jax` resolves to the copy before the first mutant: the checkout's own
sources are never touched.

The operator set is mutmut's, one replacement per operator (cosmic-ray's default also
swaps every arithmetic operator for every other, ten times the mutants for the same
information): see KEEP_OPERATORS. Tests run with `-x` (a killed mutant stops at the
first failure), one process, one XLA thread.

Writes benchmarks/results/mutation/<module path with _>.json (module, tool and version,
counts, score, every survivor with its line and diff) and prints a one-line summary.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "mutation"

# Module -> the pytest arguments of the smallest, fastest set of tests that covers it.
# Test files listed first run first (with -x, cheap exact tests should come first). -k
# matches a test's module name too: "test_layers_mutants or ..." keeps that whole file.
DEFAULT_TESTS: dict[str, list[str]] = {
    "cnn_jax/layers/conv.py": [
        "tests/test_layers_mutants.py", "tests/test_layers.py", "-k",
        "test_layers_mutants or conv or padding or sharpen or x_kernel or edge or shape_error"],
    "cnn_jax/layers/pooling.py": [
        "tests/test_layers_mutants.py", "tests/test_layers.py", "-k",
        "test_layers_mutants or pool or flatten"],
    "cnn_jax/layers/activations.py": [
        "tests/test_layers_mutants.py", "tests/test_layers.py", "-k",
        "test_layers_mutants or activation or maxout"],
    "cnn_jax/layers/norm.py": [
        "tests/test_layers_mutants.py", "tests/test_layers.py", "-k",
        "test_layers_mutants or local_response or dropout or batch_norm"],
    # The tests of test_augment.py that check image functions exactly.
    "cnn_jax/data/image_ops.py": [
        "tests/test_augment_mutants.py", "tests/test_augment.py", "-k",
        "test_augment_mutants or pad_crop_reaches or test_flips or translate_is or rotate_by "
        "or scale_zooms or color_adjustments or cutout or mixup or cutmix or pad_normalize"],
    # ... and those that check the ops' parsing, draws and preprocessing (not training).
    "cnn_jax/data/augment.py": [
        "tests/test_augment_mutants.py", "tests/test_augment.py", "-k",
        "test_augment_mutants or not (every_op or soft_cross or train_step or training_with "
        "or color_adjustments)"],
    # Detection and training: the exact checks of tests/test_*_mutants.py first, then the
    # module's own cheap test files (no training runs).
    "cnn_jax/detection/mean_ap.py": [
        "tests/test_detection_mutants.py::test_pairwise_iou_by_hand_in_normalized_coordinates",
        "tests/test_detection_mutants.py::test_mean_ap_class_range_and_classes_without_ground_truth",
        "tests/test_detection_mutants.py::test_coco_threshold_one_and_thresholds_from_arange",
        "tests/test_detection_mutants.py::test_coco_keeps_the_100_best_detections_per_image_and_class",
        "tests/test_mean_ap.py"],
    "cnn_jax/detection/nms.py": [
        "tests/test_detection_mutants.py::test_nms_reference_iou_messages_and_edge_outputs",
        "tests/test_detection_mutants.py::test_nms_argument_boundaries",
        "tests/test_detection_mutants.py::test_nms_default_candidates_and_thresholds",
        "tests/test_nms.py"],
    "cnn_jax/detection/localization.py": ["tests/test_detection_mutants.py", "-k", "localiz"],
    "cnn_jax/detection/localization_task.py": ["tests/test_detection_mutants.py", "-k", "localiz"],
    "cnn_jax/detection/yolo_v2.py": [
        "tests/test_detection_mutants.py", "tests/test_yolo_v2.py", "-k", "yolo and not overfit"],
    "cnn_jax/training/losses.py": [
        "tests/test_training_mutants.py::test_losses_by_hand_on_a_batch",
        "tests/test_training.py::test_cross_entropy_and_topk_by_hand",
        "tests/test_training_mutants.py"],
    "cnn_jax/training/steps.py": [
        "tests/test_training_mutants.py", "tests/test_fused_allreduce.py",
        "tests/test_training.py::test_aux_logits_train_with_weight_0_3"],
    "cnn_jax/training/optim.py": [
        "tests/test_training_mutants.py::test_accumulation_and_nonfinite_defaults_by_hand",
        "tests/test_training_mutants.py::test_schedule_checks_and_keys_by_hand",
        "tests/test_training_mutants.py::test_optimizer_wrappers_by_hand",
        "tests/test_training_mutants.py::test_optimizer_updates_by_hand_at_default_settings",
        "tests/test_schedules.py", "tests/test_training.py::test_schedules_by_value",
        "tests/test_training.py::test_sgd_weight_decay_is_l2_on_kernels_only",
        "tests/test_training.py::test_accumulation_schedule_counts_updates_not_micro_steps",
        "tests/test_training.py::test_every_optimizer_reduces_a_quadratic"],
    # In-process checks of save / restore / set aside / load (test_faults.py trains and
    # kills runs: minutes per mutant).
    "cnn_jax/checkpoint.py": ["tests/test_checkpoint_mutants.py"],
}

# One replacement per operator, as mutmut: a + b -> a - b, a < b -> a <= b, n -> n +/- 1,
# True <-> False, and <-> or, `not` added to / removed from conditions, a for loop that
# runs zero times, break <-> continue, an exception type in an `except` replaced.
KEEP_OPERATORS = frozenset("core/" + name for name in [
    "ReplaceBinaryOperator_Add_Sub", "ReplaceBinaryOperator_Sub_Add",
    "ReplaceBinaryOperator_Mul_Div", "ReplaceBinaryOperator_Div_Mul",
    "ReplaceBinaryOperator_FloorDiv_Div", "ReplaceBinaryOperator_Mod_FloorDiv",
    "ReplaceBinaryOperator_Pow_Mul", "ReplaceBinaryOperator_BitAnd_BitOr",
    "ReplaceBinaryOperator_BitOr_BitAnd",
    "ReplaceComparisonOperator_Eq_NotEq", "ReplaceComparisonOperator_NotEq_Eq",
    "ReplaceComparisonOperator_Lt_LtE", "ReplaceComparisonOperator_LtE_Lt",
    "ReplaceComparisonOperator_Gt_GtE", "ReplaceComparisonOperator_GtE_Gt",
    "ReplaceComparisonOperator_Is_IsNot", "ReplaceComparisonOperator_IsNot_Is",
    "ReplaceUnaryOperator_USub_UAdd", "ReplaceUnaryOperator_Delete_Not", "AddNot",
    "ReplaceTrueWithFalse", "ReplaceFalseWithTrue", "ReplaceAndWithOr", "ReplaceOrWithAnd",
    "ReplaceBreakWithContinue", "ReplaceContinueWithBreak", "NumberReplacer",
    "ZeroIterationForLoop", "ExceptionReplacer",
])


def result_path(module: str, out_dir: Path) -> Path:
  """benchmarks/results/mutation/layers_pooling.json for cnn_jax/layers/pooling.py."""
  rel = Path(module).with_suffix("").relative_to("cnn_jax")
  return out_dir / ("_".join(rel.parts) + ".json")


def copy_tree(dest: Path) -> None:
  """Copy the checkout's tracked and untracked-but-not-ignored files to `dest`."""
  files = subprocess.run(
      ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
      check=True, capture_output=True).stdout.decode().split("\0")
  for rel in filter(None, files):
    src = REPO / rel
    if src.is_file():
      (dest / rel).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, dest / rel)


def copy_env(copy: Path) -> dict[str, str]:
  """The environment of the test runs: the copy first on sys.path, one XLA thread."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy), env.get("PYTHONPATH")]))
  env["XLA_FLAGS"] = " ".join(filter(None, [
      env.get("XLA_FLAGS"), "--xla_cpu_multi_thread_eigen=false",
      "intra_op_parallelism_threads=1"]))
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONDONTWRITEBYTECODE"] = "1"
  return env


def check_imports_copy(copy: Path, module: str, env: dict[str, str]) -> None:
  """Refuse to run unless `import cnn_jax...` in the test processes loads the copy."""
  dotted = ".".join(Path(module).with_suffix("").parts)
  where = subprocess.run(
      [sys.executable, "-c", f"import {dotted} as m; print(m.__file__)"], cwd=copy, env=env,
      check=True, capture_output=True, text=True).stdout.strip()
  if Path(where).resolve() != (copy / module).resolve():
    raise SystemExit(f"mutation: `import {dotted}` loads {where}, not the copy in {copy}; "
                     "mutants would not be tested (check PYTHONPATH / editable installs)")


def test_command(tests: list[str]) -> str:
  """One pytest process, stopping at the first failure; pyproject's addopts (2 xdist workers)
  cleared, slow and slurm tests left out unless named in `tests`' -m."""
  return shlex.join([sys.executable, "-m", "pytest", "-x", "-q", "-o", "addopts=",
                     "-p", "no:xdist", "-p", "no:randomly", "-p", "no:cacheprovider",
                     "-m", "not slow and not slurm", *tests])


def run_baseline(copy: Path, command: str, env: dict[str, str]) -> float:
  """Run the tests once unmutated: they must pass; returns their wall time."""
  start = time.perf_counter()
  proc = subprocess.run(shlex.split(command), cwd=copy, env=env, capture_output=True, text=True)
  elapsed = time.perf_counter() - start
  if proc.returncode != 0:
    raise SystemExit(f"mutation: the tests fail on the unmutated code ({command}):\n"
                     f"{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
  return elapsed


def write_config(path: Path, module: str, command: str, timeout: float) -> None:
  path.write_text(
      "[cosmic-ray]\n"
      f"module-path = {json.dumps(module)}\n"
      f"timeout = {timeout:.0f}\n"
      "excluded-modules = []\n"
      f"test-command = {json.dumps(command)}\n\n"
      "[cosmic-ray.distributor]\nname = \"local\"\n")


def _key(mutation) -> str:
  return f"{mutation.operator_name}#{mutation.occurrence}"


def skip_work(session: Path, recheck: set[str] | None, sample: int = 1) -> int:
  """Mark as skipped the operators outside KEEP_OPERATORS, mutants on lines marked
  `# pragma: no mutate`, with `recheck` every mutant not among the earlier survivors, and
  with `sample` > 1 all but every sample-th of the rest. Returns the number left to run."""
  from cosmic_ray.work_db import WorkDB, use_db
  from cosmic_ray.work_item import WorkerOutcome, WorkResult
  left = kept = 0
  with use_db(str(session), WorkDB.Mode.open) as db:
    for item in list(db.pending_work_items):
      (mutation,) = item.mutations
      line = Path(mutation.module_path).read_text().splitlines()[mutation.start_pos[0] - 1]
      if mutation.operator_name not in KEEP_OPERATORS:
        why = "operator not in KEEP_OPERATORS"
      elif "pragma: no mutate" in line:
        why = "pragma: no mutate"
      elif recheck is not None and _key(mutation) not in recheck:
        why = "killed in the earlier run"
      elif (kept := kept + 1) % sample != 1 % sample:
        why = f"not in the sample (every {sample}th mutant)"
      else:
        left += 1
        continue
      db.set_result(item.job_id, WorkResult(output=why, worker_outcome=WorkerOutcome.SKIPPED))
  return left


def collect(session: Path) -> tuple[list[dict], list[dict]]:
  """(results, skipped) of a finished session, one dict per mutant."""
  from cosmic_ray.work_db import WorkDB, use_db
  results, skipped = [], []
  with use_db(str(session), WorkDB.Mode.open) as db:
    for item, result in db.completed_work_items:
      (mutation,) = item.mutations
      entry = {"key": _key(mutation), "operator": mutation.operator_name,
               "occurrence": mutation.occurrence, "line": mutation.start_pos[0],
               "definition": mutation.definition_name}
      if result.worker_outcome == "skipped":
        entry["why"] = result.output
        skipped.append(entry)
        continue
      entry["outcome"] = ("timeout" if result.output == "timeout" else
                          "survived" if result.test_outcome == "survived" else
                          "killed" if result.test_outcome == "killed" else
                          f"error ({result.worker_outcome}/{result.test_outcome})")
      entry["diff"] = "\n".join(result.diff.splitlines()[2:]) if result.diff else ""
      results.append(entry)
  return results, skipped


def _descendants(pid: int) -> list[int]:
  """Child processes of `pid`, recursively (from /proc: Linux)."""
  children: dict[int, list[int]] = {}
  for stat in Path("/proc").glob("[0-9]*/stat"):
    with contextlib.suppress(OSError, ValueError, IndexError):
      fields = stat.read_text().rsplit(")", 1)[1].split()
      children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
  out, todo = [], [pid]
  while todo:
    for child in children.get(todo.pop(), []):
      out.append(child)
      todo.append(child)
  return out


def count_pending(session: Path) -> int:
  from cosmic_ray.work_db import WorkDB, use_db
  with use_db(str(session), WorkDB.Mode.open) as db:
    return sum(1 for _ in db.pending_work_items)


def run(module: str, tests: list[str], out_dir: Path, recheck: bool, workdir: Path | None,
        keep: bool, timeout: float | None, sample: int = 1,
        max_seconds: float | None = None) -> dict:
  """Mutation-test `module` with `tests` in a private copy; returns the summary written."""
  import cosmic_ray
  module = str(Path(module))
  source = (REPO / module).read_text()
  sha = hashlib.sha256(source.encode()).hexdigest()
  out_path = result_path(module, out_dir)
  previous = None
  if recheck:
    previous = json.loads(out_path.read_text())
    if previous["source_sha256"] != sha:
      raise SystemExit(f"mutation: {module} changed since {out_path}; --recheck needs the same "
                       "source (mutant numbers would differ): run without --recheck")
  copy = Path(tempfile.mkdtemp(prefix="cnn_jax_mutation_", dir=workdir))
  try:
    copy_tree(copy)
    env = copy_env(copy)
    check_imports_copy(copy, module, env)
    command = test_command(tests)
    baseline = run_baseline(copy, command, env)
    limit = timeout or max(60.0, 3.0 * baseline)
    write_config(copy / "cosmic-ray.toml", module, command, limit)
    session = copy / "session.sqlite"
    cr = [sys.executable, "-m", "cosmic_ray.cli"]
    subprocess.run(cr + ["init", "cosmic-ray.toml", session.name], cwd=copy, env=env, check=True)
    keys = None if previous is None else {s["key"] for s in previous["survivors"]}
    saved_cwd = os.getcwd()
    os.chdir(copy)  # module paths in the session are relative to the copy
    try:
      to_run = skip_work(session, keys, sample)
    finally:
      os.chdir(saved_cwd)
    print(f"mutation: {module}: {to_run} mutants to run, tests take {baseline:.0f} s "
          f"(timeout {limit:.0f} s)", flush=True)
    start = time.perf_counter()
    complete = True
    proc = subprocess.Popen(cr + ["exec", "cosmic-ray.toml", session.name], cwd=copy, env=env)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("mutation: terminated"))
    try:
      if proc.wait(timeout=max_seconds):
        raise SystemExit(f"mutation: cosmic-ray exec failed with exit code {proc.returncode}")
    except subprocess.TimeoutExpired:  # --max-seconds: keep what finished, say it is partial
      complete = False
    finally:  # stopped, or interrupted: no test run left behind (each has a session of its own)
      if proc.poll() is None:
        for pid in [proc.pid, *_descendants(proc.pid)]:
          with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        proc.wait()
        (copy / module).write_text(source)  # the mutant under test when it was stopped
    elapsed = time.perf_counter() - start
    os.chdir(copy)
    try:
      results, skipped = collect(session)
      not_run = count_pending(session)  # left when --max-seconds stopped the run
    finally:
      os.chdir(saved_cwd)
    if (copy / module).read_text() != source:
      raise SystemExit(f"mutation: {copy / module} was left mutated; results not trusted")
  finally:
    if not keep:
      shutil.rmtree(copy, ignore_errors=True)
    else:
      print(f"mutation: kept the copy in {copy}")

  counts = {k: sum(r["outcome"] == k for r in results) for k in ("killed", "survived", "timeout")}
  errors = [r for r in results if r["outcome"].startswith("error")]
  killed_before = 0
  if previous is not None:  # mutants killed in the earlier run stay killed: tests only grow
    killed_before = previous["mutants"] - previous["survived"]
  mutants = len(results) + killed_before
  killed = counts["killed"] + counts["timeout"] + killed_before + len(errors)
  survivors = [{k: r[k] for k in ("key", "line", "definition", "operator", "diff")}
               for r in results if r["outcome"] == "survived"]
  summary = {
      "module": module,
      "tool": f"cosmic-ray {cosmic_ray.__version__}" if hasattr(cosmic_ray, "__version__")
              else "cosmic-ray " + _version("cosmic-ray"),
      "operators": sorted(KEEP_OPERATORS),
      "tests": tests,
      "command": shlex.join(["python", "benchmarks/mutation.py", module] + (
          [] if tests == DEFAULT_TESTS.get(module) else ["--tests", *tests])),
      "source_sha256": sha,
      "mutants": mutants,
      "killed": killed,
      "survived": len(survivors),
      "timeouts": counts["timeout"] + (previous["timeouts"] if previous else 0),
      "score": round(killed / mutants, 4) if mutants else None,
      "survivors": survivors,
      "rechecked_survivors_of_earlier_run": previous is not None,
      "complete": complete and not not_run,
      "not_run": not_run,
      "sampled_every": sample,
      "not_in_sample": sum(s["why"].startswith("not in the sample") for s in skipped
                           if s["why"]),
      **run_facts(skipped, baseline, limit, elapsed),
  }
  write_summary(summary, out_path)
  partial = "" if summary["complete"] else f" PARTIAL (stopped after {max_seconds:.0f} s)"
  score = "no mutant finished" if summary["score"] is None else f"{summary['score']:.1%}"
  sampled = f", every {sample}th mutant" if sample > 1 else ""
  print(f"mutation: {module}{sampled}{partial}: {score} ({killed}/{mutants} killed, "
        f"{len(survivors)} survived, {summary['timeouts']} timeouts) in {elapsed:.0f} s -> "
        f"{out_path.relative_to(REPO) if out_path.is_relative_to(REPO) else out_path}")
  return summary


def run_facts(skipped: list[dict], baseline: float, timeout: float, elapsed: float) -> dict:
  """What every result JSON says of how its run went (both runners write this format)."""
  return {
      "skipped_by_operator_set": sum(s["why"] == "operator not in KEEP_OPERATORS"
                                     for s in skipped),
      "skipped_by_pragma": sum(s["why"] == "pragma: no mutate" for s in skipped),
      "tests_seconds_unmutated": round(baseline, 1),
      "timeout_seconds": round(timeout),
      "run_seconds": round(elapsed),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python "
                 f"{platform.python_version()}",
  }


def write_summary(summary: dict, out_path: Path) -> None:
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_text(json.dumps(summary, indent=1) + "\n")


def _version(dist: str) -> str:
  from importlib.metadata import version
  return version(dist)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("module", help="e.g. cnn_jax/layers/pooling.py")
  parser.add_argument("--tests", nargs=argparse.REMAINDER,
                      help="pytest arguments (default: the module's entry in DEFAULT_TESTS); "
                           "must come last")
  parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
  parser.add_argument("--recheck", action="store_true",
                      help="run only the survivors recorded in the module's JSON (after adding "
                           "tests; the module's source must be unchanged)")
  parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 3x the "
                      "unmutated tests' time, at least 60)")
  parser.add_argument("--workdir", type=Path, help="where the private copy goes (default: "
                      "the system temp dir)")
  parser.add_argument("--keep", action="store_true", help="keep the private copy")
  parser.add_argument("--sample", type=int, default=1, help="run every Nth mutant only "
                      "(a partial measurement; the JSON says so)")
  parser.add_argument("--max-seconds", type=float, help="stop after this long and record the "
                      "mutants finished so far (the JSON says complete: false)")
  args = parser.parse_args(argv)
  module = str(Path(args.module))
  if not (REPO / module).is_file() or not module.startswith("cnn_jax/"):
    parser.error(f"{args.module!r} is not a module of the package: give a path such as "
                 "cnn_jax/layers/pooling.py, relative to the repository root")
  tests = args.tests or DEFAULT_TESTS.get(module)
  if not tests:
    parser.error(f"no default tests for {module}: pass --tests tests/test_x.py ... "
                 f"(modules with defaults: {', '.join(sorted(DEFAULT_TESTS))})")
  try:
    import cosmic_ray  # noqa: F401
  except ImportError:
    parser.error("cosmic-ray is not installed: pip install -e '.[mutation]'")
  if args.sample < 1:
    parser.error(f"--sample must be >= 1, got {args.sample}")
  run(module, tests, args.out.resolve(), args.recheck, args.workdir, args.keep, args.timeout,
      args.sample, args.max_seconds)


if __name__ == "__main__":
  main()
