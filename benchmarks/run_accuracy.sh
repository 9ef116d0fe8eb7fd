#!/usr/bin/env bash
# Full accuracy runs of experiments (default: the MNIST / Fashion-MNIST ones); results go to workdirs/*/
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
  python benchmarks/summarize_run.py "$exp" "$wd" $((end - start)) | tee -a benchmarks/results/accuracy.log
done
