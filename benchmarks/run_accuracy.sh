#!/usr/bin/env bash
# Full accuracy runs of the MNIST / Fashion-MNIST experiments; results go to workdirs/*/
# and one log line each to benchmarks/results/accuracy.log. Needs the data prepared
# (cnn-jax prepare mnist --raw_dir ../shared/datasets/mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
for exp in ${@:-mnist_cnn mnist_mlp fashion_mnist_cnn mnist_lenet mnist_lenet_like}; do
  wd="workdirs/$exp"
  rm -rf "$wd.prev"; [ -d "$wd" ] && mv "$wd" "$wd.prev"   # never overwrite a finished run
  start=$(date +%s)
  cnn-jax train --config "experiments/$exp.py" --workdir "$wd" --config.progress_bar=False > "$wd.log" 2>&1 || { echo "$exp FAILED"; tail -20 "$wd.log"; continue; }
  end=$(date +%s)
  python - "$exp" "$wd" $((end - start)) <<'PY' | tee -a benchmarks/results/accuracy.log
import json, sys
exp, wd, secs = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = [json.loads(l) for l in open(f"{wd}/metrics.jsonl")]
ev = [l for l in lines if "eval/accuracy" in l][-1]
ips = [l["train/images_per_sec"] for l in lines if l.get("train/images_per_sec")]
cfg = json.load(open(f"{wd}/config.json"))
print(json.dumps({"experiment": exp, "epochs": cfg["num_epochs"], "wall_s": secs,
                  "train_images_per_sec_median": sorted(ips)[len(ips) // 2],
                  "test_accuracy": ev["eval/accuracy"], "test_examples": ev["eval/num_examples"]}))
PY
done
