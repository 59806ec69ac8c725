#!/usr/bin/env bash
# Runs N processes of a JAX program on this machine, as a multi-host job would run (one process per "host"),
# talking over 127.0.0.1. Exercises jax.distributed and the per-process data path without a cluster.
#
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local_multiprocess.sh \
#       python -m showo_jax.train --config configs/tiny.py --workdir /tmp/run --config.train.distributed=True
#
# Every process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (read by
# showo_jax.sharding.maybe_initialize_distributed) and DEVICES_PER_PROCESS fake CPU devices.
set -euo pipefail
n="${NUM_PROCESSES:-2}"
devices="${DEVICES_PER_PROCESS:-4}"
port="${COORDINATOR_PORT:-$((20000 + RANDOM % 20000))}"
pids=()
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu \
    XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
