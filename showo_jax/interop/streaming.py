"""Tensor-by-tensor reading and writing of safetensors files, so conversions hold one model copy at most.

`open_state_dict(path)` returns a `LazyStateDict`: a read-only mapping from official key to numpy array whose
values are read from disk on each access (with plain `pread`s, not mmap, so pages read once are not kept
resident) and whose `shapes()` come from the headers alone. It understands a `.safetensors` file, a sharded
folder (`*.safetensors.index.json`), a hub folder holding either, and falls back to `reader.read_state_dict`
(whole file in memory) for `.npz` / `.bin`. `write_safetensors(path, shapes, tensors)` streams arrays into a
file whose header is written first from the known shapes.
"""

import collections.abc
import json
import math
import os
import struct

import ml_dtypes
import numpy as np

from showo_jax.common import paths
from showo_jax.interop import reader

CheckpointError = reader.CheckpointError

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
# A header larger than this is not a real safetensors header (the format caps it at 100 MB).
_MAX_HEADER = 100 * 1024 * 1024


def _read_header(path: str) -> tuple[dict, int]:
  """({key: (dtype, shape, start, end)}, data offset) of one file; raises CheckpointError naming it."""
  try:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise CheckpointError(f"{path}: truncated safetensors file (no header)")
      (n,) = struct.unpack("<Q", raw)
      if n > min(_MAX_HEADER, size - 8):
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file (header length {n}, file size {size})")
      header = json.loads(f.read(n), object_pairs_hook=_no_duplicate_keys)
  except OSError as e:
    raise CheckpointError(f"{path}: unreadable ({e.strerror})") from None
  except (ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
  header.pop("__metadata__", None)
  out = {}
  for key, info in header.items():
    try:
      if info["dtype"] not in _DTYPES:
        raise CheckpointError(f"{path}: tensor {key!r} has unknown dtype {info['dtype']!r}")
      dtype = np.dtype(_DTYPES[info["dtype"]])
      shape = tuple(int(d) for d in info["shape"])
      start, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {key!r}") from None
    if min(shape, default=0) < 0 or start < 0 or end < start:
      raise CheckpointError(f"{path}: tensor {key!r} has a negative shape or offsets {[start, end]}")
    if end - start != dtype.itemsize * math.prod(shape) or 8 + n + end > size:
      raise CheckpointError(f"{path}: tensor {key!r} lies outside the file or its offsets do not match its shape "
                            f"{list(shape)} (truncated or corrupt safetensors file)")
    out[key] = (dtype, shape, start, end)
  previous = None
  for key, (_, _, start, end) in sorted(out.items(), key=lambda kv: (kv[1][2], kv[1][3])):
    if previous is not None and start < previous[1] and end > start:
      raise CheckpointError(f"{path}: tensors {previous[0]!r} and {key!r} overlap in the file (corrupt header)")
    previous = (key, max(end, previous[1] if previous else 0))
  return out, 8 + n


def _no_duplicate_keys(pairs):
  keys = [k for k, _ in pairs]
  if len(keys) != len(set(keys)):
    raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
  return dict(pairs)


class CheckedStateDict(collections.abc.Mapping):
  """A state dict whose tensors are checked as they are read: learned parameters (`*.weight`, `*.bias`,
  embeddings) floating point (an I32 label on F32 bytes would load as integers; buffers such as LFQ's
  `power_vals` may be integer) and every tensor finite unless `allow_non_finite` (then a warning).
  CheckpointError names the tensor (the importer adds the source)."""

  def __init__(self, state, allow_non_finite: bool = False):
    self._state, self.allow_non_finite = state, allow_non_finite
    self.description = getattr(state, "description", "")

  def __getitem__(self, key):
    value = np.asarray(self._state[key])
    floating = np.issubdtype(value.dtype, np.floating) or value.dtype == ml_dtypes.bfloat16
    learned = key.rsplit(".", 1)[-1] in ("weight", "bias") or "embed" in key
    if learned and not floating:
      raise CheckpointError(f"tensor {key!r} is {value.dtype}, but the official layout holds it in floating point "
                            "(a mislabelled dtype?)")
    bad = int(value.size - np.count_nonzero(np.isfinite(value.astype(np.float32)))) if floating else 0
    if bad:
      message = f"tensor {key!r} holds {bad} non-finite values (NaN or inf)"
      if not self.allow_non_finite:
        raise CheckpointError(message + " (--allow-non-finite imports it anyway)")
      import logging  # pylint: disable=g-import-not-at-top
      logging.warning("%s: %s: imported as asked (--allow-non-finite)", self.description, message)
    return value

  def __contains__(self, key):  # Mapping's default would read (and check) the tensor
    return key in self._state

  def __iter__(self):
    return iter(self._state)

  def __len__(self):
    return len(self._state)

  def shapes(self) -> dict:
    return self._state.shapes()

  def nbytes(self) -> int:
    return self._state.nbytes()


class LazyStateDict(collections.abc.Mapping):
  """{official key: numpy array}, each value read from disk when asked for (never cached)."""

  def __init__(self, entries: dict, description: str):
    self._entries = entries  # key -> (path, dtype, shape, absolute start, absolute end)
    self.description = description

  def __getitem__(self, key):
    path, dtype, shape, start, end = self._entries[key]
    out = np.empty(shape, dtype)
    try:
      with open(path, "rb") as f:
        f.seek(start)
        got = f.readinto(memoryview(out.reshape(-1).view(np.uint8))) if out.size else 0
    except OSError as e:
      raise CheckpointError(f"{path}: unreadable at key {key!r} ({e.strerror})") from None
    if got != end - start:
      raise CheckpointError(f"{path}: truncated safetensors file at key {key!r}")
    return out

  def __iter__(self):
    return iter(self._entries)

  def __len__(self):
    return len(self._entries)

  def shapes(self) -> dict:
    return {k: e[2] for k, e in self._entries.items()}

  def nbytes(self) -> int:
    return sum(e[4] - e[3] for e in self._entries.values())


class _EagerStateDict(dict):
  """A fully loaded state dict with the LazyStateDict query methods (for .npz / .bin sources)."""

  description = ""

  def shapes(self) -> dict:
    return {k: tuple(np.shape(v)) for k, v in self.items()}

  def nbytes(self) -> int:
    return sum(np.asarray(v).nbytes for v in self.values())


def _file_entries(path: str) -> dict:
  path = paths.local_copy(path)  # a cloud file is read from its cached local copy
  header, base = _read_header(path)
  return {k: (path, dtype, shape, base + s, base + e) for k, (dtype, shape, s, e) in header.items()}


def _sharded_entries(index_path: str) -> dict:
  weight_map = reader.read_weight_map(index_path)
  folder = paths.parent(index_path)
  out = {}
  for shard in sorted(set(weight_map.values())):
    entries = _file_entries(paths.join(folder, shard))
    for key, value in entries.items():
      if key in weight_map and weight_map[key] == shard:
        out[key] = value
  missing = sorted(set(weight_map) - set(out))
  if missing:
    raise CheckpointError(f"{index_path}: key {missing[0]!r} is listed in the index but missing from "
                          f"its shard {weight_map[missing[0]]}")
  return out


def resolve(path: str) -> str:
  """The file a source path stands for (a hub folder → its weights file or index)."""
  path = paths.resolve(path)
  if not paths.exists(path):
    raise CheckpointError(f"{path}: no such file or folder")
  return reader._file_in_folder(path) if paths.isdir(path) else path  # pylint: disable=protected-access


def open_state_dict(source) -> collections.abc.Mapping:
  """A LazyStateDict for safetensors sources; a loaded dict (same query methods) for .npz / .bin."""
  path = resolve(source)
  if path.endswith(".index.json"):
    return LazyStateDict(_sharded_entries(path), path)
  if path.endswith(".safetensors"):
    return LazyStateDict(_file_entries(path), path)
  out = _EagerStateDict(reader.read_state_dict(path))
  out.description = path
  return out


def _header_bytes(specs) -> bytes:
  header, offset = {}, 0
  for key, (shape, dtype) in specs:
    dtype = np.dtype(dtype)
    n = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    header[key] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
    offset += n
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the format pads the header so that the data starts 8-byte aligned
  return struct.pack("<Q", len(raw)) + raw


def write_safetensors(path: str, specs, tensors):
  """Writes a safetensors file tensor by tensor.

  Args:
    path: the file to write.
    specs: [(key, (shape, dtype))] in file order: the header is written from these before any data.
    tensors: an iterable of (key, array) in the same order (e.g. a generator converting one tensor at a time).
  """
  specs = list(specs)
  done = 0
  with open(path, "wb") as f:
    f.write(_header_bytes(specs))
    # A plain loop over `tensors`, not zip(): zip keeps the previous item alive until the next one is made,
    # which would hold a streaming producer's last batch while it reads the next.
    for got_key, value in tensors:
      if done == len(specs):
        raise CheckpointError(f"{path}: tensor {got_key!r} has no header entry (more tensors than header entries)")
      key, (shape, dtype) = specs[done]
      value = np.ascontiguousarray(value)
      if got_key != key or tuple(value.shape) != tuple(shape) or value.dtype != np.dtype(dtype):
        raise CheckpointError(f"{path}: tensor {got_key!r} {value.shape} {value.dtype} does not match the "
                              f"header entry {key!r} {tuple(shape)} {np.dtype(dtype)}")
      f.write(memoryview(value.reshape(-1).view(np.uint8)))
      del value  # before the producer makes the next one
      done += 1
  if done != len(specs):
    raise CheckpointError(f"{path}: header entry {specs[done][0]!r} has no tensor (fewer tensors than entries)")
