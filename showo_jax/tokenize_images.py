r"""Pre-tokenizes an image collection into an ArrayRecord dataset of MAGVIT-v2 token ids.

  python -m showo_jax.tokenize_images --checkpoint DIR --input SPEC --output FOLDER

--checkpoint: a train_tokenizer workdir / checkpoint folder (EMA weights) or an official MAGVIT-v2 file/folder.
--input: an image folder (captions from `captions.jsonl` lines {"file", "caption"[, "label"]} or a `.txt`
  beside each image), `records:FOLDER` / a record folder or `tfds:NAME[:SPLIT]@DATA_DIR` (images in the
  `--image_field` field, uint8 arrays or encoded bytes), or `embedded:train` / `embedded:test`.
Each record: `image_tokens` int16 [h·w] (row-major over the token grid; int32 past 15 bits) plus the carried
fields: `caption`, `label`, and for the embedded digits `question` ("What digit is this?") and `answer` (the
digit word), so one dataset feeds both t2i and mmu. With --noresize the images are encoded at their own size
(which must be a multiple of the downsampling factor) and each record also carries `token_grid` [h, w].

The input is split into contiguous shards; each finished shard is renamed into place and marked done, so a
rerun skips finished shards. Unreadable images and corrupt records are counted, reported and skipped.
The dataset builders (showo_jax/data/builders) feed their sources through the same `Encoder` and `write_sharded`.
"""

import concurrent.futures
import functools
import json
import logging
import math
import os
import shutil
import time

import jax
import ml_collections
import numpy as np

from showo_jax import config_magvit
from showo_jax import sharding
from showo_jax.common import xla_options
from showo_jax.data import images as images_lib
from showo_jax.data import records
from showo_jax.models import magvit
from showo_jax.training import metrics as metrics_lib
from showo_jax.training import tokenizer_trainer

PLAN_FILE = "pretokenize.json"  # what this folder is a pre-tokenization of (a rerun must match it)
_MAX_REPORTED = 20  # skipped inputs named in the stats
_EXAMPLES_PER_REASON = 3


@functools.lru_cache(maxsize=8)
def _encoder(config_json: str):
  model = magvit.magvit_from_config(ml_collections.ConfigDict(json.loads(config_json)))

  def encode(params, images_u8):  # uint8 [B, H, W, 3] → int32 [B, h, w]
    return model.apply({"params": params}, images_lib.to_float(images_u8), method=magvit.MagvitV2.encode)[2]

  return jax.jit(encode, compiler_options=xla_options.conv_net())


