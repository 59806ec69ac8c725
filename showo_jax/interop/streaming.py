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
      header = json.loads(f.read(n))
  except OSError as e:
    raise CheckpointError(f"{path}: unreadable ({e.strerror})") from None
  except (ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
  header.pop("__metadata__", None)
  out = {}
  for key, info in header.items():
    try:
      dtype = np.dtype(_DTYPES[info["dtype"]])
      shape = tuple(int(d) for d in info["shape"])
      start, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise CheckpointError(f"{path}: corrupt safetensors header entry for key {key!r}") from None
    if end - start != dtype.itemsize * int(np.prod(shape, dtype=np.int64)) or 8 + n + end > size:
      raise CheckpointError(f"{path}: key {key!r} lies outside the file or has the wrong byte length "
                            f"(truncated or corrupt safetensors file)")
    out[key] = (dtype, shape, start, end)
  return out, 8 + n


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
  try:
    weight_map = json.loads(paths.read_text(index_path))["weight_map"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{index_path}: bad safetensors index ({e})") from None
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
