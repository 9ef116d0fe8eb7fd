#!/usr/bin/env bash
# Full accuracy runs of the MNIST / Fashion-MNIST experiments; results go to workdirs/*/
# and one log line each to benchmarks/results/accuracy.log. Needs the data prepared
# (cnn-jax prepare mnist --raw_dir ../shared/datasets/mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results workdirs
for exp in ${@:-mnist_cnn mnist_mlp fashion_mnist_cnn mnist_lenet mnist_lenet_like}; do
  wd="workdirs/$exp"
  [ -d "$wd" ] && mv "$wd" "$wd.prev-$(date +%Y%m%d-%H%M%S)"   # never overwrite or delete a run
  start=$(date +%s)
  cnn-jax train --config "experiments/$exp.py" --workdir "$wd" --config.progress_bar=False > "$wd.log" 2>&1 || { echo "$exp FAILED"; tail -20 "$wd.log"; continue; }
  end=$(date +%s)
  python - "$exp" "$wd" $((end - start)) <<'PY' | tee -a benchmarks/results/accuracy.log
import json, sys
exp, wd, secs = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = [json.loads(l) for l in open(f"{wd}/metrics.jsonl")]
last = lambda key: [l for l in lines if key in l][-1]
val, test, best = last("validation/accuracy"), last("test/accuracy"), last("test_best/accuracy")
ips = [l["train/images_per_sec"] for l in lines if l.get("train/images_per_sec")]
cfg = json.load(open(f"{wd}/config.json"))
ds = cfg["dataset"]
print(json.dumps({"experiment": exp, "epochs": cfg["num_epochs"], "wall_s": secs,
                  "splits": [ds["train_split"], ds["val_split"], ds["test_split"]],
                  "train_images_per_sec_median": sorted(ips)[len(ips) // 2],
                  "val_accuracy_final": val["validation/accuracy"],
                  "test_accuracy_final": test["test/accuracy"],
                  "test_accuracy_best_on_val": best["test_best/accuracy"],
                  "test_examples": test["test/num_examples"]}))
PY
done
