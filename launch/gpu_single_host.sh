#!/usr/bin/env bash
# One host, all its GPUs, one process (JAX drives every local GPU from a single process).
#   launch/gpu_single_host.sh configs/showo.py:size=phi-1.5,res=256 /path/to/workdir [--config.a.b=v ...]
set -euo pipefail
config="$1"; workdir="$2"; shift 2
# Let XLA use most of the GPU memory up front and overlap collectives with compute.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec python -m showo_jax.train --config "$config" --workdir "$workdir" "$@"
