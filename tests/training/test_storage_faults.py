"""Fault injection on a training workdir (issue 16): one writer per workdir (a live holder refuses the second
trainer in one line, a dead one's lock is taken over), a full disk (a real small tmpfs where this machine lets
us mount one, else an injected ENOSPC) ends in one line with the last checkpoint intact, the rerun cleans the
temporary folder and every logged step appears once."""

import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from showo_jax.common import checkpoint_integrity as integrity
from showo_jax.common import cli
from showo_jax.common import workdir_lock
from tests import train_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _holder(pid, host=None, heartbeat=None):
  return {"host": host or socket.gethostname(), "pid": pid, "what": "python -m showo_jax.train", "token": "t0",
          "since": "2026-01-01 00:00:00 UTC", "heartbeat": time.time() if heartbeat is None else heartbeat}


def test_a_live_holder_refuses_the_second_writer_by_name(tmp_path):
  first = workdir_lock.WorkdirLock(str(tmp_path), "python -m showo_jax.train").acquire()
  try:
    with pytest.raises(workdir_lock.WorkdirInUseError) as e:
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    message = str(e.value)
    assert f"in use by python -m showo_jax.train on host {socket.gethostname()} (pid {os.getpid()}, since " in message
  finally:
    first.release()
  assert not (tmp_path / "LOCK").exists()
  workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()  # free again


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  (tmp_path / "LOCK").write_text(json.dumps(_holder(proc.pid)))
  with pytest.raises(workdir_lock.WorkdirInUseError):  # alive: refused
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  proc.kill()  # kill -9; not reaped by its parent yet (a zombie holds nothing either)
  deadline = time.time() + 10
  while time.time() < deadline and pathlib.Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
    time.sleep(0.05)
  with caplog.at_level(logging.WARNING):
    lock = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  proc.wait()
  assert any(f"taking over the lock of python -m showo_jax.train on host {socket.gethostname()} (pid {proc.pid}"
             in r.getMessage() for r in caplog.records)
  assert json.loads((tmp_path / "LOCK").read_text())["pid"] == os.getpid()
  lock.release()


