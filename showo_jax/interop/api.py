"""Numpy-in, numpy-out entry points for working with official Show-o / MAGVIT-v2 weights.

These names are a stable public API (other work and outside checks rely on them):
  load_official_showo(source) -> (params, config)
  showo_logits(params, config, input_ids, allowed) -> float32 [B, L, V]
  attention_mask(input_ids, task, config) -> bool [B, L, L]
  showo_losses(params, config, batch) -> {"t2i", "lm", "mmu", "total"}
  load_official_magvit(source) -> (params, config); magvit_encode(...); magvit_decode(...)

They reproduce the official float32 PyTorch numerics on accelerators too: the configs the loaders return set
`model.matmul_precision` / `precision` to "highest" (no TF32 or bf16 passes), and showo_logits / showo_losses
run the backbone at "highest" whatever the config they are given says.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.common import paths
from showo_jax.config import showo as showo_config
from showo_jax.interop import magvit_keys
from showo_jax.interop import reader
from showo_jax.interop import showo_keys
from showo_jax.models import losses
from showo_jax.models import omni_mask
from showo_jax.models import transformer
from showo_jax.tokenizer import codec

CheckpointError = reader.CheckpointError
load_official_magvit = magvit_keys.load_official_magvit
magvit_encode = codec.magvit_encode
magvit_decode = codec.magvit_decode


def _official_config_json(source):
  """The config.json beside a checkpoint, if it describes a Show-o backbone (showo_keys.usable_config_json)."""
  if isinstance(source, dict):
    return {}
  path = paths.resolve(source)
  folder = path if paths.isdir(path) else paths.parent(path)
  cfg_path = paths.join(folder, "config.json")
  if not paths.exists(cfg_path):
    return {}
  try:
    data = json.loads(paths.read_text(cfg_path))
  except ValueError as e:
    raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
  return showo_keys.usable_config_json(data)


def load_official_showo(source, *, scan_layers: bool = False, **facts):
  """Loads an official Show-o state dict.

  Args:
    source: a dict of numpy arrays keyed as the official state dict, or a path to `.npz`, `.safetensors`
      (read without torch), `.bin` (needs torch; `weights_only=True`) or a hub folder.
    scan_layers: return params in the scanned (stacked-layer) layout.
    **facts: what neither the shapes nor the config.json beside the weights say (a dict source has no
      config.json): `llm_vocab_size`, `codebook_size`, `bos_id`, `eos_id`, `rope_theta`, `norm_eps`,
      `rotary_fraction`, `head_dim` (see showo_keys.infer_config); they override the config.json.
  Returns:
    (params, config): the Flax param tree and the ml_collections config of the inferred model. Sizes come from
    the shapes; the vocabulary split, BOS/EOS and the LLM's numerics from `facts`, the `config.json` beside the
    weights or the released checkpoints' known layout, else a CheckpointError names what is missing;
    `model.matmul_precision` is "highest" (float32 products, as the official model).
  """
  state = reader.read_state_dict(source)
  meta = _official_config_json(source)
  config = showo_keys.infer_config(state, config_json=meta, **facts)
  if meta.get("num_vq_tokens"):
    config.data.num_image_tokens = int(meta["num_vq_tokens"])
    config.data.resolution = int(round(np.sqrt(config.data.num_image_tokens))) * config.data.downsample
  config.model.scan_layers = scan_layers
  config.model.matmul_precision = "highest"
  params, extras = showo_keys.params_from_official(state, config)
  if extras:
    config.model.extra_keys = sorted(extras)
  return params, config


@functools.lru_cache(maxsize=16)
def _jitted_apply(cfg: transformer.TransformerConfig):
  model = transformer.Transformer(cfg)
  return jax.jit(lambda params, ids, allowed: model.apply({"params": params}, ids, allowed))


def _check_ids(input_ids, config):
  ids = np.asarray(input_ids)
  if ids.ndim != 2:
    raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
  bad = (ids < 0) | (ids >= config.model.vocab_size)
  if bad.any():
    b, i = np.argwhere(bad)[0]
    raise ValueError(f"token id {int(ids[b, i])} at input_ids[{b}, {i}] is outside the vocabulary "
                     f"[0, {config.model.vocab_size})")
  return ids.astype(np.int32)


def showo_logits(params, config, input_ids, allowed) -> np.ndarray:
  """float32 logits [B, L, V]; `allowed` is bool [B, L, L] or [B, 1, L, L] (True = may attend), or additive.

  The products run at matmul_precision "highest" whatever `config.model.matmul_precision` is (official numerics).
  """
  ids = _check_ids(input_ids, config)
  allowed = np.asarray(omni_mask.to_allowed(allowed))
  if allowed.shape != (ids.shape[0], ids.shape[1], ids.shape[1]):
    raise ValueError(f"attention mask shape {allowed.shape} does not match input_ids {ids.shape}")
  cfg = dataclasses.replace(showo_config.transformer_config(config), matmul_precision="highest")
  return np.asarray(_jitted_apply(cfg)(params, ids, allowed), np.float32)


def attention_mask(input_ids, task: str, config) -> np.ndarray:
  """bool [B, L, L] exactly as the official builders make it; task in {"t2i", "lm", "mmu"}."""
  ids = _check_ids(input_ids, config)
  layout = showo_config.vocab_layout(config)
  if task == "t2i":
    return np.asarray(omni_mask.predict_next_mask(ids, layout, remove_pad=True))
  if task == "lm":
    return np.asarray(omni_mask.predict_next_mask(ids, layout, remove_pad=False))
  if task == "mmu":
    return np.asarray(omni_mask.mmu_mask(ids, layout))
  raise ValueError(f"unknown task {task!r}; use 't2i', 'lm' or 'mmu'")


def showo_losses(params, config, batch) -> dict:
  """Official losses of a concatenated [t2i; lm; mmu] batch.

  Args:
    batch: `input_ids` [B, L], `labels` [B, L] (-100 = ignored), `attention_mask` (any form accepted by
      showo_logits) and `batch_sizes` = (t2i, lm, mmu) rows in that order along the batch.
  Returns:
    {"t2i", "lm", "mmu", "total"} as Python floats.
  """
  ids = _check_ids(batch["input_ids"], config)
  sizes = tuple(int(s) for s in batch["batch_sizes"])
  if len(sizes) != 3 or sum(sizes) != ids.shape[0]:
    raise ValueError(f"batch_sizes {sizes} must be (t2i, lm, mmu) summing to the batch size {ids.shape[0]}")
  task_ids = np.repeat(np.array([losses.TASK_T2I, losses.TASK_LM, losses.TASK_MMU], np.int32), sizes)
  logits = showo_logits(params, config, ids, batch["attention_mask"])
  out = losses.showo_loss(jnp.asarray(logits), ids, np.asarray(batch["labels"], np.int32), task_ids,
                          **showo_config.loss_settings(config))
  return {"t2i": float(out["loss_t2i"]), "lm": float(out["loss_lm"]), "mmu": float(out["loss_mmu"]),
          "total": float(out["loss"])}


__all__ = ["load_official_showo", "showo_logits", "attention_mask", "showo_losses", "load_official_magvit",
           "magvit_encode", "magvit_decode"]
