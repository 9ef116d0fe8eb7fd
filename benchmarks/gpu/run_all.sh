#!/usr/bin/env bash
# The GPU benchmark suite: each benchmark in turn, one results file each.
#
#   bash benchmarks/gpu/run_all.sh [--smoke] [--out DIR] [--data PACK.npz] [--only NAME]...
#
# NAME: resnet50_vs_torch | cifar10_time_to_94 | parallel_overhead (default: all three).
# Results: DIR/gpu_<name>.json (default DIR benchmarks/results), never overwritten: an
# existing name gets a new file gpu_<name>_<UTC time>.json instead (gpu_common.py).
# --smoke: every benchmark on the CPU with tiny shapes (a few minutes in all on 2 cores),
# results in a new temporary folder (or --out DIR, never benchmarks/results).
# CIFAR-10: --data PACK.npz (benchmarks/gpu/pack_cifar10.py), else .gpu_data/cifar10_jpeg.npz
# when it exists, else synthetic data (epoch time only, no accuracy).
# Each benchmark runs under `timeout` (BENCH_TIMEOUT seconds, default 590): the device
# tool stops a command at 10 minutes, so call it once per benchmark (--only NAME) unless
# the whole suite is known to fit (benchmarks/gpu/README.md).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
SMOKE=()
OUT=""
DATA=""
ONLY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=(--smoke) ;;
    --out) OUT="$2"; shift ;;
    --data) DATA="$2"; shift ;;
    --only) ONLY+=("$2"); shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ ${#SMOKE[@]} -gt 0 ] && [ -z "$OUT" ]; then
  OUT=$(mktemp -d -t gpu_bench_smoke_XXXXXX)
fi
OUT=${OUT:-benchmarks/results}
[ ${#ONLY[@]} -eq 0 ] && ONLY=(resnet50_vs_torch cifar10_time_to_94 parallel_overhead)
if [ -z "$DATA" ] && [ -f .gpu_data/cifar10_jpeg.npz ] && [ ${#SMOKE[@]} -eq 0 ]; then
  DATA=.gpu_data/cifar10_jpeg.npz
fi
echo "device: $("$PY" -c 'import jax; print(jax.devices()[0].device_kind)' 2>/dev/null)  out: $OUT"
export PYTHONUNBUFFERED=1
status=0
for name in "${ONLY[@]}"; do
  args=("${SMOKE[@]}" --out_dir "$OUT")
  case "$name" in
    cifar10_time_to_94)
      if [ -n "$DATA" ]; then args+=(--data "$DATA"); elif [ ${#SMOKE[@]} -eq 0 ]; then args+=(--synthetic); fi ;;
    resnet50_vs_torch|parallel_overhead) ;;
    *) echo "unknown benchmark $name" >&2; exit 2 ;;
  esac
  echo "=== $name ${args[*]}"
  start=$(date +%s)
  timeout "${BENCH_TIMEOUT:-590}" "$PY" "benchmarks/gpu/$name.py" "${args[@]}"
  rc=$?
  echo "=== $name: exit $rc after $(( $(date +%s) - start )) s"
  [ $rc -ne 0 ] && status=$rc
done
ls -l "$OUT"/gpu_*.json 2>/dev/null
exit $status
