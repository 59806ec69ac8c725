"""Ctrl-C and SIGTERM are preemptions: the running phase saves what it can at its next safe point and stops.

One process-wide flag, so a signal that arrives in one phase (tokenizer training, pre-tokenizing, Show-o
training) is seen by whichever phase runs next. The first signal only sets the flag (and says so in one line);
a second Ctrl-C exits at once. Long loops call `requested()` at their safe points (after an optimizer step, after
a finished shard) and raise `Interrupted` once they have saved; the entry points turn that into one line and
the exit status of `common/cli.py` (0 after SIGTERM, 130 after Ctrl-C).
"""

import contextlib
import os
import signal
import sys
import threading

import jax
import numpy as np

_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
_state = {"signal": None, "installed": False}


class Interrupted(Exception):
  """A phase saved its progress and stopped because of a signal; rerunning the same command continues."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = signum


def _handler(signum, frame):
  del frame
  if _state["signal"] is not None:
    if signum == signal.SIGINT:  # the second Ctrl-C: the user does not want to wait for the save
      sys.stderr.write("\ninterrupted again: exiting now (the last complete checkpoint is kept)\n")
      sys.stderr.flush()
      os._exit(130)  # pylint: disable=protected-access
    return
  _state["signal"] = signum
  sys.stderr.write(f"\n{_NAMES.get(signum, signum)}: saving at the next safe point, then stopping "
                   "(Ctrl-C again to quit at once)\n")
  sys.stderr.flush()


@contextlib.contextmanager
def handling():
  """Within: SIGINT and SIGTERM set the flag. On leaving the outermost one, the previous handlers come back and
  the flag is cleared (a notebook or a test process keeps its own Ctrl-C). Off the main thread (where Python
  cannot set handlers) it changes nothing."""
  if _state["installed"] or threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {signum: signal.signal(signum, _handler) for signum in _NAMES}
  _state["installed"] = True
  try:
    yield
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    _state.update(installed=False, signal=None)


def received() -> bool:
  """True once this process got a signal (no communication: for loops whose processes do different work)."""
  return _state["signal"] is not None


def requested() -> bool:
  """True on every process as soon as any process received a signal (an all-gather when there are several)."""
  local = _state["signal"] is not None
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.array(local))))


def signal_number() -> int:
  """The signal received here (SIGTERM when the request came from another process)."""
  return _state["signal"] if _state["signal"] is not None else signal.SIGTERM


def stop(what: str):
  """Raises Interrupted saying what was saved, e.g. stop("saved step 217 in /w/checkpoints")."""
  signum = signal_number()
  raise Interrupted(f"{_NAMES.get(signum, 'signal')}: {what}; rerun the same command to continue", signum)
