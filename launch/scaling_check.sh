#!/usr/bin/env bash
# Scaling evidence on one machine: the same tiny training (tests/train_fixtures.py: synthetic image-token records,
# a small BPE, 4/2/2 rows of t2i/lm/mmu per step) run three ways must give the same loss curve:
#   1. one process, one CPU device;
#   2. one process, 8 fake CPU devices, FSDP (mesh data=1,fsdp=8,tensor=1);
#   3. two processes on 127.0.0.1 (launch/local_multiprocess.sh), 4 fake devices each, the same fsdp=8 mesh.
# Prints the largest per-step loss difference against run 1 and exits non-zero above TOLERANCE.
#
#   launch/scaling_check.sh [OUT_DIR]          # STEPS=20 TOLERANCE=1e-4 by default
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/showo_scaling_check}"
steps="${STEPS:-20}"
tolerance="${TOLERANCE:-1e-4}"
python="${PYTHON:-python}"
data="$out/data"
mkdir -p "$out"
rm -rf "$out/one_device" "$out/fsdp8" "$out/two_processes"  # fresh runs (a workdir would otherwise resume)

# The records are written once here, so that the two processes of run 3 only read them.
PYTHONPATH="tests${PYTHONPATH:+:$PYTHONPATH}" "$python" -c \
  'import sys, train_fixtures; train_fixtures.make_records(sys.argv[1])' "$data"
train=("$python" -m showo_jax.train --config "tests/train_fixtures.py:folder=$data,steps=$steps")

echo "== 1 process, 1 device"
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=1 \
  "${train[@]}" --workdir "$out/one_device" --config.mesh.data=1 --config.mesh.fsdp=1
echo "== 1 process, 8 fake devices, fsdp=8"
JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 \
  "${train[@]}" --workdir "$out/fsdp8" --config.mesh.data=1 --config.mesh.fsdp=8
echo "== 2 processes x 4 fake devices, fsdp=8"
NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local_multiprocess.sh \
  "${train[@]}" --workdir "$out/two_processes" --config.mesh.data=1 --config.mesh.fsdp=8 \
  --config.train.distributed=True

"$python" - "$out" "$steps" "$tolerance" <<'EOF'
import json, os, sys
out, steps, tolerance = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
keys = ("loss", "loss_t2i", "loss_lm", "loss_mmu")
def curve(run):
  rows = [json.loads(line) for line in open(os.path.join(out, run, "metrics.jsonl"))]
  return {r["step"]: r for r in rows if "loss" in r}
ref = curve("one_device")
assert sorted(ref) == list(range(1, steps + 1)), f"one_device logged steps {sorted(ref)}"
worst = 0.0
for run in ("fsdp8", "two_processes"):
  other = curve(run)
  assert sorted(other) == sorted(ref), f"{run} logged steps {sorted(other)}"
  diff = {k: max(abs(float(ref[s][k]) - float(other[s][k])) for s in ref) for k in keys}
  print(f"{run:>14} vs one_device over {steps} steps: max |d loss| = {diff['loss']:.2e}  "
        + "  ".join(f"{k} {v:.2e}" for k, v in diff.items() if k != "loss"))
  worst = max(worst, max(diff.values()))
print(f"first/last loss (one_device): {float(ref[1]['loss']):.5f} / {float(ref[steps]['loss']):.5f}")
print(f"max difference: {worst:.2e} (tolerance {tolerance:g})")
sys.exit(0 if worst <= tolerance else 1)
EOF