def test_another_hosts_lock_is_stale_only_when_its_heartbeat_stops(tmp_path):
  (tmp_path / "LOCK").write_text(json.dumps(_holder(123, host="tpu-worker-7")))
  with pytest.raises(workdir_lock.WorkdirInUseError, match="on host tpu-worker-7 .pid 123"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  old = time.time() - workdir_lock.STALE_AFTER_S - 1
  (tmp_path / "LOCK").write_text(json.dumps(_holder(123, host="tpu-worker-7", heartbeat=old)))
  workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()


def test_two_processes_taking_over_one_stale_lock_cannot_both_win(tmp_path):
  old = time.time() - workdir_lock.STALE_AFTER_S - 1
  (tmp_path / "LOCK").write_text(json.dumps(_holder(123, host="lost-host", heartbeat=old)))
  (tmp_path / "LOCK.takeover-t0").write_text("the other taker")  # it claimed the takeover first
  with pytest.raises(workdir_lock.WorkdirInUseError, match="taking over the stale lock at the same time"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()


def _cfg(tmp_path, *overrides):
  data = str(tmp_path / "data")
  return train_fixtures.cli_config_file(tmp_path / "cfg.py", data, "int(arg or 6)", *overrides)


def _train(cfg, workdir, steps=6, *flags, **kwargs):
  return subprocess.run([sys.executable, "-m", "showo_jax.train", f"--config={cfg}:{steps}", f"--workdir={workdir}",
                         *flags], cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs)


def _rows(workdir):
  return [json.loads(x)["step"] for x in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_a_second_trainer_on_a_busy_workdir_refuses_in_one_line(tmp_path):
  train_fixtures.make_records(str(tmp_path / "data"))
  cfg = _cfg(tmp_path, "c.train.checkpoint_every = 2")
  workdir = tmp_path / "run"
  first = subprocess.Popen([sys.executable, "-m", "showo_jax.train", f"--config={cfg}:40", f"--workdir={workdir}"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "2").exists() and time.time() < deadline and first.poll() is None:
      time.sleep(0.2)
    second = _train(cfg, workdir, steps=40)
    assert second.returncode == cli.FAILURE and "Traceback" not in second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {workdir} is in use by python -m showo_jax.train on host "
                           f"{socket.gethostname()} (pid {first.pid}, since "), last
  finally:
    first.kill()
    first.wait()
  # The first was killed -9: its lock is taken over, the run resumes, and each step is logged once (saving only at
  # the end: what is checked here is the lock and the rows, not eighteen more checkpoints).
  third = _train(cfg, workdir, 40, "--config.train.checkpoint_every=40")
  assert third.returncode == 0, third.stderr[-2000:]
  assert "taking over the lock" in third.stderr
  assert _rows(workdir) == list(range(1, 41))


def _mount_tmpfs(where: pathlib.Path, size: str) -> bool:
  where.mkdir(exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                        capture_output=True).returncode == 0


def test_a_full_disk_is_one_line_and_the_rerun_continues(tmp_path, monkeypatch, capsys):
  """On a 2.2 MB tmpfs a checkpoint (1.3 MB) fits once, the next one does not: ENOSPC from TensorStore's
  writer thread. Where mounting is not allowed, the same ENOSPC is injected into the manifest write."""
  train_fixtures.make_records(str(tmp_path / "data"))
  cfg = _cfg(tmp_path, "c.train.checkpoint_every = 2", "c.train.keep_checkpoints = 1")
  disk = tmp_path / "disk"
  mounted = _mount_tmpfs(disk, "2200k")
  try:
    workdir = disk / "run"
    if mounted:
      r = _train(cfg, workdir)
      assert r.returncode == cli.FAILURE, r.stderr[-2000:]
      assert "Traceback" not in r.stderr, r.stderr[-3000:]
      last = r.stderr.strip().splitlines()[-1]
      assert last.startswith(f"error: no space left on the device (or quota exceeded) writing {workdir}"), last
      assert "the last complete checkpoint is intact" in last
      assert [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] == ["2"]
      assert integrity.verify(str(workdir / "checkpoints" / "2")) is None
      assert integrity.has_manifest(str(workdir / "checkpoints" / "2"))
      subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
      r = _train(cfg, workdir)
      assert r.returncode == 0, r.stderr[-2000:]
    else:
      from showo_jax.training import trainer  # pylint: disable=g-import-not-at-top
      config = train_fixtures.tiny_config(str(tmp_path / "data"), steps=6)
      config.train.update(checkpoint_every=2, keep_checkpoints=1)
      trainer.train_and_evaluate(dict_copy(config, steps=2), str(workdir))
      def full(step_dir):
        raise OSError(28, "No space left on device", os.path.join(step_dir, integrity.MANIFEST))
      monkeypatch.setattr(integrity, "write_manifest", full)
      capsys.readouterr()
      assert cli.run(lambda: trainer.train_and_evaluate(config, str(workdir))) == cli.FAILURE
      monkeypatch.undo()
      err = capsys.readouterr().err
      assert "Traceback" not in err, err[-3000:]
      errors = [x for x in err.splitlines() if x.startswith("error:")]
      assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-3000:]
      step_dir = workdir / "checkpoints" / "4"  # the first save after the resume at step 2
      assert errors[0].startswith("error: no space left on the device (or quota exceeded) writing "
                                  f"{step_dir / integrity.MANIFEST}: "), errors[0]
      assert "the last complete checkpoint is intact" in errors[0], errors[0]
      assert integrity.verify(str(workdir / "checkpoints" / "2")) is None
      trainer.train_and_evaluate(config, str(workdir))
    leftovers = [p for p in workdir.rglob("*") if "tmp" in p.name]
    assert not leftovers, leftovers  # Orbax's temporary step folder was cleaned on the rerun's start
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["6"]
    assert _rows(workdir) == list(range(1, 7))
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def dict_copy(config, **train):
  config = config.copy_and_resolve_references()
  config.train.update(train)
  return config


def test_a_damaged_newest_checkpoint_is_one_warning_and_the_run_resumes_from_the_last_intact(tmp_path):
  train_fixtures.make_records(str(tmp_path / "data"))
  cfg = _cfg(tmp_path, "c.train.checkpoint_every = 2")
  workdir = tmp_path / "run"
  assert _train(cfg, workdir, steps=4).returncode == 0
  newest = workdir / "checkpoints" / "4"
  data = max((p for p in newest.rglob("*") if p.is_file() and "/d/" in str(p)), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  r = _train(cfg, workdir, steps=6)
  assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
  warnings = [x for x in r.stderr.splitlines() if "checkpoint step 4" in x]
  assert len(warnings) == 1 and "moved aside" in warnings[0], warnings
  assert "resuming at step 2 of 6" in r.stderr
  assert _rows(workdir) == list(range(1, 7))
  assert [p.name.split("-")[0] for p in (workdir / "checkpoints.quarantine").iterdir()] == ["4"]


def test_the_tokenizer_trainer_refuses_a_busy_workdir(tmp_path):
  from showo_jax.tokenizer import config as tokenizer_config  # pylint: disable=g-import-not-at-top
  from showo_jax.tokenizer import trainer as tokenizer_trainer  # pylint: disable=g-import-not-at-top
  held = workdir_lock.WorkdirLock(str(tmp_path), "python -m showo_jax.train").acquire()
  try:
    with pytest.raises(workdir_lock.WorkdirInUseError, match="in use by python -m showo_jax.train"):
      tokenizer_trainer.train_tokenizer(tokenizer_config.magvit_config("tiny"), str(tmp_path))
  finally:
    held.release()
  assert not (tmp_path / "checkpoints").exists()  # refused before any work