class Encoder:
  """Batched uint8 [B, H, W, 3] → int32 [B, h·w], sharded over the local devices (batch over data × fsdp).

  Also says how to feed it: `resolution` (image side), `factor` (downsampling), `token_dtype`, `codebook_bits`.
  """

  def __init__(self, params, config, batch_size: int, resolution: int = 0):
    self.mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)), jax.local_devices())
    dp = sharding.data_parallel_size(self.mesh)
    self.batch_size = -(-batch_size // dp) * dp  # a multiple of the device count
    self._sharding = sharding.batch_sharding(self.mesh)
    self.params = jax.device_put(params, sharding.replicated(self.mesh))
    self._fn = _encoder(json.dumps(config.to_dict(), sort_keys=True))
    self.factor = config_magvit.downsample_factor(config)
    data_cfg = config.get("data", None)
    self.resolution = int(resolution or (data_cfg.resolution if data_cfg else config.resolution))
    self.codebook_bits = int(config.codebook_bits)
    self.token_dtype = np.int16 if self.codebook_bits <= 15 else np.int32

  @classmethod
  def from_checkpoint(cls, checkpoint, batch_size: int = 64, resolution: int = 0) -> "Encoder":
    """`checkpoint`: what `tokenizer_trainer.load_tokenizer` reads, or a (params, config) pair."""
    params, config = (checkpoint if isinstance(checkpoint, tuple)
                      else tokenizer_trainer.load_tokenizer(checkpoint))
    return cls(params, config, batch_size, resolution)

  def __call__(self, batch: np.ndarray) -> np.ndarray:
    n = len(batch)
    padded = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - n, 0)]) if n < self.batch_size else batch
    with jax.set_mesh(self.mesh):
      indices = self._fn(self.params, jax.device_put(padded, self._sharding))
    indices = np.asarray(jax.device_get(indices))[:n]
    return indices.reshape(n, -1), indices.shape[1:]


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
  return {"num_records": 0, "corrupt": 0, "corrupt_examples": [], "fields": [], "skipped": {},
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
  path = os.path.join(output_folder, PLAN_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = [k for k in plan if k != "checkpoint" and old.get(k) != plan[k]]
    if diff:
      raise ValueError(f"{output_folder} holds a pre-tokenization with {diff[0]}={old.get(diff[0])!r}, not "
                       f"{plan[diff[0]]!r}: use a new --output folder")
    return
  tmp = f"{path}.{os.getpid()}.tmp"  # each process writes the same plan; the rename is atomic
  with open(tmp, "w") as f:
    json.dump(plan, f, indent=1)
  os.replace(tmp, path)


def _merge_stats(done_files) -> tuple[dict, set]:
  totals = {"num_records": 0, "corrupt": 0, "corrupt_examples": [], "skipped": {}, "skipped_examples": {}}
  fields = set()
  for done in done_files:
    with open(done) as f:
      stats = json.load(f)
    totals["num_records"] += stats["num_records"]
    totals["corrupt"] += stats["corrupt"]
    totals["corrupt_examples"] += stats["corrupt_examples"][:_MAX_REPORTED - len(totals["corrupt_examples"])]
    for reason, count in stats.get("skipped", {}).items():
      totals["skipped"][reason] = totals["skipped"].get(reason, 0) + count
      examples = totals["skipped_examples"].setdefault(reason, [])
      examples += stats["skipped_examples"][reason][:_EXAMPLES_PER_REASON - len(examples)]
    fields.update(stats["fields"])
  return totals, fields


def write_sharded(source, output_folder: str, plan: dict, *, encoder: Encoder = None, resize: bool = True,
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
  n = len(source)
  num_shards = max(1, math.ceil(n / records_per_shard))
  plan = dict(plan, num_inputs=n, num_shards=num_shards, name=name)
  os.makedirs(output_folder, exist_ok=True)
  _check_plan(output_folder, plan)

  bar = metrics_lib.progress_bar(n, desc=desc or f"build {output_folder}")
  bounds = np.linspace(0, n, num_shards + 1).astype(int)
  done_files, skipped = [], 0
  for i in range(num_shards):
    final = os.path.join(output_folder, _shard_name(name, i, num_shards))
    done = os.path.join(output_folder, f".{_shard_name(name, i, num_shards)}.done.json")
    done_files.append(done)
    if os.path.exists(done) and os.path.exists(final):
      skipped += 1
      bar.update(int(bounds[i + 1] - bounds[i]))
      continue
    if i % count != index:
      continue  # another process writes this shard
    stats = _new_stats()
    # A shard is written whole under a temporary name: an interrupted one is redone, never half-kept.
    tmp = os.path.join(output_folder, f".tmp-{i:05d}")
    shutil.rmtree(tmp, ignore_errors=True)
    examples = _encode_shard(source, encoder, range(bounds[i], bounds[i + 1]), resize, stats, bar)
    stats["num_records"] = records.write_records(tmp, examples, name="shard", num_shards=1)
    os.replace(os.path.join(tmp, _shard_name("shard", 0, 1)), final)  # complete shards only, under final names
    shutil.rmtree(tmp, ignore_errors=True)
    with open(done + ".tmp", "w") as f:
      json.dump(stats, f)
    os.replace(done + ".tmp", done)
  bar.close()
  if in_jax_group and count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("write_sharded")
  complete = all(os.path.exists(d) for d in done_files)
  out = dict(num_shards=num_shards, shards_skipped=skipped, complete=complete, output=output_folder)
  if not complete:  # explicit process split: another process still writes; its end writes meta.json
    logging.info("%s: %d of %d shards done; meta.json follows when the last process finishes", output_folder,
                 sum(os.path.exists(d) for d in done_files), num_shards)
    return dict(out, num_records=0, corrupt=0, corrupt_examples=[], skipped={}, skipped_examples={},
                seconds=time.perf_counter() - t0)
  totals, fields = _merge_stats(done_files)
  info = dict(plan, **(meta or {}), num_records=totals["num_records"], num_shards=num_shards, fields=sorted(fields),
              corrupt=totals["corrupt"], corrupt_examples=totals["corrupt_examples"], skipped=totals["skipped"],
              skipped_examples=totals["skipped_examples"])
  if not in_jax_group or index == 0:  # meta.json last: a folder holding it is complete (records.read_meta)
    tmp = os.path.join(output_folder, f"{records.META}.{index}.tmp")
    with open(tmp, "w") as f:
      json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(output_folder, records.META))
  if totals["corrupt"]:
    logging.warning("%s: skipped %d unusable inputs (%s)", output_folder, totals["corrupt"],
                    ", ".join(f"{r}: {c}" for r, c in sorted(totals["skipped"].items())))
  return dict(totals, **out, seconds=time.perf_counter() - t0)


def pretokenize(checkpoint, input_spec: str, output_folder: str, *, batch_size: int = 64, resolution: int = 0,
                resize: bool = True, image_field: str = "image", records_per_shard: int = 10_000,
                name: str = "data") -> dict:
  """Writes the token dataset of `input_spec` into `output_folder`; returns its stats.

  Args:
    checkpoint: what `tokenizer_trainer.load_tokenizer` reads, or a (params, config) pair.
    input_spec: see the module docstring.
    output_folder: the record folder (records.RecordSource / records.open_source read it).
    batch_size: images per encoder call (rounded up to a multiple of the local device count).
    resolution: image side; 0 = the tokenizer config's `data.resolution` (else its `resolution`).
    resize: False = encode at each image's own size, refusing sizes not divisible by the downsampling factor.
    image_field: the image field of record / tfds inputs.
    records_per_shard: inputs per output shard (the unit of resumption).
    name: shard file prefix.

  Returns:
    {"num_records", "corrupt", "corrupt_examples", "num_shards", "shards_skipped", "seconds", ...}.
  """
  encoder = Encoder.from_checkpoint(checkpoint, batch_size, resolution)
  resolution = encoder.resolution
  collection = images_lib.open_collection(input_spec, resolution, resize=resize, factor=encoder.factor,
                                          image_field=image_field, exact=False)
  plan = {"input": input_spec, "checkpoint": checkpoint if isinstance(checkpoint, str) else "<in memory>",
          "resolution": resolution, "resize": resize}
  grid = resolution // encoder.factor
  meta = dict(codebook_bits=encoder.codebook_bits, token_grid=[grid, grid] if resize else None,
              token_dtype=np.dtype(encoder.token_dtype).name)
  return write_sharded(collection, output_folder, plan, encoder=encoder, resize=resize,
                       records_per_shard=records_per_shard, name=name, meta=meta, desc=f"tokenize {input_spec}")


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  import sys  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  try:
    stats = pretokenize(f.checkpoint, f.input, f.output, batch_size=f.batch_size, resolution=f.resolution,
                        resize=f.resize, image_field=f.image_field, records_per_shard=f.records_per_shard)
  except (FileNotFoundError, ValueError) as e:  # bad input (ImageError, CheckpointError, ConfigError): one line
    sys.exit(f"error: {e}")
  for example in stats.pop("corrupt_examples"):
    logging.warning("skipped: %s", example)
  print(json.dumps(stats))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint", None, "tokenizer: train_tokenizer workdir/checkpoints or official weights")
  flags.DEFINE_string("input", None, "image folder | records:FOLDER | tfds:NAME[:SPLIT]@DIR | embedded:train|test")
  flags.DEFINE_string("output", None, "output record folder")
  flags.DEFINE_integer("batch_size", 64, "images per encoder call")
  flags.DEFINE_integer("resolution", 0, "image side; 0 = the tokenizer's data.resolution")
  flags.DEFINE_bool("resize", True, "resize + center-crop (official); --noresize refuses non-divisible sizes")
  flags.DEFINE_string("image_field", "image", "image field of record/tfds inputs")
  flags.DEFINE_integer("records_per_shard", 10_000, "inputs per output shard (the unit of resumption)")
  flags.mark_flags_as_required(["checkpoint", "input", "output"])
  app.run(main)
