"""Two processes on 127.0.0.1 (jax.distributed, launch/local_multiprocess.sh) match one process."""

import json
import os
import pathlib
import subprocess
import sys

from tests import train_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(cmd, env_extra, attempts=1):
  env = dict(os.environ, **env_extra)
  if "XLA_FLAGS" not in env_extra:
    env.pop("XLA_FLAGS", None)  # the launcher gives each process its own fake devices
  for _ in range(attempts):
    r = subprocess.run(cmd, env=env, cwd=ROOT, timeout=600, capture_output=True, text=True)
    if r.returncode == 0:
      return
  # On a loaded machine one process can out-wait the other's collective timeout; the retry above absorbs that.
  raise AssertionError(f"{cmd[0]} failed after {attempts} attempt(s):\n{r.stderr[-3000:]}")


def test_two_processes_match_one(tmp_path):
  data = str(tmp_path / "data")
  train_fixtures.make_records(data)
  script = str(ROOT / "tests" / "distributed_step.py")
  single = tmp_path / "single.json"
  _run([sys.executable, script, data, str(single)], {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  multi = tmp_path / "multi.json"
  _run([str(ROOT / "launch" / "local_multiprocess.sh"), sys.executable, script, data, str(multi), "distributed"],
       {"NUM_PROCESSES": "2", "DEVICES_PER_PROCESS": "4"}, attempts=2)
  a, b = json.loads(single.read_text()), json.loads(multi.read_text())
  assert (a["processes"], b["processes"], a["devices"], b["devices"]) == (1, 2, 8, 8)
  for key in ("loss", "loss_t2i", "loss_lm", "loss_mmu", "grad_norm"):
    assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a[key], b[key])
