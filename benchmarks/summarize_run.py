"""One JSON line summarising a finished run's work directory (what README's results cite).

  python benchmarks/summarize_run.py EXPERIMENT WORKDIR WALL_SECONDS [--hardware TEXT]
"""
import argparse
import json
import os

p = argparse.ArgumentParser()
p.add_argument("experiment")
p.add_argument("workdir")
p.add_argument("wall_s", type=int)
p.add_argument("--hardware", default=f"{os.cpu_count()}-core CPU")
a = p.parse_args()
lines = [json.loads(l) for l in open(f"{a.workdir}/metrics.jsonl")]
last = lambda key: ([l for l in lines if key in l] or [{}])[-1]
val, test, best = last("validation/accuracy"), last("test/accuracy"), last("test_best/accuracy")
ips = [l["train/images_per_sec"] for l in lines if l.get("train/images_per_sec")]
cfg = json.load(open(f"{a.workdir}/config.json"))
ds = cfg["dataset"]
if cfg.get("task") == "detection":  # held-out mAP per epoch; no test split
  curve = [l for l in lines if "validation/mAP50" in l]
  print(json.dumps({
      "experiment": a.experiment, "data": ds["path"] or ds["name"], "model": cfg["model"],
      "restore_from": cfg.get("restore_from"), "epochs": cfg["num_epochs"], "wall_s": a.wall_s,
      "hardware": a.hardware, "splits": [ds["train_split"], ds["val_split"]],
      "train_images_per_sec_median": sorted(ips)[len(ips) // 2] if ips else None,
      "heldout_final": {k.split("/", 1)[1]: v for k, v in curve[-1].items() if "/" in k},
      "heldout_best_mAP50": max(l["validation/mAP50"] for l in curve),
      "mAP50_curve": [round(l["validation/mAP50"], 4) for l in curve]}))
  raise SystemExit
print(json.dumps({
    "experiment": a.experiment, "data": ds["name"] if ds["name"] != "folder" else ds["path"],
    "epochs": cfg["num_epochs"], "wall_s": a.wall_s, "hardware": a.hardware,
    "splits": [ds["train_split"], ds["val_split"], ds["test_split"]],
    "train_images_per_sec_median": sorted(ips)[len(ips) // 2] if ips else None,
    "val_accuracy_final": val.get("validation/accuracy"),
    "val_accuracy_curve": [round(l["validation/accuracy"], 4) for l in lines if "validation/accuracy" in l],
    "test_accuracy_final": test.get("test/accuracy"),
    "test_top5_final": test.get("test/top5_accuracy"),
    "test_accuracy_best_on_val": best.get("test_best/accuracy"),
    "test_examples": test.get("test/num_examples")}))
