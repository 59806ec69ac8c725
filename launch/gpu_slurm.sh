#!/usr/bin/env bash
# SLURM, several GPU nodes: one process per node, each driving all of its GPUs.
#   sbatch --nodes=6 --ntasks-per-node=1 --gpus-per-node=8 launch/gpu_slurm.sh \
#       configs/showo.py:size=phi-1.5,res=256 /shared/workdir [--config.a.b=v ...]
# jax.distributed.initialize() reads the coordinator, process count and rank from the SLURM environment
# (--config.train.distributed=True turns it on). The workdir must be on a filesystem every node sees.
#SBATCH --job-name=showo_jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
config="$1"; workdir="$2"; shift 2
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
srun --kill-on-bad-exit=1 python -m showo_jax.train --config "$config" --workdir "$workdir" \
  --config.train.distributed=True "$@"
