#!/usr/bin/env bash
# One machine, all of its accelerators, one process.
#
#   launch/local.sh EXPERIMENT WORKDIR [--config.key=value ...]
#   launch/local.sh experiments/mnist_cnn.py runs/mnist --config.num_epochs=3
#
# Every argument after WORKDIR goes to `cnn-jax train` unchanged. Re-running with the
# same WORKDIR resumes from its latest checkpoint; Ctrl-C / SIGTERM checkpoints and
# exits (the trainer handles the signal: `exec` below makes python the signalled process).
#
# Environment knobs (all optional, caller's value wins):
#   CUDA_VISIBLE_DEVICES             restrict the GPUs used (default: all)
#   XLA_PYTHON_CLIENT_PREALLOCATE    default true: one job owns the GPUs; set false when
#                                    sharing a GPU (then memory grows on demand)
#   XLA_PYTHON_CLIENT_MEM_FRACTION   default 0.90 of each GPU when preallocating
#   CPU_DEVICES=N                    run on N simulated CPU devices (JAX_PLATFORMS=cpu),
#                                    e.g. to try the data-parallel path on a laptop
#   CNN_JAX                          the command to run (default: cnn-jax)
set -euo pipefail

if [[ $# -lt 2 ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
fi
EXPERIMENT=$1
WORKDIR=$2
shift 2

export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-true}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
# TensorFlow (if tfds ever imports it) must not grab GPU memory or spam the log.
export TF_FORCE_GPU_ALLOW_GROWTH=${TF_FORCE_GPU_ALLOW_GROWTH:-true}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
export PYTHONUNBUFFERED=1

if [[ -n "${CPU_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
fi

case "$WORKDIR" in
  *://*) ;;                      # gs://... and other remote paths: the trainer creates them
  *) mkdir -p "$WORKDIR" ;;
esac
read -r -a CMD <<< "${CNN_JAX:-cnn-jax}"
exec "${CMD[@]}" train --config "$EXPERIMENT" --workdir "$WORKDIR" "$@"
