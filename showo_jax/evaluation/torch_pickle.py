"""PyTorch `torch.save` files read without torch: a state dict of tensors → {name: numpy array}.

Both formats torch has written: the zip archive (torch ≥ 1.6: `*/data.pkl` + one raw file per storage) and the
legacy stream (magic number, protocol, system info, the pickled object, the storage keys, then each storage as
an int64 element count and its bytes; pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` is one). Unpickling
goes through an allow-list (tensor rebuilds, storage types, OrderedDict), as torch's `weights_only` loading does,
so a file cannot run code.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
           "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": None}


class _Tensor:
  """A tensor to build once its storage's bytes are known."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def build(self, buffers) -> np.ndarray:
    dtype, key = self.storage
    if dtype is None:
      raise ValueError("bfloat16 tensors are not supported; save the file in float32")
    flat = buffers[key]
    if not self.size:
      return flat[self.offset].copy()
    item = np.dtype(dtype).itemsize
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size, [s * item for s in self.stride])
    return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(tensor, *unused):
  return tensor


class _Unpickler(pickle.Unpickler):

  def __init__(self, file):
    super().__init__(file)
    self.storages = {}  # key -> dtype

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _DTYPES:
      return name
    raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

  def persistent_load(self, pid):
    # ('storage', storage type, key, location, numel[, view metadata])
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    dtype = _DTYPES[pid[1]] if isinstance(pid[1], str) else None
    self.storages[str(pid[2])] = dtype
    return dtype, str(pid[2])


def _to_arrays(obj, buffers, source):
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{source}: holds a {type(obj).__name__}, not a state dict")
  return {str(k): v.build(buffers) for k, v in obj.items() if isinstance(v, _Tensor)}


def _zip(data: bytes, source: str) -> dict:
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    names = archive.namelist()
    pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
      raise ValueError(f"{source}: a zip file without data.pkl (not a torch.save file)")
    root = pkl[:-len("data.pkl")]
    unpickler = _Unpickler(io.BytesIO(archive.read(pkl)))
    obj = unpickler.load()
    buffers = {key: np.frombuffer(archive.read(f"{root}data/{key}"), dtype or np.uint16)
               for key, dtype in unpickler.storages.items()}
  return _to_arrays(obj, buffers, source)


def _legacy(data: bytes, source: str) -> dict:
  f = io.BytesIO(data)
  if pickle.load(f) != LEGACY_MAGIC:
    raise ValueError(f"{source}: not a torch.save file (no magic number)")
  pickle.load(f), pickle.load(f)  # protocol version, system info
  unpickler = _Unpickler(f)  # reads the object and leaves f just after it, as torch's own loader relies on
  obj = unpickler.load()
  keys = pickle.load(f)
  buffers = {}
  for key in keys:
    count, = struct.unpack("<q", f.read(8))
    dtype = unpickler.storages[str(key)] or np.uint16
    buffers[str(key)] = np.frombuffer(f.read(count * np.dtype(dtype).itemsize), dtype)
  return _to_arrays(obj, buffers, source)


def load(data: bytes, source: str = "the file") -> dict:
  """{name: array} of a torch.save'd state dict (zip or legacy format); ValueError naming `source` otherwise."""
  try:
    return _zip(data, source) if data[:4] == b"PK\x03\x04" else _legacy(data, source)
  except (pickle.UnpicklingError, EOFError, struct.error, KeyError, zipfile.BadZipFile) as e:
    raise ValueError(f"{source}: not a readable torch.save state dict ({e})") from None
