"""Writing converted checkpoints (what interop/conversion.py and interop/llm_init.py share): staged output folders
renamed into place when complete, our params-only checkpoint writer, and the official config.json beside a source.
"""

import contextlib
import json
import os
import shutil
import tempfile

import numpy as np

from showo_jax.common import checkpointing
from showo_jax.common import paths
from showo_jax.interop import reader

CheckpointError = reader.CheckpointError
CHECKPOINTS = "checkpoints"


def _holds_checkpoint(folder: str) -> bool:
  if not paths.isdir(folder):
    return False
  names = set(paths.listdir(folder))
  if CHECKPOINTS in names or any(n.isdigit() for n in names):
    return True
  return any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names)


@contextlib.contextmanager
def staged_output(output: str, overwrite: bool):
  """Yields a temporary folder beside `output`; on success its entries replace those of `output`.

  Nothing is left behind when the body raises, and an existing checkpoint is only replaced with `overwrite`.
  A cloud `output` is staged on local disk and uploaded at the end, its completion marks last.
  """
  output = paths.resolve(output)
  if paths.isfile(output):
    raise CheckpointError(f"{output}: exists and is not a folder")
  if _holds_checkpoint(output) and not overwrite:
    raise CheckpointError(f"{output}: already holds a checkpoint (pass --overwrite to replace it)")
  if paths.is_cloud(output):
    with tempfile.TemporaryDirectory(prefix="showo_convert_") as tmp:
      yield tmp
      for name in os.listdir(tmp):
        paths.remove(paths.join(output, name))
      paths.copy_tree(tmp, output)
    return
  parent = os.path.dirname(output)
  made, folder = [], parent  # the parent folders this call makes, innermost first
  while folder and not os.path.exists(folder):
    made.append(folder)
    folder = os.path.dirname(folder)
  os.makedirs(parent, exist_ok=True)
  _remove_abandoned(parent, os.path.basename(output))
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.converting-{os.getpid()}-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the output folder's mode
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in made:  # a refused conversion leaves no empty folders behind either
      try:
        os.rmdir(folder)
      except OSError:
        break
    raise
  if not os.path.exists(output):
    os.rename(tmp, output)
    return
  for name in os.listdir(tmp):
    dst = os.path.join(output, name)
    if os.path.exists(dst):  # move the old entry aside first so the swap is two renames
      old = f"{dst}.replaced-{os.getpid()}"
      os.rename(dst, old)
      os.rename(os.path.join(tmp, name), dst)
      shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
    else:
      os.rename(os.path.join(tmp, name), dst)
  os.rmdir(tmp)


def _remove_abandoned(parent: str, name: str):
  """Staging folders of an earlier conversion into `name` that was killed (its process is gone)."""
  prefix = f".{name}.converting-"
  for entry in os.listdir(parent):
    if not entry.startswith(prefix):
      continue
    pid = entry[len(prefix):].split("-", 1)[0]
    try:
      os.kill(int(pid), 0)
      continue  # still converting
    except (ValueError, ProcessLookupError):
      pass
    except PermissionError:
      continue
    shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _nest(flat: dict) -> dict:
  """{"mm_projector.0.weight": a} → {"mm_projector": {"0": {"weight": a}}} (Orbax-friendly names)."""
  out = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def write_checkpoint(folder: str, params, config, extras=None):
  """Writes FOLDER/checkpoints/0 in the layout the trainer writes (params-only `state` + `config`).

  The numpy leaves are written where they lie (the Checkpointer's converter mode), 1 GB at a time: the save
  adds no second copy of the model.
  """
  state = {"step": np.zeros((), np.int32), "params": params}
  if extras:
    state["extras"] = _nest(extras)
  ckpt = checkpointing.Checkpointer(paths.join(folder, CHECKPOINTS), async_save=False, save_concurrent_gb=1)
  try:
    ckpt.save(0, state, config=config)
  finally:
    ckpt.close()


def source_config_json(source: str) -> dict:
  """The config.json beside a checkpoint source (its folder, or the folder of the file); {} if there is none."""
  path = paths.resolve(source)
  folder = path if paths.isdir(path) else paths.parent(path)
  cfg_path = paths.join(folder, "config.json")
  if not paths.exists(cfg_path):
    return {}
  try:
    return json.loads(paths.read_text(cfg_path))
  except ValueError as e:
    raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
