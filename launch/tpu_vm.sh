#!/usr/bin/env bash
# Cloud TPU VM (one host or a pod slice): copy this checkout to every worker, install,
# and run the same experiment on all workers at once (one process per host).
#
#   export TPU_NAME=my-v4-32 ZONE=us-central2-b [PROJECT=my-project]
#   launch/tpu_vm.sh all     EXPERIMENT WORKDIR [--config.key=value ...]   # copy+install+train
#   launch/tpu_vm.sh copy                      # tar the working tree, scp --worker=all, untar
#   launch/tpu_vm.sh install                   # venv + pip install -e . "jax[tpu]" on all
#   launch/tpu_vm.sh train   EXPERIMENT WORKDIR [--config.key=value ...]
#   launch/tpu_vm.sh logs | stop               # with DETACH=1: tail the logs / SIGTERM
#
# WORKDIR: use a gs:// bucket for pod slices (every host writes its checkpoint shards, the
# hosts share no disk); a local path is fine on a single-host TPU VM.
# Multi-host start-up needs no flags: cnn_jax.distributed sees the TPU chips and calls
# jax.distributed.initialize() with no arguments; JAX reads the worker list and this
# worker's id from the TPU VM metadata server.
#
# Environment knobs: TPU_NAME, ZONE (required); PROJECT; REMOTE_DIR (default cnn_jax, in
# $HOME on each worker); REMOTE_VENV (default cnn_jax_venv); JAX_SPEC (default "jax[tpu]");
# DETACH=1 runs the trainer under nohup (log ~/cnn_jax_train.log, survives ssh drops);
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REMOTE_DIR=${REMOTE_DIR:-cnn_jax}
REMOTE_VENV=${REMOTE_VENV:-cnn_jax_venv}
JAX_SPEC=${JAX_SPEC:-jax[tpu]}
LOG=cnn_jax_train.log
PIDFILE=cnn_jax_train.pid

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
STEP=$1
shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"

GCLOUD_FLAGS=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && GCLOUD_FLAGS+=(--project="$PROJECT")

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

# Run one shell command on every worker of the slice, simultaneously.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker=all \
      --command="$1"
}

step_copy() {
  local tmp tarball
  tmp=$(mktemp -d)
  tarball="$tmp/cnn_jax.tar.gz"
  # Tracked and untracked-but-not-ignored files: uncommitted edits travel too.
  # (Files deleted but still in the index are skipped.)
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
     | while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done \
     | tar --null -czf "$tarball" -T -)
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:" "${GCLOUD_FLAGS[@]}" --worker=all
  on_all_workers "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && \
tar -xzf ~/cnn_jax.tar.gz -C ~/$REMOTE_DIR && rm ~/cnn_jax.tar.gz"
  rm -rf "$tmp"
}

step_install() {
  on_all_workers "set -e; cd ~/$REMOTE_DIR; \
(python3 -m venv ~/$REMOTE_VENV || (sudo apt-get update -q && sudo apt-get install -y -q python3-venv \
 && python3 -m venv ~/$REMOTE_VENV)); \
~/$REMOTE_VENV/bin/pip install -q -U pip; \
~/$REMOTE_VENV/bin/pip install -q -e . $(printf '%q' "$JAX_SPEC"); \
~/$REMOTE_VENV/bin/python -c 'import jax, cnn_jax; print(\"jax\", jax.__version__)'"
}

step_train() {
  [[ $# -ge 2 ]] || usage
  local experiment=$1 workdir=$2
  shift 2
  if [[ "$workdir" != gs://* ]]; then
    echo "note: WORKDIR=$workdir is local to each worker; use gs://... on a pod slice" >&2
  fi
  local cmd
  cmd="cd ~/$REMOTE_DIR && export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1 && \
exec ~/$REMOTE_VENV/bin/cnn-jax train --config $(printf '%q' "$experiment") \
--workdir $(printf '%q' "$workdir")"
  if [[ $# -gt 0 ]]; then
    cmd+=" $(printf '%q ' "$@")"
  fi
  if [[ -n "${DETACH:-}" ]]; then
    cmd="nohup bash -c $(printf '%q' "$cmd") > ~/$LOG 2>&1 < /dev/null & echo \$! > ~/$PIDFILE; \
echo started \$(hostname) pid \$(cat ~/$PIDFILE)"
  fi
  on_all_workers "$cmd"
}

case "$STEP" in
  copy) step_copy ;;
  install) step_install ;;
  train) step_train "$@" ;;
  all) step_copy; step_install; step_train "$@" ;;
  logs) on_all_workers "tail -n 20 ~/$LOG" ;;
  # SIGTERM: the trainer saves a checkpoint and exits; `train` again resumes.
  stop) on_all_workers "[ -f ~/$PIDFILE ] && kill -TERM \$(cat ~/$PIDFILE); true" ;;
  *) usage ;;
esac
