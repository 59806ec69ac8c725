"""A resumable, per-process sharded ArrayRecord writer: inputs → (optionally) image tokens → record folder.

The input is split into contiguous shards. Each shard is written whole under a temporary name, renamed into
place and marked done, so a rerun skips finished shards and redoes an interrupted one; `meta.json` comes last, so
a folder that holds it is complete. Unreadable inputs are counted per reason, named in the stats and skipped.
Used by the pre-tokenizer (tokenizer/pretokenize.py) and the dataset builders (data/builders), which pass the
image `encoder` (tokenizer/pretokenize.py `Encoder`) in.
"""

import concurrent.futures
import json
import logging
import math
import time

import jax
import numpy as np

from showo_jax.common import interrupts
from showo_jax.common import metrics as metrics_lib
from showo_jax.common import paths
from showo_jax.data import images as images_lib
from showo_jax.data import records

PLAN_FILE = "pretokenize.json"  # what this folder is a pre-tokenization of (a rerun must match it)
_MAX_REPORTED = 20  # skipped inputs named in the stats
_EXAMPLES_PER_REASON = 3


def _shard_name(name, i, num_shards):
  return f"{name}-{i:05d}-of-{num_shards:05d}.array_record"


def _load_all(source, indices, threads: int, chunk: int):
  """Yields (index, image, fields, skip error) in order, loading `chunk` at a time on `threads` threads."""
  def load(i):
    try:
      image, fields = source.load(i)
      return i, image, fields, None
    except (images_lib.ImageError, records.SkipExample) as e:
      return i, None, None, e
  pool = concurrent.futures.ThreadPoolExecutor(threads) if threads > 0 else None
  indices = list(indices)
  try:
    for start in range(0, len(indices), chunk):  # bounded: a shard's images never sit in memory all at once
      part = indices[start:start + chunk]
      yield from pool.map(load, part) if pool else map(load, part)
  finally:
    if pool:
      pool.shutdown()


def _new_stats() -> dict:
  return {"num_records": 0, "corrupt": 0, "corrupt_examples": [], "fields": [], "field_counts": {}, "skipped": {},
          "skipped_examples": {}}


def _count_skip(stats: dict, error: Exception):
  reason = getattr(error, "reason", "unusable image")  # ImageError: unreadable, corrupt or wrongly sized
  stats["corrupt"] += 1
  stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
  examples = stats["skipped_examples"].setdefault(reason, [])
  if len(examples) < _EXAMPLES_PER_REASON:
    examples.append(str(error))
  if len(stats["corrupt_examples"]) < _MAX_REPORTED:
    stats["corrupt_examples"].append(str(error))
  logging.warning("skipping (%s): %s", reason, error)


def _encode_shard(source, encoder, indices, resize, stats, bar):
  """Records of one shard, in input order; unusable inputs are counted in stats and skipped.

  Without an encoder the source's fields are the records (text); with one, its images become `image_tokens`.
  """
  pending = []  # (fields, image) of one image size

  def emit(record):
    stats["fields"] = sorted(set(stats["fields"]) | set(record))
    for field in record:  # how many records hold each field (a t2i source needs a caption on every one)
      stats["field_counts"][field] = stats["field_counts"].get(field, 0) + 1
    return record

  def flush():
    if not pending:
      return
    codes, grid = encoder(np.stack([im for _, im in pending]))
    for (fields, _), row in zip(pending, codes):
      record = dict(fields, image_tokens=row.astype(encoder.token_dtype))
      if not resize:
        record["token_grid"] = np.asarray(grid, np.int16)
      yield emit(record)
    bar.update(len(pending))
    pending.clear()

  threads = 0 if getattr(source, "in_memory", False) else int(getattr(source, "threads", 8))
  chunk = 4 * (encoder.batch_size if encoder else 256)
  for _, image, fields, error in _load_all(source, indices, threads, chunk):
    if error is not None:
      _count_skip(stats, error)
      bar.update(1)
      continue
    if encoder is None:
      yield emit(fields)
      bar.update(1)
      continue
    if pending and (image.shape != pending[0][1].shape or len(pending) == encoder.batch_size):
      yield from flush()
    pending.append((fields, image))
  yield from flush()


def _check_plan(output_folder: str, plan: dict):
  """Refuses a folder that holds another dataset; records this one's plan if it is new."""
  path = paths.join(output_folder, PLAN_FILE)
  if paths.exists(path):
    old = json.loads(paths.read_text(path))
    diff = [k for k in plan if k != "checkpoint" and old.get(k) != plan[k]]
    if diff:
      raise ValueError(f"{output_folder} holds a pre-tokenization with {diff[0]}={old.get(diff[0])!r}, not "
                       f"{plan[diff[0]]!r}: use a new --output folder")
    return
  paths.write_text(path, json.dumps(plan, indent=1))  # each process writes the same plan, atomically


def _merge_stats(done_files) -> tuple[dict, set]:
  totals = {"num_records": 0, "corrupt": 0, "corrupt_examples": [], "skipped": {}, "skipped_examples": {},
            "field_counts": {}}
  fields = set()
  for done in done_files:
    stats = json.loads(paths.read_text(done))
    totals["num_records"] += stats["num_records"]
    totals["corrupt"] += stats["corrupt"]
    totals["corrupt_examples"] += stats["corrupt_examples"][:_MAX_REPORTED - len(totals["corrupt_examples"])]
    for reason, count in stats.get("skipped", {}).items():
      totals["skipped"][reason] = totals["skipped"].get(reason, 0) + count
      examples = totals["skipped_examples"].setdefault(reason, [])
      examples += stats["skipped_examples"][reason][:_EXAMPLES_PER_REASON - len(examples)]
    fields.update(stats["fields"])
    for field, count in stats.get("field_counts", {}).items():
      totals["field_counts"][field] = totals["field_counts"].get(field, 0) + count
  return totals, fields


