"""Reads official (PyTorch) state dicts into flat dicts of numpy arrays, without torch where possible.

Sources: a dict of arrays, a `.npz` (keys may carry a `param.` prefix, as the parity files do), a
`.safetensors` file, a sharded safetensors folder (`*.safetensors.index.json`), or a `.bin` (only with torch
installed, loaded with `weights_only=True`), or a hub-layout folder holding one of those.
"""

import json

import numpy as np

from showo_jax.common import paths

_FOLDER_FILES = ("pytorch_model.safetensors", "model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("pytorch_model.safetensors.index.json", "model.safetensors.index.json")


class CheckpointError(ValueError):
  """A checkpoint source is missing, unreadable or holds the wrong keys; the message names it."""


def read_state_dict(source, prefix_filter: str = "param.") -> dict:
  """Returns {official key: numpy array} for any supported source."""
  if isinstance(source, dict):
    return {k: np.asarray(v) for k, v in source.items()}
  path = paths.resolve(source)
  if paths.isdir(path):
    return read_state_dict(_file_in_folder(path), prefix_filter)
  if not paths.exists(path):
    raise CheckpointError(f"{path}: no such file or folder")
  if path.endswith(".npz"):
    try:
      with np.load(paths.local_copy(path), allow_pickle=False) as data:
        keys = list(data.keys())
        if any(k.startswith(prefix_filter) for k in keys):
          return {k[len(prefix_filter):]: data[k] for k in keys if k.startswith(prefix_filter)}
        return {k: data[k] for k in keys}
    except ValueError as e:  # object arrays: reading them would unpickle, i.e. run code from the file
      if "allow_pickle" in str(e):
        raise CheckpointError(f"{path}: holds pickled object arrays (refused: unpickling runs code from the "
                              "file; save plain numeric arrays)") from None
      raise CheckpointError(f"{path}: unreadable .npz ({e})") from None
    except (OSError, EOFError) as e:
      raise CheckpointError(f"{path}: unreadable .npz ({type(e).__name__}: {e})") from None
  if path.endswith(".index.json"):
    return _read_sharded(path)
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  if path.endswith((".bin", ".pt", ".pth")):
    return _read_torch(path)
  raise CheckpointError(f"{path}: not a checkpoint (expected .npz, .safetensors, .bin or a folder)")


def _file_in_folder(folder: str) -> str:
  for name in _INDEX_FILES + _FOLDER_FILES:
    if paths.exists(paths.join(folder, name)):
      return paths.join(folder, name)
  found = [f for f in paths.listdir(folder) if f.endswith((".safetensors", ".npz", ".bin"))]
  if len(found) == 1:
    return paths.join(folder, found[0])
  raise CheckpointError(f"{folder}: no recognisable checkpoint (looked for {', '.join(_INDEX_FILES + _FOLDER_FILES)})")


def _read_safetensors(path: str) -> dict:
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  try:
    return dict(st_numpy.load_file(paths.local_copy(path)))
  except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers.
    raise CheckpointError(f"{path}: unreadable safetensors file ({type(e).__name__}: {e})") from None


def read_weight_map(index_path: str) -> dict:
  """{key: shard file name} of a `*.safetensors.index.json`, checked: an object of names, each shard a plain file
  name beside the index (never a path out of its folder)."""
  try:
    mapping = json.loads(paths.read_text(index_path))["weight_map"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{index_path}: bad safetensors index ({type(e).__name__}: {e})") from None
  if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
    raise CheckpointError(f"{index_path}: bad safetensors index (weight_map must map tensor names to shard files)")
  for shard in mapping.values():
    if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
      raise CheckpointError(f"{index_path}: shard {shard!r} is not a file beside the index (refused)")
  return mapping


def _read_sharded(index_path: str) -> dict:
  weight_map = read_weight_map(index_path)
  folder = paths.parent(index_path)
  out = {}
  for shard in sorted(set(weight_map.values())):
    out.update(_read_safetensors(paths.join(folder, shard)))
  return out


def _read_torch(path: str) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise CheckpointError(f"{path}: a PyTorch .bin checkpoint needs torch installed "
                          "(or convert it to .safetensors first)") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise CheckpointError(f"{path}: unreadable PyTorch checkpoint ({type(e).__name__}: {e})") from None
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
