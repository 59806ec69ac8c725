"""Official PyTorch checkpoints ↔ showo_jax checkpoints: `import_showo`, `import_magvit`, `export_showo`.

The CLI is `python -m showo_jax.convert` (showo_jax/convert.py, whose docstring gives the formats); the LLM →
Show-o initialisation is interop/llm_init.py, the output folders and checkpoint writer interop/checkpoint_writer.py.

Memory: import reads and converts tensors one at a time into one host copy of the model, which Orbax writes in
place (no second copy), so its peak is about one model plus ~1 GB; export restores and writes a few hundred MB
of leaves at a time, so its peak does not grow with the model (`python -m showo_jax.bench convert`). Every
output is written in a temporary folder beside the target and renamed into place when complete.
"""

import json
import os

import numpy as np

from showo_jax.common import checkpointing
from showo_jax.common import paths
from showo_jax.common import sharding
from showo_jax.config import showo as showo_config
from showo_jax.interop import checkpoint_writer
from showo_jax.interop import checkpoints
from showo_jax.interop import magvit_keys
from showo_jax.interop import showo_keys
from showo_jax.interop import streaming
from showo_jax.models import dense
from showo_jax.models import lora
from showo_jax.tokenizer import config as tokenizer_config
from showo_jax.tokenizer import trainer as tokenizer_trainer

CheckpointError = checkpoint_writer.CheckpointError
CHECKPOINTS = checkpoint_writer.CHECKPOINTS
WEIGHTS = "pytorch_model.safetensors"
_MAGVIT_PREFIXES = ("encoder.", "decoder.", "quantize.")


###########################  import  ###########################

def detect_kind(keys, description: str) -> str:
  keys = list(keys)
  if not keys:
    raise CheckpointError(f"{description}: holds no tensors")
  if any(k.startswith(showo_keys.PREFIX) for k in keys):
    return "showo"
  if all(k.startswith(_MAGVIT_PREFIXES) for k in keys):
    return "magvit"
  odd = sorted(k for k in keys if not k.startswith(_MAGVIT_PREFIXES + showo_keys.EXTRA_PREFIXES))
  raise CheckpointError(f"{description}: key {odd[0]!r} belongs to neither Show-o (showo.*) nor MAGVIT-v2 "
                        f"(encoder.*/decoder.*): another architecture? (for a plain LLM use `convert llm`)")


def import_showo(source: str, output: str, *, overwrite: bool = False, allow_non_finite: bool = False):
  """Official Show-o → our checkpoint in `output`; returns the config. Every tensor is checked as it is read
  (streaming.CheckedStateDict: floating point, finite unless `allow_non_finite`)."""
  state = streaming.CheckedStateDict(streaming.open_state_dict(source), allow_non_finite)
  desc = getattr(state, "description", source)
  if detect_kind(state.keys(), desc) != "showo":
    raise CheckpointError(f"{desc}: a MAGVIT-v2 checkpoint, not a Show-o (use --kind magvit)")
  meta = showo_keys.usable_config_json(checkpoint_writer.source_config_json(source))
  try:
    config = showo_keys.infer_config(state.shapes(), config_json=meta)
  except CheckpointError as e:
    raise CheckpointError(f"{desc}: {e}") from None
  if meta.get("num_vq_tokens"):
    config.data.num_image_tokens = int(meta["num_vq_tokens"])
    config.data.resolution = int(round(np.sqrt(config.data.num_image_tokens))) * config.data.downsample
  with checkpoint_writer.staged_output(output, overwrite) as tmp:
    try:
      params, extras = showo_keys.params_from_official(state, config)
    except CheckpointError as e:
      raise CheckpointError(f"{desc}: {e}") from None
    if extras:
      config.model.extra_keys = sorted(extras)
    checkpoint_writer.write_checkpoint(tmp, params, config, extras)
    del params, extras
  return config


def import_magvit(source: str, output: str, *, overwrite: bool = False, allow_non_finite: bool = False):
  """Official MAGVIT-v2 → a tokenizer checkpoint (the layout `train_tokenizer` writes); returns the config."""
  state = streaming.CheckedStateDict(streaming.open_state_dict(source), allow_non_finite)
  desc = getattr(state, "description", source)
  if detect_kind(state.keys(), desc) != "magvit":
    raise CheckpointError(f"{desc}: a Show-o checkpoint, not a MAGVIT-v2 (use --kind showo)")
  try:
    params, config = magvit_keys.params_from_official(state)
  except CheckpointError as e:
    raise CheckpointError(f"{desc}: {e}") from None
  with checkpoint_writer.staged_output(output, overwrite) as tmp:
    _write_tokenizer_checkpoint(tmp, params, config)
  return config


