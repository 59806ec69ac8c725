"""ArrayRecord datasets of pre-tokenized examples: writing, reading, and tfds sources.

A dataset is a folder of `NAME-SSSSS-of-NNNNN.array_record` shards plus `meta.json` (record count, fields,
anything the writer adds). Each record is a msgpack-encoded dict of numpy arrays / str / int (e.g.
`{"image_tokens": int16[N], "caption": str, "label": int}`), decoded by `RecordSource`, a grain-compatible
random-access source. tfds datasets prepared in `array_record` format are read with `tfds.data_source`
(no TensorFlow needed) through the same interface (`open_source`); one that is not prepared is an error, never
a download.
"""

import json
import logging
import os
import tempfile

import numpy as np
from flax import serialization

from showo_jax.common import paths

META = "meta.json"


class SkipExample(ValueError):
  """An input a dataset writer skips and counts: `reason` groups the count ("missing file", "empty caption", …);
  the one-line message names the file / record."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


def write_records(folder: str, examples, *, name: str = "data", num_shards: int = 1, meta=None) -> int:
  """Writes an iterable of dicts round-robin into `num_shards` shards; returns the record count.

  Files are written under temporary names and renamed at the end (a cloud folder: written locally, then
  uploaded), and meta.json comes last, so a folder with meta.json is complete.
  """
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  paths.makedirs(folder)
  names = [f"{name}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]
  with tempfile.TemporaryDirectory(prefix="showo_records_") as scratch:
    local = paths.resolve(folder) if not paths.is_cloud(folder) else scratch
    writers = [ArrayRecordWriter(os.path.join(local, n + ".tmp"), "group_size:1") for n in names]
    count = 0
    for example in examples:
      writers[count % num_shards].write(serialization.msgpack_serialize(_to_serializable(example)))
      count += 1
    for w in writers:
      w.close()
    for n in names:
      if local == scratch:
        with paths.open_local(os.path.join(local, n + ".tmp"), "rb") as f:
          paths.write_bytes(paths.join(folder, n), f.read())
      else:
        os.replace(os.path.join(local, n + ".tmp"), os.path.join(local, n))
  info = dict(meta or {}, num_records=count, name=name, num_shards=num_shards)
  paths.write_text(paths.join(folder, META), json.dumps(info, indent=1))
  return count


def _to_serializable(example: dict) -> dict:
  out = {}
  for k, v in example.items():
    if isinstance(v, (str, bytes, int, float, bool)):
      out[k] = v
    else:
      out[k] = np.asarray(v)
  return out


def read_meta(folder: str) -> dict:
  path = paths.join(folder, META)
  if not paths.exists(path):
    raise FileNotFoundError(f"{folder}: not a complete record dataset (no {META})")
  return json.loads(paths.read_text(path))


class RecordSource:
  """Random access to decoded records; a corrupt record is logged, counted and replaced by None."""

  def __init__(self, folder: str):
    import grain  # pylint: disable=g-import-not-at-top
    self.meta = read_meta(folder)
    shards = paths.glob(folder, f"{self.meta['name']}-*-of-*.array_record")
    if len(shards) != self.meta["num_shards"]:
      raise FileNotFoundError(f"{folder}: expected {self.meta['num_shards']} shards, found {len(shards)}")
    # ArrayRecord reads local files: a cloud folder's shards are cached on this host's disk first.
    self._source = grain.sources.ArrayRecordDataSource([paths.local_copy(p) for p in shards])
    self.num_corrupt = 0

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    raw = self._source[index]
    try:
      return serialization.msgpack_restore(raw)
    except Exception as e:  # pylint: disable=broad-except
      self.num_corrupt += 1
      logging.warning("skipping corrupt record %d (%s: %s)", index, type(e).__name__, e)
      return None


class WithFields:
  """A source whose records have some fields replaced (the same images asked another question, say)."""

  def __init__(self, source, **fields):
    self.source, self.fields = source, fields

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    record = self.source[index]
    return None if record is None else dict(record, **self.fields)

  @property
  def num_corrupt(self) -> int:
    return getattr(self.source, "num_corrupt", 0)


def open_source(spec: str):
  """A record folder, or `tfds:NAME[:SPLIT]@DATA_DIR` for a tfds dataset prepared in array_record format."""
  if spec.startswith("tfds:"):
    return _open_tfds(spec)
  return RecordSource(spec)


def _open_tfds(spec: str):
  """A tfds dataset already prepared in DATA_DIR. Never downloads or prepares one: `tfds.data_source` would by
  default (download=True), fetching what may be hundreds of GB from a training job."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  body, _, data_dir = spec[len("tfds:"):].partition("@")
  name, _, split = body.partition(":")
  if not name:
    raise ValueError(f"{spec}: no dataset name (use tfds:NAME[:SPLIT]@DATA_DIR)")
  data_dir = data_dir or None
  where = (f"data_dir {data_dir}" if data_dir
           else "the default tfds data_dir (TFDS_DATA_DIR or ~/tensorflow_datasets)")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:  # its message lists every registered dataset, one per line
    raise FileNotFoundError(f"{spec}: no tfds dataset {name!r}: not registered, nor prepared in {where}") from None
  # Checked here: unprepared, data_source(download=False) fails with a misleading file-format error.
  if not builder.is_prepared():
    raise FileNotFoundError(f"{spec}: tfds dataset {name!r} is not prepared in {where} (nothing is downloaded: "
                            f"prepare it there in array_record format first)")
  try:
    return tfds.data_source(name, split=split or "train", data_dir=data_dir, download=False)
  except (NotImplementedError, ValueError, KeyError) as e:  # e.g. prepared as tfrecord, an unknown split
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ValueError(f"{spec}: cannot open tfds dataset {name!r} in {where}: {reason}") from None