def write_sharded(source, output_folder: str, plan: dict, *, encoder=None, resize: bool = True,
                  records_per_shard: int = 10_000, name: str = "data", meta: dict = None,
                  process_index: int = None, process_count: int = None, desc: str = "") -> dict:
  """Writes the records of `source` as a resumable, per-process sharded record folder; returns the stats.

  Args:
    source: random access to inputs: `len(source)`, `source.load(i)` → (uint8 [H, W, 3] image or None, fields);
      it raises `images_lib.ImageError` / `records.SkipExample` for an input to skip (counted per reason).
      `source.threads` (default 8; 0 = this thread only) loads ahead; `in_memory` sources load in this thread.
    output_folder: the record folder (records.RecordSource / records.open_source read it).
    plan: what the folder is a build of; a rerun with a different plan is refused.
    encoder: turns images into `image_tokens`; None = the fields are the records (text-only sources).
    resize: False = each record also carries its `token_grid` (images encoded at their own size).
    records_per_shard: inputs per output shard (the unit of resumption and of the split over processes).
    name: shard file prefix.
    meta: extra meta.json fields.
    process_index, process_count: this process's share (shard i is written by process i % count); default
      jax's. With explicit values the processes need not form a jax group: the last to finish writes meta.json.

  Returns:
    {"num_records", "corrupt" (all skipped), "corrupt_examples", "skipped" {reason: count},
     "skipped_examples" {reason: [messages]}, "num_shards", "shards_skipped", "complete", "seconds", "output"}.
  """
  t0 = time.perf_counter()
  in_jax_group = process_index is None and process_count is None
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= index < count:
    raise ValueError(f"process index {index} is not in [0, {count})")
  if records_per_shard < 1:
    raise ValueError(f"--records-per-shard must be >= 1, got {records_per_shard}")
  n = len(source)
  num_shards = max(1, math.ceil(n / records_per_shard))
  plan = dict(plan, num_inputs=n, num_shards=num_shards, name=name)
  paths.makedirs(output_folder)
  _check_plan(output_folder, plan)

  bar = metrics_lib.progress_bar(n, desc=desc or f"build {output_folder}")
  bounds = np.linspace(0, n, num_shards + 1).astype(int)
  done_files, skipped = [], 0
  for i in range(num_shards):
    final = paths.join(output_folder, _shard_name(name, i, num_shards))
    done = paths.join(output_folder, f".{_shard_name(name, i, num_shards)}.done.json")
    done_files.append(done)
    if paths.exists(done) and paths.exists(final):
      skipped += 1
      bar.update(int(bounds[i + 1] - bounds[i]))
      continue
    if i % count != index:
      continue  # another process writes this shard
    stats = _new_stats()
    # A shard is written whole under a temporary name: an interrupted one is redone, never half-kept.
    tmp = paths.join(output_folder, f".tmp-{i:05d}")
    paths.remove(tmp)
    examples = _encode_shard(source, encoder, range(bounds[i], bounds[i + 1]), resize, stats, bar)
    stats["num_records"] = records.write_records(tmp, examples, name="shard", num_shards=1)
    paths.move(paths.join(tmp, _shard_name("shard", 0, 1)), final)  # complete shards only, under final names
    paths.remove(tmp)
    paths.write_text(done, json.dumps(stats))
    if interrupts.received() and i + count < num_shards:  # finished shards are kept; a rerun skips them
      bar.close()
      interrupts.stop(f"{output_folder}: {sum(paths.exists(d) for d in done_files)} of {num_shards} shards "
                      "written")
  bar.close()
  if in_jax_group and count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("write_sharded")
  complete = all(paths.exists(d) for d in done_files)
  out = dict(num_shards=num_shards, shards_skipped=skipped, complete=complete, output=output_folder)
  if not complete:  # explicit process split: another process still writes; its end writes meta.json
    logging.info("%s: %d of %d shards done; meta.json follows when the last process finishes", output_folder,
                 sum(paths.exists(d) for d in done_files), num_shards)
    return dict(out, num_records=0, corrupt=0, corrupt_examples=[], skipped={}, skipped_examples={},
                seconds=time.perf_counter() - t0)
  totals, fields = _merge_stats(done_files)
  info = dict(plan, **(meta or {}), num_records=totals["num_records"], num_shards=num_shards, fields=sorted(fields),
              field_counts=totals["field_counts"], corrupt=totals["corrupt"],
              corrupt_examples=totals["corrupt_examples"], skipped=totals["skipped"],
              skipped_examples=totals["skipped_examples"])
  if not in_jax_group or index == 0:  # meta.json last: a folder holding it is complete (records.read_meta)
    paths.write_text(paths.join(output_folder, records.META), json.dumps(info, indent=1))
  if totals["corrupt"]:
    logging.warning("%s: skipped %d unusable inputs (%s)", output_folder, totals["corrupt"],
                    ", ".join(f"{r}: {c}" for r, c in sorted(totals["skipped"].items())))
  return dict(totals, **out, seconds=time.perf_counter() - t0)