def _write_tokenizer_checkpoint(folder, params, arch_config):
  """A step-0 tokenizer training state around `params`, through the trainer's own state builder."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = tokenizer_config.add_training_fields(ml_collections.ConfigDict(arch_config.to_dict()))
  config.data.resolution = arch_config.resolution
  config.disc.enabled = False  # an imported tokenizer comes without a discriminator
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  run = tokenizer_trainer.TokenizerRun(config, mesh, with_feature_net=False)
  # Built directly rather than by run.init_state (which compiles a random init we would throw away); the
  # structure is the trainer's own, so its restore target (run.abstract_state) matches.
  jnp = jax.numpy
  params = jax.tree.map(lambda a, p: jnp.asarray(p, a.dtype), run.abstract_state.params, params)
  state = tokenizer_trainer.TokenizerState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=run.tx.init(params),
      ema_params=params if run.abstract_state.ema_params is not None else None, disc_params=None,
      disc_opt_state=None, lecam_ema=jnp.zeros((2,), jnp.float32))
  ckpt = checkpointing.Checkpointer(paths.join(folder, tokenizer_trainer.CHECKPOINTS), async_save=False)
  try:
    ckpt.save(0, state, config=config)
  finally:
    ckpt.close()


###########################  export  ###########################

def _open_checkpoint(checkpoint: str):
  """(Checkpointer, step, config) of our checkpoint (a workdir, checkpoints folder or step folder)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  found = checkpoints._checkpoint_dir(checkpoint) if paths.exists(checkpoint) else None  # pylint: disable=protected-access
  if found is None:
    raise CheckpointError(f"{checkpoint}: no showo_jax checkpoint here (expected DIR/checkpoints/STEP)")
  folder, _ = found
  ckpt = checkpointing.Checkpointer(folder, async_save=False)
  try:  # the newest step whose digests hold (a damaged one is moved aside with a warning)
    step, config = ckpt.restore_newest_intact(lambda s: ml_collections.ConfigDict(ckpt.saved_config(s)))
    if step is None:
      raise CheckpointError(f"{checkpoint}: no intact checkpoint left (see {folder}.quarantine)")
    return ckpt, step, config
  except BaseException:
    ckpt.close()
    raise


def official_config_json(config) -> dict:
  """The hub config.json of SPEC §9 for a Show-o config, plus the LLM's fields (HF names) that the official file
  leaves to `llm_model_path`: so that importing it back (showo_keys.infer_config) needs no outside knowledge.
  The official loader ignores the extra fields."""
  layout = showo_config.vocab_layout(config)
  m = config.model
  eps_key = "layer_norm_eps" if m.family == "phi" else "rms_norm_eps"
  return {"_class_name": "Showo", "codebook_size": layout.codebook_size,
          "llm_model_path": "microsoft/phi-1_5" if m.family == "phi" else "",
          "llm_vocab_size": layout.llm_vocab_size, "load_from_showo": True,
          "mask_token_id": int(m.vocab_size) - 1, "num_vq_tokens": int(config.data.num_image_tokens),
          "vocab_size": int(m.vocab_size), "w_clip_vit": bool(m.get("extra_keys")),
          "bos_token_id": layout.bos_id, "eos_token_id": layout.eos_id, "rope_theta": float(m.rope_theta),
          eps_key: float(m.norm_eps), "partial_rotary_factor": float(m.rotary_fraction),
          "head_dim": showo_config.head_dim(m)}


# Bytes of saved leaves restored per Orbax call by the export: bounds its memory (a leaf larger than this is read
# alone). One Phi-1.5 layer is ~200 MB, so this is about one layer per call.
EXPORT_BATCH_BYTES = 256 * 2**20


def _export_plan(config, saved: dict, checkpoint: str):
  """[(official key, saved leaf path, layer index or None, to_torch)]: the params rows, then the extras. A run
  that kept an EMA exports its EMA params (what it sampled and evaluated with)."""
  root = _params_root(saved)
  plan = [(key, (root,) + path, index, to_torch)
          for key, path, index, to_torch in showo_keys.official_plan(config)]
  for _, leaf, _, _ in plan:
    if leaf not in saved:
      raise CheckpointError(f"{checkpoint}: the checkpoint has no param {'/'.join(leaf[1:])} that its config "
                            f"needs (not a Show-o checkpoint?)")
  ident = lambda x, *_: x
  extras = sorted((".".join(map(str, p[1:])), p) for p in saved if p[0] == "extras")
  return plan + [(key, path, None, ident) for key, path in extras]


