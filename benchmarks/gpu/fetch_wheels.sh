#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks for cnn_jax's benchmarks (its image has
# jax, flax, optax, orbax, torch, torchvision, but not these; nothing can be fetched there).
# They land in .whl/ (ignored by git) and travel with `carry: [".whl"]`; see
# benchmarks/gpu/README.md for the install line that starts each device command.
#   bash benchmarks/gpu/fetch_wheels.sh            # ~5 MiB
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
# Versions as this project's venv pins them; Python 3.12 (the GPU image's), x86-64 Linux.
WHEELS=(grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 dm-pix==0.4.5 portpicker==1.6.0)
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${WHEELS[@]}"
ls -la .whl
du -sh .whl
