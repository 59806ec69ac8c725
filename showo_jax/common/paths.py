"""The one path layer: every user path (workdir, records, checkpoints, images, reports) is a local path or a
cloud URL (`gs://bucket/...`, `s3://...`) and goes through here, on `etils.epath` (what Orbax uses).

Cloud object stores have no append and no directory rename, so:
- whole-file writes (`write_text`, `write_bytes`) are atomic everywhere: a temporary file renamed over the
  target on disk, one object upload (atomic by the store) in the cloud;
- append-style files (train.log, metrics.jsonl, TensorBoard events) are written to a local `Staging` folder
  and copied up whole by `Staging.sync()` (at each checkpoint and at the end);
- `local_copy` gives libraries that only read local files (ArrayRecord, tokenizers) a cached local copy.

`STORAGE_EMULATOR_HOST` (the standard variable of GCS emulators) is honoured by every client: gcsfs reads it
itself; TensorStore (Orbax's array writer) is pointed at it by `configure_gcs`, with anonymous credentials.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid

from etils import epath

CLOUD_SCHEMES = ("gs://", "s3://")
_CACHE = os.path.join(tempfile.gettempdir(), "showo_jax_cache")


def is_cloud(path) -> bool:
  return str(path).startswith(CLOUD_SCHEMES)


_UNSET = object()
_gcs_configured_for = _UNSET  # the STORAGE_EMULATOR_HOST (or None) the GCS clients were last set up for


def configure_gcs():
  """Sets up what the GCS clients need, once per emulator setting: no cached listings in gcsfs (fsspec's `gcs`
  config), and with `STORAGE_EMULATOR_HOST` TensorStore's endpoint and test token, anonymous gcsfs, and no
  bucket-type probe. Values already set (in the environment or fsspec's config) are kept. `resolve` calls it for
  a gs:// path, the one place every cloud path goes through before a client (this layer, Orbax) sees it."""
  global _gcs_configured_for
  host = os.environ.get("STORAGE_EMULATOR_HOST") or None
  if host == _gcs_configured_for:
    return
  import fsspec  # pylint: disable=g-import-not-at-top
  # No cached listings: Orbax writes array data through TensorStore, around gcsfs, so a cached listing of a
  # step folder would miss files (and other hosts' writes).
  fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)
  if host:
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host if "://" in host else "http://" + host)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    # An emulator has no control plane: gcsfs's bucket-type probe (gRPC) would retry against it for minutes.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    fsspec.config.conf["gcs"].setdefault("token", "anon")  # no credential lookup per call
  _gcs_configured_for = host


def resolve(path) -> str:
  """An absolute local path (`~` expanded) or the cloud URL as given (never `os.path.abspath`'d). Pure for a
  local path; a gs:// path sets up the GCS clients first (`configure_gcs`, once per emulator setting)."""
  path = os.fspath(path) if not isinstance(path, str) else path
  if is_cloud(path):
    if path.startswith("gs://"):
      configure_gcs()
    return path.rstrip("/") if path.count("/") > 3 else path
  return os.path.abspath(os.path.expanduser(path))


def Path(path) -> epath.Path:  # pylint: disable=invalid-name
  return epath.Path(resolve(path))


def join(base, *parts) -> str:
  if is_cloud(base):
    return "/".join([str(base).rstrip("/")] + [str(p).strip("/") for p in parts])
  return os.path.join(base, *parts)


def parent(path) -> str:
  return str(Path(path).parent) if is_cloud(path) else os.path.dirname(resolve(path))


def basename(path) -> str:
  return str(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path) -> bool:
  return Path(path).exists()


def isdir(path) -> bool:
  return Path(path).is_dir()


def isfile(path) -> bool:
  p = Path(path)
  return p.exists() and not p.is_dir()


def makedirs(path):
  if isfile(path):
    raise NotADirectoryError(f"{resolve(path)} is a file, not a folder")
  Path(path).mkdir(parents=True, exist_ok=True)


def listdir(path) -> list:
  """Sorted child names (empty when `path` is missing)."""
  p = Path(path)
  if not p.is_dir():
    return []
  return sorted(c.name for c in p.iterdir())


def glob(folder, pattern: str) -> list:
  """Sorted full paths of `folder`'s children matching `pattern` (one level)."""
  return sorted(join(folder, c.name) for c in Path(folder).glob(pattern))


def walk_files(folder) -> list:
  """Every file under `folder`, as paths relative to it (sorted, '/'-separated); [] when it is missing."""
  folder = resolve(folder)
  if is_cloud(folder):
    fs, root = _fs(folder)
    if not fs.isdir(root):
      return []
    return sorted(f[len(root.rstrip("/")) + 1:] for f in fs.find(root))
  out = []
  for dirpath, _, files in os.walk(folder):
    rel = os.path.relpath(dirpath, folder).replace(os.sep, "/")
    out.extend(f if rel == "." else f"{rel}/{f}" for f in files)
  return sorted(out)


def _fs(path):
  """(fsspec filesystem, its path) of a cloud URL."""
  import fsspec  # pylint: disable=g-import-not-at-top
  return fsspec.core.url_to_fs(resolve(path))


def read_text(path) -> str:
  return Path(path).read_bytes().decode("utf-8")


def read_jsonl(path, what: str) -> list:
  """[(line number, value)] of a JSON-lines file, blank lines skipped. `what` names the file in errors (a flag such
  as "--questions"): a missing file, a line that is not JSON (with its number) and a file with no lines are one
  line each."""
  if not isfile(path):
    raise FileNotFoundError(f"{what} {path}: no such file")
  rows = []
  for number, line in enumerate(read_text(path).splitlines(), 1):
    if line.strip():
      try:
        rows.append((number, json.loads(line)))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
  if not rows:
    raise ValueError(f"{what} {path}: the file has no lines")
  return rows