def _params_root(saved: dict) -> str:
  return "ema_params" if any(leaf[0] == "ema_params" for leaf in saved) else "params"


def _adapters(saved: dict) -> dict:
  """{kernel leaf: (lora_a leaf, lora_b leaf)} of the exported params' LoRA adapters."""
  root = _params_root(saved)
  return {leaf[:-1] + ("kernel",): (leaf, leaf[:-1] + ("lora_b",)) for leaf in saved
          if leaf[0] == root and lora.is_adapter(leaf) and leaf[-1] == "lora_a"}


def _batches(plan, saved: dict, budget: int, adapters: dict):
  """Consecutive plan rows whose distinct leaves (with a kernel's adapters) add up to at most `budget` bytes (a
  larger leaf goes alone)."""
  size = lambda leaf: int(np.prod(saved[leaf][0], dtype=np.int64)) * np.dtype(saved[leaf][1]).itemsize
  rows, leaves, nbytes = [], {}, 0
  for row in plan:
    needed = [row[1], *adapters.get(row[1], ())]
    new = [leaf for leaf in needed if leaf not in leaves]
    if new and rows and nbytes + sum(map(size, new)) > budget:
      yield rows, leaves
      rows, leaves, nbytes, new = [], {}, 0, needed
    for leaf in new:
      leaves[leaf], nbytes = saved[leaf], nbytes + size(leaf)
    rows.append(row)
  if rows:
    yield rows, leaves


def export_showo(checkpoint: str, output: str, *, overwrite: bool = False, merge_lora: bool = False):
  """Our checkpoint → official folder (config.json + pytorch_model.safetensors), streamed.

  The saved params are restored a batch of leaves at a time (EXPORT_BATCH_BYTES), converted and written; the
  header comes first, from the saved shapes alone. Memory: one batch plus a tensor, not the model.
  `merge_lora`: a checkpoint with LoRA adapters is written with each adapter folded into its kernel
  (W + alpha / r · A · B, models/lora.py), which the official layout needs (it has no adapter tensors).
  """
  ckpt, step, config = _open_checkpoint(checkpoint)
  try:
    if config.model.get("image_conv", 0):
      raise CheckpointError(f"{checkpoint}: trained with config.model.image_conv={config.model.image_conv} (a "
                            "convolution over the image-token grid), which the official model has no place for")
    saved = ckpt.saved_leaves(step)
    plan = _export_plan(config, saved, checkpoint)
    adapters = _adapters(saved)
    if adapters and not merge_lora:
      raise CheckpointError(f"{checkpoint}: holds LoRA adapters (rank {config.model.lora.rank}), which the "
                            "official layout has no place for: export with --merge-lora to fold them into the "
                            "kernels")
    if merge_lora and not adapters:
      raise CheckpointError(f"{checkpoint}: --merge-lora, but the checkpoint holds no LoRA adapters")
    alpha = float(config.model.lora.alpha) if adapters else 0.0

    def convert(value, index, to_torch):
      return showo_keys.to_official(value, index, to_torch, config)

    # Zero-stride stand-ins of the saved shapes: the (view-producing) converters give each official shape
    # without touching any data.
    stand_in = lambda leaf: np.broadcast_to(np.zeros((), saved[leaf][1]), saved[leaf][0])
    specs = []
    for key, leaf, index, to_torch in plan:
      out = convert(stand_in(leaf), index, to_torch)
      specs.append((key, (tuple(out.shape), out.dtype)))

    def tensors():
      for rows, leaves in _batches(plan, saved, EXPORT_BATCH_BYTES, adapters):
        values = ckpt.restore_leaves(step, leaves)
        for leaf in [leaf for leaf in values if leaf in adapters]:
          a, b = (values.pop(x) for x in adapters[leaf])
          stacked = 1 if config.model.scan_layers and leaf[1] == "layers" else 0
          values[leaf] = np.asarray(dense.merged_kernel(values[leaf], a, b, alpha, stacked))
        for key, leaf, index, to_torch in rows:
          yield key, convert(values[leaf], index, to_torch)
        del values

    with checkpoint_writer.staged_output(output, overwrite) as tmp:
      streaming.write_safetensors(os.path.join(tmp, WEIGHTS), specs, tensors())  # tmp: always local
      paths.write_text(os.path.join(tmp, "config.json"), json.dumps(official_config_json(config), indent=2))
  finally:
    ckpt.close()
