"""A training process killed with SIGKILL resumes from its last complete checkpoint and ends where an
uninterrupted run ends (bit for bit); bad input to the CLI exits with a one-line error."""

import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from showo_jax.interop import checkpoints
from showo_jax.training import trainer
from tests import train_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Steps 3 to 10 (and their checkpoints) leave the kill, sent when step 2's checkpoint appears, seconds to land in.
STEPS = 10


def _config_file(tmp_path, data):
  return train_fixtures.cli_config_file(tmp_path / "cfg.py", data, f"int(arg or {STEPS})",
                                       "c.train.checkpoint_every = 2")


def _train_cmd(cfg, workdir, *extra):
  return [sys.executable, "-m", "showo_jax.train", f"--config={cfg}:{STEPS}", f"--workdir={workdir}", *extra]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
  data = str(tmp_path / "data")
  train_fixtures.make_records(data)
  cfg = _config_file(tmp_path, data)
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_train_cmd(cfg, workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "2").exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL  # died of the kill: it neither finished nor failed before it
  # Orbax renames a step's folder into place when it is complete: the newest such folder is what was saved.
  saved = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert 2 <= saved < STEPS, saved  # killed before the last step's checkpoint
  r = subprocess.run(_train_cmd(cfg, workdir), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resuming at step {saved} of {STEPS} steps" in r.stderr, r.stderr[-3000:]
  straight = str(tmp_path / "straight")
  config = train_fixtures.tiny_config(data, steps=STEPS)
  config.train.checkpoint_every = 2
  trainer.train_and_evaluate(config, straight)
  a, _ = checkpoints.load_checkpoint(str(workdir))
  b, _ = checkpoints.load_checkpoint(straight)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_cli_bad_input_is_one_line(tmp_path):
  data = str(tmp_path / "data")
  cfg = _config_file(tmp_path, data)
  train_fixtures.make_records(data)
  r = subprocess.run(_train_cmd(cfg, tmp_path / "w", "--config.model.num_heads=3"), cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode != 0
  assert r.stderr.strip().splitlines()[-1] == (
      "error: config.model.num_heads=3 does not divide config.model.hidden_size=64")
  r = subprocess.run(_train_cmd(cfg, tmp_path / "w", "--config.mesh.data=3"), cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode != 0 and "needs 3 devices, but" in r.stderr.strip().splitlines()[-1]
  assert "Traceback" not in r.stderr