def read_bytes(path) -> bytes:
  return Path(path).read_bytes()


def write_bytes(path, data: bytes):
  """Writes the whole file atomically: a reader sees the old content or the new, never half of it."""
  if is_cloud(path):
    makedirs(parent(path))
    Path(path).write_bytes(data)
    return
  path = resolve(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    with open_local(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_text(path, text: str):
  write_bytes(path, text.encode("utf-8"))


def create_exclusive(path, data: bytes) -> bool:
  """Creates `path` only if it does not exist (O_EXCL on disk, a generation-0 precondition in the cloud);
  False when it already exists. The primitive the workdir lock is built on."""
  if is_cloud(path):
    fs, fs_path = _fs(path)
    try:
      fs.pipe_file(fs_path, data, mode="create")
    except (FileExistsError, OSError) as e:
      if isinstance(e, FileExistsError) or "412" in str(e) or "Precondition" in str(e):
        return False
      raise
    return True
  path = resolve(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  return True


def remove(path):
  """Removes a file or a folder tree; a missing path is no error."""
  p = Path(path)
  if is_cloud(path):
    fs, fs_path = _fs(path)
    with contextlib.suppress(FileNotFoundError):
      fs.rm(fs_path, recursive=True)
  elif p.is_dir():
    shutil.rmtree(resolve(path), ignore_errors=True)
  elif p.exists() or os.path.islink(resolve(path)):
    os.remove(resolve(path))


def move(src, dst):
  """Renames a file or a folder (in the cloud: a server-side copy of each object, then the delete)."""
  if is_cloud(src) or is_cloud(dst):
    if not (is_cloud(src) and is_cloud(dst)):
      raise ValueError(f"cannot move {src} to {dst}: between local disk and the cloud, copy instead")
    fs, src_path = _fs(src)
    _, dst_path = _fs(dst)
    if fs.isdir(src_path):
      for rel in walk_files(src):
        fs.copy(f"{src_path}/{rel}", f"{dst_path}/{rel}")
    else:
      fs.copy(src_path, dst_path)
    fs.rm(src_path, recursive=True)
    return
  os.makedirs(os.path.dirname(resolve(dst)), exist_ok=True)
  os.replace(resolve(src), resolve(dst))


def copy_tree(src, dst, last=("showo_manifest.json", "meta.json")):
  """Copies every file under `src` to `dst` (either may be cloud); files named in `last` (the marks of a whole
  folder) go after all the others, so an interrupted copy is never taken for a complete one."""
  files = walk_files(src)
  for rel in sorted(files, key=lambda r: basename(r) in last):
    write_bytes(join(dst, rel), read_bytes(join(src, rel)))


def file_digest(path, chunk: int = 1 << 22) -> str:
  digest = hashlib.sha256()
  with Path(path).open("rb") as f:
    while block := f.read(chunk):
      digest.update(block)
  return digest.hexdigest()


def open_local(path, mode):
  """Plain open() of a path this layer already resolved to the local disk."""
  import builtins  # pylint: disable=g-import-not-at-top
  return builtins.open(path, mode)


def local_copy(path) -> str:
  """A local path holding `path`'s file (itself on disk; a cached download of a cloud file)."""
  if not is_cloud(path):
    return resolve(path)
  key = hashlib.sha256(resolve(path).encode()).hexdigest()[:16]
  local = os.path.join(_CACHE, key, basename(path))
  size = Path(path).stat().length
  if not (os.path.exists(local) and os.path.getsize(local) == size):
    write_bytes(local, read_bytes(path))
  return local


class Staging:
  """Append-style files of a workdir: on disk they are written in place; for a cloud workdir into a local
  folder that `sync()` copies up (whole files, only those that changed)."""

  def __init__(self, workdir: str):
    self.workdir = resolve(workdir)
    if is_cloud(self.workdir):
      key = hashlib.sha256(self.workdir.encode()).hexdigest()[:16]
      self.local = os.path.join(_CACHE, "staging", key)
      os.makedirs(self.local, exist_ok=True)
    else:
      self.local = self.workdir
    self._synced = {}

  def path(self, *parts) -> str:
    """The local path to write `workdir/parts` at."""
    path = os.path.join(self.local, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path

  def fetch(self, *parts):
    """Brings an existing cloud file (e.g. metrics.jsonl of the run being resumed) into the staging folder."""
    if self.local != self.workdir and exists(join(self.workdir, *parts)):
      data = read_bytes(join(self.workdir, *parts))
      with open_local(self.path(*parts), "wb") as f:
        f.write(data)

  def sync(self):
    """Copies changed files up (process 0 only: each host keeps its own log, one set lands in the bucket)."""
    import jax  # pylint: disable=g-import-not-at-top
    if self.local == self.workdir or jax.process_index() != 0:
      return
    for dirpath, _, files in os.walk(self.local):
      for name in files:
        local = os.path.join(dirpath, name)
        stat = os.stat(local)
        if self._synced.get(local) == (stat.st_size, stat.st_mtime_ns):
          continue
        rel = os.path.relpath(local, self.local).replace(os.sep, "/")
        with open_local(local, "rb") as f:
          write_bytes(join(self.workdir, rel), f.read())
        self._synced[local] = (stat.st_size, stat.st_mtime_ns)
