"""Metric logging on process 0: TensorBoard events, `WORKDIR/metrics.jsonl`, and a tqdm progress bar.

Device scalars are read one step late (`BufferedLogger`), so logging never stalls the dispatch of the next step.
"""

import json
import math
import os
import time

import jax
import numpy as np

from showo_jax.common import paths


class MetricWriter:
  """Writes scalars to TensorBoard and to one JSON object per line in metrics.jsonl (process 0 only)."""

  def __init__(self, workdir, *, filename: str = "metrics.jsonl", tensorboard: bool = True,
               resume_step: int = None):
    """`workdir`: a path or a `paths.Staging` (a cloud workdir's files are written locally and synced up).
    `resume_step`: the step the run resumes at; rows of later steps (written after the last checkpoint by a
    run that was killed) are dropped first, so every step appears once."""
    self.active = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self.active:
      return
    staging = workdir if isinstance(workdir, paths.Staging) else paths.Staging(workdir)
    staging.fetch(filename)
    path = staging.path(filename)
    if os.path.exists(path):
      _drop_rows_after(path, resume_step)
    self._jsonl = paths.open_local(path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(staging.path("tensorboard"))

  def write(self, step: int, scalars: dict):
    if not self.active:
      return
    row = {"step": int(step)}
    for k, v in scalars.items():
      v = float(v)
      row[k] = v if math.isfinite(v) else str(v)
      if self._tb is not None:
        self._tb.add_scalar(k, v, int(step))
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def write_text(self, step: int, tag: str, text: str):
    if self.active and self._tb is not None:
      self._tb.add_text(tag, text, int(step))

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _drop_rows_after(path: str, step=None):
  """Rewrites the local metrics file without rows past `step` (None: keeps every row) and without lines cut short
  by a kill (atomic: never half-written)."""
  with paths.open_local(path, "r") as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if step is None or int(json.loads(line)["step"]) <= step:
        keep.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError, TypeError):
      pass  # a line cut short by a kill
  if keep != lines:
    paths.write_text(path, "".join(keep))


class NonFiniteLossError(RuntimeError):
  pass


class BufferedLogger:
  """Holds the device metrics of step n and writes them when step n+1 has been dispatched."""

  def __init__(self, writer: MetricWriter, extra_fn=None):
    self._writer = writer
    self._pending = None
    self._extra_fn = extra_fn  # step, metrics -> dict of host-side scalars (time, tokens/s, mfu)

  def push(self, step: int, device_metrics):
    """Queues this step's metrics; flushes the previous step's. Returns the flushed host metrics, if any."""
    flushed = self.flush()
    self._pending = (step, device_metrics, time.perf_counter())
    return flushed

  def flush(self):
    if self._pending is None:
      return None
    step, metrics, _ = self._pending
    self._pending = None
    host = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    for name in ("loss", "grad_norm"):
      if not math.isfinite(host.get(name, 0.0)):
        raise NonFiniteLossError(f"{name.replace('_', ' ')} became {host[name]} at step {step}: stopping, nothing "
                                 "of this step saved (the last good checkpoint is kept; lower the learning rate)")
    if self._extra_fn is not None:
      host.update(self._extra_fn(step, host))
    self._writer.write(step, host)
    return step, host


def progress_bar(total: int, initial: int = 0, desc: str = "train"):
  """A tqdm bar on process 0 (a no-op object elsewhere)."""
  if jax.process_index() != 0:
    return _NoBar()
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=1.0)


class _NoBar:
  def update(self, n=1):
    del n

  def set_postfix(self, *args, **kwargs):
    del args, kwargs

  def close(self):
    pass
