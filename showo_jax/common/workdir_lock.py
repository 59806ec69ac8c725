"""One writer per workdir: `WORKDIR/LOCK`, created exclusively (O_EXCL on disk, a does-not-exist precondition
on a bucket), holding who holds it (host, pid, since) and a heartbeat refreshed every `HEARTBEAT_S`.

A second trainer finds the lock held and stops with one line naming the holder. A lock whose holder is gone is
taken over with a warning: on the same host, its pid no longer runs (kill -9); on another host, its heartbeat is
older than `stale_after_s` (a lost host). Two processes taking over the same stale lock race on creating
`LOCK.takeover-TOKEN` exclusively: one wins, the other is refused.
"""

import json
import logging
import os
import socket
import threading
import time
import uuid

import jax

from showo_jax.common import paths

LOCK = "LOCK"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


class WorkdirInUseError(RuntimeError):
  """Another live process writes to this workdir; the message names it."""


def _alive(holder: dict) -> bool:
  """Whether the holder still runs, as far as this host can tell."""
  if holder.get("host") == socket.gethostname():
    try:
      pid = int(holder["pid"])
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    except (PermissionError, KeyError, ValueError, TypeError):
      return True
    try:  # a killed process its parent has not reaped yet (a zombie) holds nothing
      with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
      return True
  return time.time() - float(holder.get("heartbeat", 0)) < STALE_AFTER_S


class WorkdirLock:
  """Held from `acquire()` to `release()` by process 0 (the other processes of the job write no workdir files
  but Orbax's, which process 0's lock covers)."""

  def __init__(self, workdir: str, what: str = "a trainer"):
    self.path = paths.join(paths.resolve(workdir), LOCK)
    self.what = what
    self.token = uuid.uuid4().hex
    self._record = None
    self._stop = threading.Event()
    self._thread = None

  def _payload(self) -> bytes:
    return json.dumps(self._record, indent=1).encode()

  def acquire(self):
    if jax.process_index() != 0:
      return self
    now = time.time()
    self._record = {"host": socket.gethostname(), "pid": os.getpid(), "what": self.what, "token": self.token,
                    "since": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)), "heartbeat": now}
    for _ in range(3):
      if paths.create_exclusive(self.path, self._payload()):
        break
      holder = self._read()
      if holder is None:
        continue  # released between our two calls: try again
      if _alive(holder):
        raise WorkdirInUseError(
            f"{paths.parent(self.path)} is in use by {holder.get('what', 'a process')} on host "
            f"{holder.get('host')} (pid {holder.get('pid')}, since {holder.get('since')}): one writer per workdir "
            f"(if that process is gone, delete {self.path})")
      self._take_over(holder)
      break
    else:
      raise WorkdirInUseError(f"{self.path}: could not take the lock (other processes keep taking it)")
    self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lock-heartbeat")
    self._thread.start()
    return self

  def _read(self):
    try:
      return json.loads(paths.read_text(self.path))
    except FileNotFoundError:
      return None
    except (ValueError, OSError):
      return {"host": "?", "pid": -1, "heartbeat": 0, "token": "unreadable"}  # a torn lock: stale

  def _take_over(self, holder: dict):
    claim = f"{self.path}.takeover-{holder.get('token', 'none')}"
    if not paths.create_exclusive(claim, self.token.encode()):
      raise WorkdirInUseError(f"{self.path}: another process is taking over the stale lock at the same time")
    logging.warning("%s: taking over the lock of %s on host %s (pid %s, since %s), which is no longer running",
                    paths.parent(self.path), holder.get("what", "a process"), holder.get("host"),
                    holder.get("pid"), holder.get("since"))
    paths.remove(self.path)
    ok = paths.create_exclusive(self.path, self._payload())
    paths.remove(claim)
    if not ok:
      raise WorkdirInUseError(f"{self.path}: another process took the lock during the takeover")

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_S):
      self._record["heartbeat"] = time.time()
      try:
        paths.write_bytes(self.path, self._payload())
      except OSError as e:  # a full disk: the lock itself is still there
        logging.warning("%s: could not refresh the lock heartbeat (%s)", self.path, e)

  def release(self):
    if self._record is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    holder = self._read()
    if holder is not None and holder.get("token") == self.token:
      paths.remove(self.path)
    self._record = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
