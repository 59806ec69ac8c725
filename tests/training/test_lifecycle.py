"""A run's life: SIGTERM saves and resumes at the next step, a non-finite loss stops before it is saved,
`train.init_from` starts from another checkpoint's params (ours or an official state dict) with a fresh optimizer."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from showo_jax.common import checkpointing
from showo_jax.common import metrics as metrics_lib
from showo_jax.interop import checkpoints
from showo_jax.interop import conversion
from showo_jax.training import trainer
from tests import train_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 30


def _config_file(tmp_path, data):
  # Only the preemption save and the last step write checkpoints.
  return train_fixtures.cli_config_file(tmp_path / "cfg.py", data, STEPS, "c.train.checkpoint_every = 1000")


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _saved_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _wait_for_rows(proc, metrics, rows: int):
  """Waits (at most 300 s) until the metrics file has `rows` lines or the process ended."""
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and (
      not metrics.exists() or len(metrics.read_text().splitlines()) < rows):
    time.sleep(0.05)


def _interrupt(tmp_path, signum, expected_rc):
  """Starts the training CLI, sends `signum` once 3 metric rows exist; returns (cmd, stopped step, stderr)."""
  data = str(tmp_path / "data")
  train_fixtures.make_records(data)
  cmd = [sys.executable, "-m", "showo_jax.train", f"--config={_config_file(tmp_path, data)}",
         f"--workdir={tmp_path / 'run'}"]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "run" / "metrics.jsonl"
  _wait_for_rows(proc, metrics, 3)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == expected_rc, err[-2000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
  [stopped] = _saved_steps(tmp_path / "run")
  assert 3 <= stopped < STEPS
  assert [r["step"] for r in _rows(tmp_path / "run")] == list(range(1, stopped + 1))
  return cmd, stopped, err, out


def test_sigterm_saves_exits_0_and_the_rerun_continues_at_the_next_step(tmp_path):
  cmd, stopped, err, _ = _interrupt(tmp_path, signal.SIGTERM, 0)
  assert err.strip().splitlines()[-1] == (f"SIGTERM: saved step {stopped} in {tmp_path / 'run' / 'checkpoints'}; "
                                          "rerun the same command to continue")
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
  assert [r["step"] for r in _rows(tmp_path / "run")] == list(range(1, STEPS + 1))  # each step once, in order
  straight = str(tmp_path / "straight")
  config = train_fixtures.tiny_config(str(tmp_path / "data"), steps=STEPS)
  trainer.train_and_evaluate(config, straight)
  a, _ = checkpoints.load_checkpoint(str(tmp_path / "run"))
  b, _ = checkpoints.load_checkpoint(straight)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_ctrl_c_saves_exits_130_in_one_line_and_the_rerun_has_no_duplicate_rows(tmp_path):
  cmd, stopped, err, out = _interrupt(tmp_path, signal.SIGINT, 130)
  lines = [x for x in err.splitlines() if x.strip() and "it/s" not in x and "s/it" not in x]
  assert lines[-1] == (f"Ctrl-C: saved step {stopped} in {tmp_path / 'run' / 'checkpoints'}; "
                       "rerun the same command to continue")
  assert "done:" not in out  # no summary for a run that stopped early
  # A killed run leaves rows past its last checkpoint: the rerun drops them before it appends its own.
  with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": stopped + 1, "loss": 1.0}) + "\n" + '{"step": ')  # and a line cut short
  r = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
  assert [r["step"] for r in _rows(tmp_path / "run")] == list(range(1, STEPS + 1))
  assert f"done: Show-o at step {STEPS} of {STEPS}" in r.stdout and "python -m showo_jax.sample t2i" in r.stdout


def test_the_terminal_shows_phases_and_the_log_file_keeps_the_library_records(tmp_path):
  data = str(tmp_path / "data")
  cfg = train_fixtures.cli_config_file(tmp_path / "cfg.py", data, 4, "c.train.checkpoint_every = 2")
  r = subprocess.run([sys.executable, "-m", "showo_jax.train", f"--config={cfg}", f"--workdir={tmp_path / 'run'}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
  text = [x for x in r.stderr.splitlines() if x.strip() and "it/s" not in x and "s/it" not in x and "%|" not in x]
  assert text and text[0].startswith("Show-o: training 4 steps (rows per step: t2i 4, lm 2, mmu 2)"), text
  assert not [x for x in text if x.startswith(("I1", "I0", "INFO")) or "Unable to initialize backend" in x], text
  log = (tmp_path / "run" / "train.log").read_text()
  assert "Finished saving checkpoint" in log or "checkpoint" in log.lower()  # Orbax's records are kept there
  assert "INFO" in log and "Show-o: training 4 steps" in log
  assert r.stdout.startswith("done: Show-o at step 4 of 4")


def test_non_finite_step_stops_and_leaves_only_usable_checkpoints(tmp_path):
  """Steps 1-4 at a sane lr, then lr 1e30 from the resume: step 5's update gives finite but huge params (~1e30,
  its loss, computed before the update, is finite) and is saved; step 6's loss overflows. That checkpoint is
  moved aside, so the newest kept is step 4, and a resume at a sane lr from it trains to the end."""
  data, workdir = str(tmp_path / "data"), str(tmp_path / "run")
  config = train_fixtures.tiny_config(data, steps=4)
  config.train.update(checkpoint_every=1, keep_checkpoints=8)
  trainer.train_and_evaluate(config, workdir)
  config.train.steps = 8
  config.optimizer.update(lr=1e30, warmup_steps=0)
  with pytest.raises((metrics_lib.NonFiniteLossError, checkpointing.NonFiniteStateError),
                     match=r"^(loss became (nan|inf) at step \d+: stopping|the parameters or optimizer state became)"):
    trainer.train_and_evaluate(config, workdir)
  saved = _saved_steps(workdir)
  assert saved == [1, 2, 3, 4], saved
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    for step in saved:
      state = ckpt.restore_raw(step)
      assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state)), step
  finally:
    ckpt.close()
  config.optimizer.update(lr=1e-3, warmup_steps=1)
  final = trainer.train_and_evaluate(config, workdir)
  assert final["step"] == 8 and np.isfinite(final["loss"])
  assert [p.name.split("-")[0] for p in pathlib.Path(workdir, "checkpoints.quarantine").iterdir()] == ["5"]
  # The CLI says it in one line and exits non-zero.
  data = str(tmp_path / "data")
  cfg = train_fixtures.cli_config_file(tmp_path / "cfg.py", data, 8,
                                       "c.optimizer.update(lr=1e30, warmup_steps=0, grad_clip_norm=0.0)")
  r = subprocess.run([sys.executable, "-m", "showo_jax.train", f"--config={cfg}", f"--workdir={tmp_path / 'cli'}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("error: loss became")


def _fresh_optimizer(run):
  fresh = run.init_state(0).opt_state
  return [np.asarray(x) for x in jax.tree.leaves(fresh)]


@pytest.mark.parametrize("kind", ["ours", "official"])
def test_init_from_copies_params_and_starts_a_fresh_optimizer(tmp_path, kind):
  data = str(tmp_path / "data")
  source = str(tmp_path / "source")
  trainer.train_and_evaluate(train_fixtures.tiny_config(data, steps=2), source)
  want, _ = checkpoints.load_checkpoint(source)
  if kind == "official":  # the same params as an official Show-o folder (config.json + safetensors)
    exported = str(tmp_path / "official")
    conversion.export_showo(source, exported)
    assert os.path.exists(os.path.join(exported, conversion.WEIGHTS))
    source = exported
  config = train_fixtures.tiny_config(data, steps=3)
  config.train.init_from = source
  config.train.seed = 5  # another init: the copied params must not come from the seed
  run = trainer.Run(config)
  state = trainer._init_from(run, run.init_state(config.train.seed), source)  # pylint: disable=protected-access
  for got, w in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(got), w)
  for got, fresh in zip(jax.tree.leaves(state.opt_state), _fresh_optimizer(run)):
    np.testing.assert_array_equal(np.asarray(got), fresh)
  assert int(state.step) == 0
  # Then LoRA on top: the base params are the source's, the adapters fresh with B = 0, and only they train.
  lora_config = config.copy_and_resolve_references()
  lora_config.model.lora.update(rank=2, targets="q,fc2")
  lora_config.train.trainable = "lora"
  lora_run = trainer.Run(lora_config)
  lora_state = trainer._init_from(lora_run, lora_run.init_state(5), source)  # pylint: disable=protected-access
  got = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(lora_state.params)[0]}
  for p, w in jax.tree_util.tree_flatten_with_path(want)[0]:
    np.testing.assert_array_equal(got.pop(jax.tree_util.keystr(p)), w)
  assert len(got) == 4 * config.model.num_layers  # lora_a and lora_b of q_proj and fc2 in each layer
  assert all(not v.any() for k, v in got.items() if "lora_b" in k) and all(v.any() for k, v in got.items() if "lora_a" in k)
  # Through the trainer: one step from the copied params, the optimizer counting from 0.
  workdir = str(tmp_path / "run")
  config.train.steps = 1
  config.optimizer.warmup_steps = 0  # lr > 0 at the first update, so the step does move the params
  trainer.train_and_evaluate(config, workdir)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    saved = ckpt.restore_raw(ckpt.latest_step())
  finally:
    ckpt.close()
  counts = [np.asarray(x) for x in jax.tree.leaves(saved["opt_state"]) if np.asarray(x).dtype == np.int32]
  assert counts and all(int(c) == 1 for c in counts)  # a fresh AdamW after one update (the source had 2)
  moved = max(float(np.abs(np.asarray(g) - w).max()) for g, w in zip(jax.tree.leaves(saved["params"]),
                                                                    jax.tree.leaves(want)))
  assert 0 < moved < 0.1  # one small step away from the source, not from a random init


def test_ctrl_c_during_the_embedded_tokenizer_phase_saves_its_step(tmp_path):
  """The main job's first phases: Ctrl-C while the image tokenizer trains saves that step and exits 130 in one
  line (the Show-o trainer does not swallow it; the rerun resumes the tokenizer from there)."""
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "showo_jax.train", "--config", "configs/tiny.py", f"--workdir={workdir}",
         "--config.tokenizer.magvit.train.steps=400", "--config.tokenizer.magvit.train.log_every=2"]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "tokenizer" / "metrics.jsonl"
  _wait_for_rows(proc, metrics, 2)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
  [stopped] = sorted(int(d) for d in os.listdir(workdir / "tokenizer" / "checkpoints") if d.isdigit())
  assert 4 <= stopped < 400
  last = [x for x in err.splitlines() if x.strip() and "it/s" not in x and "s/it" not in x][-1]
  assert last == (f"Ctrl-C: saved tokenizer step {stopped} in {workdir / 'tokenizer' / 'checkpoints'}; "
                  "rerun the same command to continue"), err[-2000:]
  assert not (workdir / "data").exists() and not (workdir / "checkpoints").exists()


def test_a_second_ctrl_c_exits_at_once(tmp_path):
  data = str(tmp_path / "data")
  train_fixtures.make_records(data)
  cfg = train_fixtures.cli_config_file(tmp_path / "cfg.py", data, 100000, "c.train.checkpoint_every = 100000")
  proc = subprocess.Popen([sys.executable, "-m", "showo_jax.train", f"--config={cfg}", f"--workdir={tmp_path / 'r'}"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "r" / "metrics.jsonl"
  _wait_for_rows(proc, metrics, 2)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.5)  # two signals sent at once can merge into one delivery
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130 and "interrupted again: exiting now" in err and "Traceback" not in err, err[-2000:]
