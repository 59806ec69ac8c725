"""Pieces the dataset builders share: input listing, line-indexed JSONL, text and image checks, raw byte reads.

Every bad input is raised as `records.SkipExample(reason, message)`: the writer (tokenize_images.write_sharded)
counts it under its reason, names a few in the stats, and goes on.
"""

import json
import os
import tarfile
import threading

import numpy as np

from showo_jax.common import paths
from showo_jax.data import images as images_lib
from showo_jax.data import records

SkipExample = records.SkipExample


def expand_inputs(inputs, extensions: tuple, what: str) -> list[str]:
  """Files named by `inputs` (paths, globs, or folders searched recursively for `extensions`; local or cloud),
  sorted per input."""
  files = []
  for spec in inputs:
    if paths.isdir(spec):
      found = [paths.join(spec, rel) for rel in paths.walk_files(spec)
               if rel.lower().endswith(extensions) and not paths.basename(rel).startswith(".")]
      if not found:
        raise FileNotFoundError(f"{spec}: no {what} files ({', '.join(extensions)}) in this folder")
      files += found
    elif paths.exists(spec):
      files.append(spec)
    else:
      folder, _, pattern = spec.rpartition("/")
      found = paths.glob(folder or ".", pattern) if paths.isdir(folder or ".") else []
      if not found:
        raise FileNotFoundError(f"{spec}: no such file, folder or matching {what} files")
      files += found
  return files


class JsonlIndex:
  """Random access to the non-blank lines of JSONL files by byte offset (nothing but offsets held in memory)."""

  def __init__(self, files):
    self.paths = list(files)
    starts, lengths, lines, counts = [], [], [], []
    for path in self.paths:
      s, l, n = [], [], []
      offset = 0
      with paths.open_local(paths.local_copy(path), "rb") as f:
        for number, line in enumerate(f, 1):
          if line.strip():
            s.append(offset)
            l.append(len(line))
            n.append(number)
          offset += len(line)
      starts.append(np.asarray(s, np.int64))
      lengths.append(np.asarray(l, np.int64))
      lines.append(np.asarray(n, np.int64))
      counts.append(len(s))
    self._starts, self._lengths, self._lines = starts, lengths, lines
    self._ends = np.cumsum(counts)
    self._files = RawFiles()

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def locate(self, index: int) -> tuple[int, int]:
    """(file number, line number within it) of the index-th non-blank line."""
    f = int(np.searchsorted(self._ends, index, side="right"))
    local = index - (int(self._ends[f - 1]) if f else 0)
    return f, local

  def where(self, index: int) -> str:
    f, local = self.locate(index)
    return f"{self.paths[f]}:{int(self._lines[f][local])}"

  def row(self, index: int) -> dict:
    """The JSON object on that line; SkipExample("bad json line") when it is not one."""
    f, local = self.locate(index)
    raw = self._files.read(self.paths[f], int(self._starts[f][local]), int(self._lengths[f][local]))
    try:
      row = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
      row = None
    if not isinstance(row, dict):
      raise SkipExample("bad json line", f"{self.where(index)}: not a JSON object")
    return row


class RawFiles:
  """Byte ranges of files, read with pread from descriptors opened once (safe from several threads); a cloud
  file is read from its local cached copy (paths.local_copy)."""

  def __init__(self):
    self._fds, self._lock = {}, threading.Lock()

  def read(self, path: str, offset: int, size: int) -> bytes:
    with self._lock:
      fd = self._fds.get(path)
      if fd is None:
        fd = self._fds[path] = os.open(paths.local_copy(path), os.O_RDONLY)
    return os.pread(fd, size, offset)

  def __del__(self):
    for fd in getattr(self, "_fds", {}).values():
      os.close(fd)


def text(value, kind: str, where: str) -> str:
  """A caption / text field as a non-empty str; SkipExample("empty KIND" | "non-text KIND") otherwise."""
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError:
      raise SkipExample(f"non-text {kind}", f"{where}: {kind} is not UTF-8 text") from None
  if not isinstance(value, str):
    raise SkipExample(f"non-text {kind}", f"{where}: {kind} is a {type(value).__name__}, not text")
  if not value.strip():
    raise SkipExample(f"empty {kind}", f"{where}: empty {kind}")
  return value.strip()


def first_field(row: dict, names: tuple, kind: str, where: str):
  """The value of the first of `names` present in `row`; SkipExample("no KIND") when none is."""
  for name in names:
    if name in row:
      return row[name]
  raise SkipExample(f"no {kind}", f"{where}: no {kind} field ({' / '.join(names)})")


def under_root(root: str, rel: str, where: str) -> str:
  """`root/rel` for a relative path that stays inside `root`; SkipExample("path outside the root") for an
  absolute path or one that climbs out with `..` (never opened)."""
  parts = rel.replace("\\", "/").split("/")
  if rel.startswith(("/", "\\")) or "://" in rel or (len(rel) > 1 and rel[1] == ":") or ".." in parts:
    raise SkipExample("path outside the root", f"{where}: image path {rel!r} is absolute or leaves {root} "
                      "(refused, not opened)")
  return paths.join(root, rel)


def image_file(path: str, resolution: int) -> np.ndarray:
  """uint8 [res, res, 3] of an image file; SkipExample("missing file" | "corrupt image") naming it."""
  if not paths.exists(path):
    raise SkipExample("missing file", f"{path}: no such file")
  try:
    return images_lib.load_image(path, resolution)
  except images_lib.ImageError as e:
    raise SkipExample("corrupt image", str(e)) from None


def image_bytes(data: bytes, resolution: int, name: str) -> np.ndarray:
  """uint8 [res, res, 3] of encoded image bytes (a tar member); SkipExample("corrupt image") naming it."""
  try:
    return images_lib.load_image(data, resolution, name=name)
  except images_lib.ImageError as e:
    raise SkipExample("corrupt image", str(e)) from None


def tar_members(path: str, fileobj=None, base: int = 0) -> tuple[list, str]:
  """([(member name, data offset, size)] of the regular files, damage message or "") of an uncompressed tar.

  `fileobj`/`base`: a tar stored inside another one, at byte `base` of `path`. Members up to a damaged or
  truncated part are kept (a member cut short is caught when it is read).
  """
  local = paths.local_copy(path) if fileobj is None else None
  if fileobj is None:
    with paths.open_local(local, "rb") as f:
      magic = f.read(6)
    if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00":
      raise ValueError(f"{path}: a compressed tar cannot be read by offset; decompress it first")
  members = []
  try:
    with tarfile.open(local, mode="r:", fileobj=fileobj) as tar:
      for member in iter(tar.next, None):
        if member.isfile():
          members.append((member.name, base + member.offset_data, member.size))
  except (tarfile.TarError, OSError, EOFError) as e:
    return members, f"{path}: damaged tar after {len(members)} members ({type(e).__name__}: {e})"
  return members, ""


def member_bytes(files: RawFiles, path: str, name: str, offset: int, size: int) -> bytes:
  """A tar member's data; SkipExample("corrupt tar member") when the archive ends inside it."""
  data = files.read(path, offset, size)
  if len(data) != size:
    raise SkipExample("corrupt tar member", f"{path}:{name}: truncated ({len(data)} of {size} bytes)")
  return data
