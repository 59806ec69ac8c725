"""Loading Show-o params (and their config), and image tokenizers, from anything a user points at.

Accepted: a training workdir (or its `checkpoints/` folder, or one step folder inside it) written by
`showo_jax.train`, or an official Show-o state dict (hub folder / .safetensors / .npz / .bin). The layout of
the returned params (per-layer or scanned) follows the requested config.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from showo_jax.common import checkpoint_integrity as integrity
from showo_jax.common import checkpointing
from showo_jax.common import paths
from showo_jax.config import showo as showo_config
from showo_jax.interop import magvit_keys
from showo_jax.interop import reader
from showo_jax.interop import showo_keys
from showo_jax.models import omni_mask
from showo_jax.models import transformer
from showo_jax.tokenizer import trainer as tokenizer_trainer


def _checkpoint_dir(path: str):
  """(checkpoints folder, step) for a workdir / checkpoints folder / step folder; None if not ours."""
  path = paths.resolve(path)
  for candidate in (paths.join(path, "checkpoints"), path):
    steps = sorted(int(d) for d in paths.listdir(candidate) if d.isdigit())
    if steps:
      return candidate, steps[-1]
  name = paths.basename(path)
  if name.isdigit() and paths.isdir(paths.join(path, "state")):
    return paths.parent(path), int(name)
  return None


def _what_is(path: str) -> str:
  """Why `path` is not one of our Show-o checkpoints, naming what it is instead."""
  if not paths.exists(path):
    return "no such file or folder"
  if tokenizer_trainer.checkpoint_folder(path) is not None:
    return "an image tokenizer checkpoint (train_tokenizer), not a Show-o one: pass it as --tokenizer"
  names = paths.listdir(path) if paths.isdir(path) else [paths.basename(path)]
  if any(n.endswith((".safetensors", ".npz", ".bin", ".index.json")) for n in names):
    return ("official weights, not a showo_jax checkpoint: a MAGVIT-v2 file goes to --tokenizer, a Show-o state "
            "dict through `python -m showo_jax.convert import` first")
  return "no showo_jax training checkpoint here (expected DIR/checkpoints/STEP)"


def load_checkpoint(path: str, step=None):
  """(params as numpy, config) from one of our training checkpoints: the newest intact step unless given (a
  damaged newer step is moved aside with a warning). A run that kept an EMA (config.train.ema_decay > 0) gives
  its EMA params: those are the ones it samples and evaluates with."""
  found = _checkpoint_dir(path)
  if found is None:
    raise reader.CheckpointError(f"{path}: {_what_is(path)}")
  folder, _ = found
  ckpt = checkpointing.Checkpointer(folder, async_save=False)

  def restore(s):
    return ckpt.restore_raw(s), ml_collections.ConfigDict(ckpt.saved_config(s))
  try:
    if step is None:
      step, restored = ckpt.restore_newest_intact(restore)
      if step is None:
        raise reader.CheckpointError(f"{path}: no intact checkpoint left (the damaged ones were moved to "
                                     f"{folder}.quarantine)")
    else:
      problem = integrity.verify(ckpt.step_dir(step))
      if problem is not None:
        raise reader.CheckpointError(f"{path}: checkpoint step {step} is damaged: {problem}")
      restored = restore(step)
  finally:
    ckpt.close()
  state, config = restored
  params = state.get("ema_params") or state["params"]
  return jax.tree.map(np.asarray, params), config


def load_params(source: str, config):
  """Params only, matching `config`'s backbone (shape-checked), from our checkpoint or an official one."""
  if _checkpoint_dir(source) is not None:
    params, saved = load_checkpoint(source)
    if saved.model.scan_layers != config.model.scan_layers:
      params = (showo_keys.stack_layers(params, config.model.num_layers) if config.model.scan_layers
                else showo_keys.unstack_layers(params, config.model.num_layers))
    _check_like(params, config, source)
    return params
  state = reader.read_state_dict(source)
  params, _ = showo_keys.params_from_official(state, config)
  return params


def _check_like(params, config, source):
  model = transformer.Transformer(showo_config.transformer_config(config))
  want = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                                 omni_mask.causal_spans(1, 2)))["params"]
  got_paths = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, leaf in jax.tree_util.tree_flatten_with_path(want)[0]:
    name = jax.tree_util.keystr(path)
    if path not in got_paths:
      raise reader.CheckpointError(f"{source}: param {name} is missing (the checkpoint is for another model)")
    if tuple(got_paths[path].shape) != tuple(leaf.shape):
      raise reader.CheckpointError(f"{source}: param {name} has shape {tuple(got_paths[path].shape)}, "
                                   f"the config expects {tuple(leaf.shape)}")


def load_tokenizer(path: str):
  """(params, config) of an image tokenizer: our checkpoint folder (or its workdir; EMA params when present) or
  an official MAGVIT-v2 file / folder (.npz, .safetensors, .bin, hub folder)."""
  path = paths.resolve(path)
  if not paths.exists(path) or tokenizer_trainer.checkpoint_folder(path) is not None:
    return tokenizer_trainer.load_tokenizer(path)  # ours, or the "no such checkpoint" error
  params, config = magvit_keys.load_official_magvit(path)
  config.data.resolution = config.resolution  # the image size of the released model (256 for the official)
  return params, config
