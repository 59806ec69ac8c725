"""`python -m showo_jax.convert llm`: a Phi-1.5 / LLaMA-family HF checkpoint as the backbone of a fresh Show-o.

The CLI itself stays in `convert`; this module holds the conversion (`llm_to_showo`).
"""

import numpy as np

from showo_jax.config import showo as showo_config
from showo_jax.interop import checkpoint_writer
from showo_jax.interop import showo_keys
from showo_jax.interop import streaming

CheckpointError = checkpoint_writer.CheckpointError


def _hf_family(keys, desc):
  if "model.final_layernorm.weight" in keys:
    return "phi"
  if "model.norm.weight" in keys:
    return "llama"
  if any(k.startswith(showo_keys.PREFIX) for k in keys):
    raise CheckpointError(f"{desc}: this is a Show-o checkpoint; use `convert import`")
  raise CheckpointError(f"{desc}: neither a Phi (model.final_layernorm.weight) nor a LLaMA-family "
                        f"(model.norm.weight) Hugging Face checkpoint (first key {sorted(keys)[0]!r})")


class _ShowoView(dict):
  """Official Show-o keys over an HF LLM state dict: renamed lazily, resized/created tensors precomputed."""

  def __init__(self, hf, made):
    super().__init__()
    self._hf, self._made = hf, made
    for key in hf:
      if not key.endswith("rotary_emb.inv_freq"):  # old LLaMA checkpoints store this recomputable buffer
        dict.__setitem__(self, showo_keys.PREFIX + key, None)
    for key in made:
      dict.__setitem__(self, key, None)

  def __getitem__(self, key):
    if key in self._made:
      return self._made.pop(key)  # handed over once: no second copy stays here
    return self._hf[key[len(showo_keys.PREFIX):]]


def _resized(rows, new_rows, std, rng, bias=False):
  out = np.zeros((new_rows,) + rows.shape[1:], np.float32) if bias else (
      rng.standard_normal((new_rows,) + rows.shape[1:]) * std).astype(np.float32)
  keep = min(len(rows), new_rows)
  out[:keep] = rows[:keep]
  return out


def llm_to_showo(source: str, output: str, config, *, qk_norm: str = "identity", seed: int = 0,
                 overwrite: bool = False):
  """A Phi-1.5 / LLaMA-family HF checkpoint as the backbone of a fresh Show-o.

  Backbone sizes come from the LLM (its tensors and config.json) and override `config.model`'s; the vocabulary
  layout (`config.model.vocab`) stays. Embedding and head rows: the LLM's first `vocab_size` rows are kept
  (as the official `resize_token_embeddings` does: phi-1.5's padding rows 50295…51199 stay), all further rows
  — special tokens, codebook, [MASK] — are N(0, init_std), new head biases 0. `qk_norm="identity"` adds no
  norm (config.model.qk_norm=False), so text logits equal the LLM's; "init" adds a freshly initialised one
  (weight 1, bias 0, as the official recipe does — which changes the logits). An LLM that has QK-norm keeps it.
  """
  hf = streaming.open_state_dict(source)
  desc = getattr(hf, "description", source)
  shapes = hf.shapes()
  family = _hf_family(shapes, desc)
  meta = checkpoint_writer.source_config_json(source)
  m = config.model
  heads = int(meta.get("num_attention_heads") or 0)
  if not heads:
    raise CheckpointError(f"{source}: config.json with num_attention_heads is needed beside the weights")
  hidden = shapes["model.embed_tokens.weight"][1]
  head_dim = int(meta.get("head_dim") or hidden // heads)
  layers = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("model.layers."))
  l0 = "model.layers.0."
  m.family, m.hidden_size, m.num_layers, m.num_heads = family, int(hidden), int(layers), heads
  m.head_dim = 0 if head_dim * heads == hidden else head_dim
  m.num_kv_heads = shapes[l0 + "self_attn.k_proj.weight"][0] // head_dim
  m.intermediate_size = shapes[l0 + ("mlp.fc1.weight" if family == "phi" else "mlp.gate_proj.weight")][0]
  m.rope_theta = float(meta.get("rope_theta", 10000.0))
  if family == "phi":
    m.rotary_fraction, m.norm_eps = float(meta.get("partial_rotary_factor", 0.5)), float(meta.get("layer_norm_eps", 1e-5))
    qn = ("self_attn.q_layernorm.weight", "self_attn.q_layernorm.bias", "self_attn.k_layernorm.weight",
          "self_attn.k_layernorm.bias")
  else:
    m.rotary_fraction, m.norm_eps = 1.0, float(meta.get("rms_norm_eps", 1e-6))
    qn = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
    if meta.get("rope_scaling"):
      raise CheckpointError(f"{source}: rope_scaling {meta['rope_scaling']} is not supported")
  has_qk = l0 + qn[0] in shapes
  if qk_norm not in ("identity", "init"):
    raise CheckpointError(f"--qk-norm={qk_norm!r}: use 'identity' or 'init'")
  m.qk_norm = has_qk or qk_norm == "init"
  layout = showo_config.vocab_layout(config)
  m.vocab_size = layout.vocab_size
  showo_config.validate(config)
  rows = shapes["model.embed_tokens.weight"][0]
  if rows < layout.llm_vocab_size:
    raise CheckpointError(f"{desc}: model.embed_tokens.weight has {rows} rows, fewer than "
                          f"config.model.vocab.llm_vocab_size={layout.llm_vocab_size}")
  rng = np.random.default_rng(seed)
  made = {}
  p = showo_keys.PREFIX
  with checkpoint_writer.staged_output(output, overwrite) as tmp:
    made[p + "model.embed_tokens.weight"] = _resized(hf["model.embed_tokens.weight"], m.vocab_size, m.init_std, rng)
    head = hf["lm_head.weight"] if "lm_head.weight" in shapes else hf["model.embed_tokens.weight"]  # tied
    made[p + "lm_head.weight"] = _resized(head, m.vocab_size, m.init_std, rng)
    del head
    if family == "phi":
      bias = hf["lm_head.bias"] if "lm_head.bias" in shapes else np.zeros((rows,), np.float32)
      made[p + "lm_head.bias"] = _resized(bias, m.vocab_size, 0.0, rng, bias=True)
    if m.qk_norm and not has_qk:
      d = showo_config.head_dim(m)
      for i in range(layers):
        for name in qn:
          made[f"{p}model.layers.{i}.{name}"] = (np.ones if name.endswith("weight") else np.zeros)((d,), np.float32)
    view = _ShowoView(hf, made)
    try:
      params, extras = showo_keys.params_from_official(view, config)
    except CheckpointError as e:
      raise CheckpointError(f"{desc}: {e}") from None
    checkpoint_writer.write_checkpoint(tmp, params, config, extras)
  return config
