#!/usr/bin/env bash
# The detection experiments, one after the other, from the backbone of a classifier trained
# here (default: the Imagenette ResNet-18 run); logs in benchmarks/results/<exp>.log, a
# summary line each in benchmarks/results/accuracy.log. A workdir that exists is resumed.
#   bash benchmarks/run_detection.sh [BACKBONE_WORKDIR] [EXPERIMENT ...]
set -euo pipefail
cd "$(dirname "$0")/.."
backbone=${1:-workdirs/imagenette_resnet18}
shift || true
for exp in ${@:-raccoon_yolo kangaroo_yolo}; do
  wd="workdirs/$exp"
  start=$(date +%s)
  cnn-jax train --config "experiments/$exp.py" --workdir "$wd" --config.progress_bar=False \
      --config.restore_from="$backbone" >> "benchmarks/results/$exp.log" 2>&1 \
      || { echo "$exp FAILED"; tail -20 "benchmarks/results/$exp.log"; continue; }
  end=$(date +%s)
  python benchmarks/summarize_run.py "$exp" "$wd" $((end - start)) | tee -a benchmarks/results/accuracy.log
done
