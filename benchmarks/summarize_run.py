"""One JSON line summarising a finished run's work directory (what README's results cite).

  python benchmarks/summarize_run.py EXPERIMENT WORKDIR [WALL_SECONDS] [--hardware TEXT]

WALL_SECONDS: the command's wall time, when the caller timed it; without it, the run's own
(from its start records, as `cnn-jax runs` reads it: Python's start-up not counted).
Many runs side by side: `cnn-jax runs DIR` (cnn_jax/runs.py), which this reads through.
"""
import argparse
import json
import os
import statistics

from cnn_jax import run_dir, runs

p = argparse.ArgumentParser()
p.add_argument("experiment")
p.add_argument("workdir")
p.add_argument("wall_s", type=int, nargs="?", default=None)
p.add_argument("--hardware", default=f"{os.cpu_count()}-core CPU")
a = p.parse_args()
run = run_dir.Run(a.workdir)
if not run.config:
  raise SystemExit(f"{a.workdir}: no config.json, not a work directory of `cnn-jax train`")
row, cfg, lines = runs.summarize(run), run.config, run.lines
wall = a.wall_s if a.wall_s is not None else (
    round(row["wall_s"]) if row["wall_s"] is not None else None)
last = lambda key: next((l for l in reversed(lines) if key in l), {})  # noqa: E731
ips = [l["train/images_per_sec"] for l in lines if l.get("train/images_per_sec")]
common = {"experiment": a.experiment, "epochs": cfg["num_epochs"], "wall_s": wall,
          "hardware": a.hardware, "status": row["status"],
          "train_images_per_sec_median": statistics.median_high(ips) if ips else None}
if cfg.get("task") == "detection":  # held-out mAP per epoch; no test split
  curve = [l for l in lines if "validation/mAP50" in l]
  print(json.dumps({
      **common, "data": cfg["dataset.path"] or cfg["dataset.name"], "model": cfg["model"],
      "restore_from": cfg.get("restore_from"),
      "splits": [cfg["dataset.train_split"], cfg["dataset.val_split"]],
      "heldout_final": {k.split("/", 1)[1]: v for k, v in curve[-1].items() if "/" in k}
      if curve else None,
      "heldout_best_mAP50": max((l["validation/mAP50"] for l in curve), default=None),
      "mAP50_curve": [round(l["validation/mAP50"], 4) for l in curve]}))
  raise SystemExit
test = last("test/accuracy")
print(json.dumps({
    **common, "data": cfg["dataset.name"] if cfg["dataset.name"] != "folder"
    else cfg["dataset.path"],
    "splits": [cfg["dataset.train_split"], cfg["dataset.val_split"], cfg["dataset.test_split"]],
    "val_accuracy_final": last("validation/accuracy").get("validation/accuracy"),
    "val_accuracy_curve": [round(l["validation/accuracy"], 4) for l in lines
                           if "validation/accuracy" in l],
    "test_accuracy_final": test.get("test/accuracy"),
    "test_top5_final": test.get("test/top5_accuracy"),
    "test_accuracy_best_on_val": last("test_best/accuracy").get("test_best/accuracy"),
    "test_examples": test.get("test/num_examples")}))
