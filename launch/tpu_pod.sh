#!/usr/bin/env bash
# Cloud TPU VM pod slice: the same command on every worker; jax.distributed finds the others by itself.
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh configs/showo.py:size=phi-1.5,res=256 \
#       gs://bucket/workdir [--config.a.b=v ...]
# Install first on all workers: gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $ZONE --worker=all \
#   --command "pip install 'jax[tpu]==0.10.2' -e ~/showo_jax"
set -euo pipefail
config="$1"; workdir="$2"; shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd ~/showo_jax && python -m showo_jax.train --config $config --workdir $workdir --config.train.distributed=True$extra"
