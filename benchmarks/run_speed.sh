#!/usr/bin/env bash
# Issue 13's CPU figures, one after another on a quiet machine (each is side by side
# within itself). Logs: benchmarks/results/speed_cpu.log; JSON next to it.
#   bash benchmarks/run_speed.sh [WORKDIRS]   (default workdirs/; MNIST must be prepared)
set -uo pipefail
cd "$(dirname "$0")/.."
W=${1:-workdirs}
R=benchmarks/results
mkdir -p "$R" "$W"
stamp() { date -u +%Y%m%dT%H%M%S; }
timed_run() {  # name config: command start to exit, then the run's test accuracy
  local name=$1 config=$2 dir="$W/$1-$(stamp)"
  local t0=$(date +%s.%N)
  cnn-jax train --config "$config" --workdir "$dir" --config.progress_bar=False > "$dir.log" 2>&1
  local rc=$? t1=$(date +%s.%N)
  echo "$name: exit $rc, wall $(python -c "print(round($t1 - $t0, 1))") s, $(grep -E 'first step done|test \(final\)' "$dir.log" | sed 's/^.*cnn_jax: //' | tr '\n' ' ')"
}
{
  echo "== $(date -u) $(nproc) cores, $(python -c 'import jax; print("jax", jax.__version__)')"
  timed_run mnist_fast experiments/mnist_fast.py
  timed_run mnist_fast experiments/mnist_fast.py
  python benchmarks/startup.py --repeats 3
  python benchmarks/loop_overhead.py --rounds 3
  python benchmarks/torch_vs_jax.py --rounds 3
  python benchmarks/parallel_overhead.py --devices 1 --steps 100 --rounds 5 > "$R/parallel_overhead.json"
  cat "$R/parallel_overhead.json"
  python benchmarks/bfloat16_cpu.py --rounds 3
  timed_run mnist_best experiments/mnist_best.py
} 2>&1 | grep -vE "^\s*$|it/s\]|WARNING:absl" | tee -a "$R/speed_cpu.log"
