"""The Show-o backbone: a decoder LLM over the unified vocabulary, with QK-norm in every attention layer.

Two families (SPEC §1):
  phi:   parallel attention + MLP from one shared pre-LayerNorm, partial rotary, biases everywhere,
         gelu_new MLP, untied head with bias, per-head LayerNorm QK-norm.
  llama: pre-RMSNorm attention then pre-RMSNorm SwiGLU MLP, full rotary, no biases, grouped-query attention,
         per-head RMSNorm QK-norm, untied head without bias.
The attention mask is omni-attention (models/omni_mask.py), precomputed: a boolean [B, L, L] or its compact
`omni_mask.Spans`. `attention_impl` picks the kernel (models/attention.py `attend`): "xla" (the reference),
"flash" (Pallas, reads Spans, never builds [L, L]), "blockwise" (its XLA twin) or "cudnn" (GPU).
Optionally (`image_conv`, not in the official model) a k×k convolution over each image block's token grid is added
to the image tokens' embeddings (`ImageConv`).

Decode mode (`Transformer(cfg, decode=True)`) keeps a key/value cache in the Linen "cache" collection:
`cached_key`/`cached_value` [B, max_len, Hkv, D] and a `cache_index` per layer. Each call writes its Lq new
keys/values at [index, index + Lq) and attends over all max_len cached slots, so `allowed` is then
[B, Lq, max_len] and `positions` must be the absolute positions of the new tokens. `init_cache` makes an empty
cache; the cached-sampling helpers live in sampling/autoregressive.py. Decode mode adds no parameters.
"""

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from showo_jax.common import axes
from showo_jax.models import attention
from showo_jax.models import dense
from showo_jax.models import layers
from showo_jax.models import omni_mask

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# LoRA targets by family: the short name in `lora_targets` → the projection module it adapts.
LORA_TARGETS = {
    "phi": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "fc1": "fc1", "fc2": "fc2"},
    "llama": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
              "down": "down_proj"},
}

# Remat policies by config name; the names tag the q/k/v projections below.
_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names("query_proj", "key_proj", "value_proj"),
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static (hashable) backbone hyperparameters (built from a ConfigDict by config/showo.py)."""
  family: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  rotary_dim: int
  rope_theta: float
  norm_eps: float
  qk_norm: bool
  init_std: float
  dtype: str
  param_dtype: str
  scan_layers: bool
  remat_policy: str
  dropout_rate: float = 0.0
  matmul_precision: str = "default"  # "default" | "high" | "highest": of every product, forward and backward
  activations: str = "float32"  # dtype of the activations between products (norms, softmax, logits stay f32)
  attention_impl: str = "xla"  # attention.IMPLEMENTATIONS
  attention_block: int = 128  # flash / blockwise: query (and key) tile
  lora_rank: int = 0  # LoRA adapters on the `lora_targets` projections; 0 = none
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0
  lora_targets: tuple = ()  # short names of LORA_TARGETS[family]
  # A k×k convolution over each image block's token grid, added to its embeddings (not in the official model;
  # `ImageConv`): k = image_conv (0 = off), on a square grid of side image_grid, blocks opened and closed by
  # soi_id / eoi_id.
  image_conv: int = 0
  image_grid: int = 0
  soi_id: int = -1
  eoi_id: int = -1

  @property
  def is_phi(self) -> bool:
    return self.family == "phi"

  @property
  def compute_dtype(self):
    """The dtype of every matmul operand (weights and activations); the products accumulate in float32."""
    return _DTYPES[self.dtype]

  @property
  def activation_dtype(self):
    """The residual stream, projections' outputs and elementwise work between them. Norm statistics, the
    softmax, rotary tables and the logits are float32 whatever this is (config/showo.py picks it per backend)."""
    return _DTYPES[self.activations]

  @property
  def weight_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def precision(self):
    """The jax.lax.Precision (None = jax's default) of every dense and attention product."""
    if self.matmul_precision not in layers.MATMUL_PRECISIONS:
      raise ValueError(f"matmul_precision={self.matmul_precision!r} is not one of {tuple(layers.MATMUL_PRECISIONS)}")
    return layers.MATMUL_PRECISIONS[self.matmul_precision]

  def lora_rank_of(self, module_name: str) -> int:
    """The adapter rank of the projection `module_name` (0: not adapted)."""
    if self.lora_rank <= 0:
      return 0
    known = LORA_TARGETS[self.family]
    unknown = [t for t in self.lora_targets if t not in known]
    if unknown:
      raise ValueError(f"lora targets {unknown} are not projections of the {self.family} family; use any of "
                       f"{', '.join(known)}")
    return self.lora_rank if module_name in {known[t] for t in self.lora_targets} else 0


def _dense(cfg: TransformerConfig, features, in_names, out_names, name, use_bias=None, out_dtype=None,
           deterministic=True):
  """A dense layer with logically partitioned kernel and bias (bias only for phi by default), and a LoRA
  adapter where cfg.lora_targets names it. It contracts the last len(in_names) axes of its input."""
  use_bias = cfg.is_phi if use_bias is None else use_bias
  features = tuple(features) if isinstance(features, (tuple, list)) else (features,)
  return dense.Dense(features=features, kernel_axes=tuple(in_names) + tuple(out_names), num_in_axes=len(in_names),
                     use_bias=use_bias, init_std=cfg.init_std, dtype=cfg.compute_dtype,
                     out_dtype=out_dtype or cfg.activation_dtype, param_dtype=cfg.weight_dtype, precision=cfg.precision,
                     lora_rank=cfg.lora_rank_of(name), lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                     deterministic=deterministic, name=name)


def _norm(cfg: TransformerConfig, name: str):
  dtype = cfg.activation_dtype
  if cfg.is_phi:
    return layers.LayerNorm(eps=cfg.norm_eps, dtype=dtype, param_dtype=cfg.weight_dtype, name=name)
  return layers.RMSNorm(eps=cfg.norm_eps, dtype=dtype, param_dtype=cfg.weight_dtype, name=name)


class Attention(nn.Module):
  """Multi-head / grouped-query attention with per-head QK-norm (before RoPE) and a boolean mask."""
  cfg: TransformerConfig
  decode: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, allowed, cos, sin):
    cfg = self.cfg
    h, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    det = self.deterministic
    q = _dense(cfg, (h, d), [axes.EMBED], [axes.HEADS, axes.HEAD_DIM], "q_proj", deterministic=det)(x)  # [B, L, H, D]
    k = _dense(cfg, (hkv, d), [axes.EMBED], [axes.KV_HEADS, axes.HEAD_DIM], "k_proj", deterministic=det)(x)
    v = _dense(cfg, (hkv, d), [axes.EMBED], [axes.KV_HEADS, axes.HEAD_DIM], "v_proj", deterministic=det)(x)
    q = checkpoint_name(q, "query_proj")
    k = checkpoint_name(k, "key_proj")
    v = checkpoint_name(v, "value_proj")
    if cfg.qk_norm:  # one norm of size head_dim, shared by all heads
      q = _norm(cfg, "q_norm")(q)
      k = _norm(cfg, "k_norm")(k)
    self.sow("intermediates", "q_norm_out", q)
    q = layers.apply_rotary(q, cos, sin)
    k = layers.apply_rotary(k, cos, sin)
    # The attention products take q, k, v in the compute dtype (so does the decode cache).
    q, k, v = (t.astype(cfg.compute_dtype) for t in (q, k, v))
    q = nn.with_logical_constraint(q, (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, None))
    k = nn.with_logical_constraint(k, (axes.BATCH, axes.LENGTH, axes.ACT_KV_HEADS, None))
    v = nn.with_logical_constraint(v, (axes.BATCH, axes.LENGTH, axes.ACT_KV_HEADS, None))
    if self.decode:
      k, v = self._update_cache(k, v)  # [B, max_len, Hkv, D]
    # Decoding with a dense [B, Lq, max_len] mask (the autoregressive samplers: a few rows) takes the reference
    # path; with Spans (the cached MaskGIT image block) it keeps the fused kernel.
    impl = cfg.attention_impl
    if impl in ("flash", "blockwise") and self.decode and not isinstance(allowed, omni_mask.Spans):
      impl = "xla"
    out = attention.attend(q, k, v, allowed, impl, cfg.activation_dtype, cfg.precision, cfg.attention_block)
    return _dense(cfg, cfg.hidden_size, [axes.HEADS, axes.HEAD_DIM], [axes.EMBED], "o_proj", deterministic=det)(out)

  def _update_cache(self, k, v):
    """Writes k, v [B, Lq, Hkv, D] at the cache index; returns the whole cache [B, max_len, Hkv, D]."""
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not initialized:  # `init`: the input length sets max_len; nothing is written
      return k, v
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), (0, i, 0, 0))
    index.value = i + k.shape[1]
    return cached_k.value, cached_v.value


class Mlp(nn.Module):
  """phi: fc2(gelu_new(fc1(x))); llama: down(silu(gate(x)) · up(x))."""
  cfg: TransformerConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    f = cfg.intermediate_size
    dense = functools.partial(_dense, cfg, deterministic=self.deterministic)
    if cfg.is_phi:
      hidden = nn.gelu(dense(f, [axes.EMBED], [axes.MLP], "fc1")(x), approximate=True)
    else:
      gate = dense(f, [axes.EMBED], [axes.MLP], "gate_proj")(x)
      hidden = nn.silu(gate) * dense(f, [axes.EMBED], [axes.MLP], "up_proj")(x)
    hidden = nn.with_logical_constraint(hidden, (axes.BATCH, axes.LENGTH, axes.ACT_MLP))
    return dense(cfg.hidden_size, [axes.MLP], [axes.EMBED], "fc2" if cfg.is_phi else "down_proj")(hidden)


class DecoderBlock(nn.Module):
  """One decoder layer; returns (x, None) so that it can be scanned."""
  cfg: TransformerConfig
  decode: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, allowed, cos, sin):
    cfg = self.cfg
    x = nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))
    h = _norm(cfg, "input_norm")(x)
    attn = Attention(cfg, self.decode, self.deterministic, name="attn")(h, allowed, cos, sin)
    self.sow("intermediates", "attn_out", attn)
    drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic or cfg.dropout_rate == 0)
    if cfg.is_phi:  # parallel residual from one shared pre-norm
      x = x + drop(attn) + drop(Mlp(cfg, self.deterministic, name="mlp")(h))
    else:
      x = x + drop(attn)
      x = x + drop(Mlp(cfg, self.deterministic, name="mlp")(_norm(cfg, "post_attention_norm")(x)))
    x = nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))
    self.sow("intermediates", "output", x)
    return x, None


class Transformer(nn.Module):
  """Unified-vocabulary decoder: ids [B, L] + allowed (bool [B, L, L] or Spans) → float32 logits [B, L, V].

  With `decode=True`, see the module docstring: allowed is [B, Lq, max_len] and the cache is mutable.
  `deterministic=False` (training) applies cfg.dropout_rate and needs a "dropout" rng.
  """
  cfg: TransformerConfig
  decode: bool = False
  deterministic: bool = True

  def setup(self):
    cfg = self.cfg
    self.embed = nn.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.hidden_size, dtype=cfg.activation_dtype,
        param_dtype=cfg.weight_dtype,
        embedding_init=layers.normal_init(cfg.init_std, (axes.VOCAB, axes.EMBED)))
    if cfg.image_conv:
      self.image_conv = ImageConv(cfg)
    block = DecoderBlock
    if cfg.remat_policy != "none" and not self.decode:  # no backward pass when decoding
      block = nn.remat(block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      self.layers = nn.scan(
          block, variable_axes={"params": 0, "intermediates": 0, "cache": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: axes.LAYERS})(cfg, self.decode, self.deterministic, name="layers")
    else:
      self.layers = [block(cfg, self.decode, self.deterministic, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.embed_dropout = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic or cfg.dropout_rate == 0)
    self.final_norm = _norm(cfg, "final_norm")
    self.lm_head = _dense(cfg, cfg.vocab_size, [axes.EMBED], [axes.VOCAB], "lm_head", out_dtype=jnp.float32)

  def __call__(self, input_ids, allowed, positions: Optional[jax.Array] = None):
    """Args: input_ids int [B, L]; allowed bool [B, L, L] or `omni_mask.Spans` ([B, L, max_len] in decode
    mode); positions int [B, L] (default arange(L), which in decode mode is only right for an unpadded prompt
    written at 0)."""
    cfg = self.cfg
    if positions is None:  # official: plain arange over the padded sequence (SPEC §0.12)
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    cos, sin = layers.rotary_tables(positions, cfg.rotary_dim, cfg.rope_theta)
    if isinstance(allowed, omni_mask.Spans) and cfg.attention_impl not in ("flash", "blockwise"):
      allowed = omni_mask.expand(allowed)  # once, not in every layer
    x = self.embed(input_ids)
    if cfg.image_conv:
      x = x + self.image_conv(x, input_ids)
    x = self.embed_dropout(x)
    self.sow("intermediates", "embeddings", x)
    if cfg.scan_layers:
      x, _ = self.layers(x, allowed, cos, sin)
    else:
      for layer in self.layers:
        x, _ = layer(x, allowed, cos, sin)
    x = self.final_norm(x)
    self.sow("intermediates", "final_norm_out", x)
    logits = self.lm_head(x).astype(jnp.float32)
    return nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.ACT_VOCAB))


def image_grid_index(input_ids, side: int, soi_id: int, eoi_id: int):
  """(in_block bool [B, L], k int [B, L]): whether each token is the k-th image token of a block.

  The k-th token after a `<|soi|>` of the same call (k < side², no `<|eoi|>` between) is at row k // side and
  column k % side of its image. Every caller runs an image block in one call that starts at its `<|soi|>`
  (training, MaskGIT over a cached prefix, prefill), which this relies on; k is 0 outside blocks.
  """
  idx = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
  last_soi = jax.lax.cummax(jnp.where(input_ids == soi_id, idx, -1), axis=1)
  last_eoi = jax.lax.cummax(jnp.where(input_ids == eoi_id, idx, -1), axis=1)
  k = idx - last_soi - 1
  in_block = (last_soi >= 0) & (last_soi > last_eoi) & (k >= 0) & (k < side * side)
  return in_block, jnp.where(in_block, k, 0)


def grid_taps(x, in_block, k, side: int, kernel: int):
  """[B, L, kernel², D]: each image token's kernel × kernel neighbourhood on its grid (zeros off the grid and
  for tokens outside blocks), rows of the window first."""
  rows, cols = k // side, k % side
  taps = []
  for dr in range(-(kernel // 2), kernel // 2 + 1):
    for dc in range(-(kernel // 2), kernel // 2 + 1):
      shift = dr * side + dc  # the neighbour's offset in the sequence
      valid = (in_block & jnp.roll(in_block, -shift, axis=1) & (rows + dr >= 0) & (rows + dr < side)
               & (cols + dc >= 0) & (cols + dc < side))
      taps.append(jnp.where(valid[..., None], jnp.roll(x, -shift, axis=1), 0))
  return jnp.stack(taps, axis=2)


class ImageConv(nn.Module):
  """A k×k convolution (no bias) over the token grid of every image block, zero elsewhere: a locality prior
  for the image-token embeddings, which a sequence model must otherwise learn from data (the 1-D positions say
  nothing of which tokens are neighbours in the image)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, input_ids):
    cfg = self.cfg
    in_block, k = image_grid_index(input_ids, cfg.image_grid, cfg.soi_id, cfg.eoi_id)
    taps = grid_taps(x, in_block, k, cfg.image_grid, cfg.image_conv)  # [B, L, k², D]
    # The output is the embedding (it is added to the residual stream). Its input is an embedding too, but flax
    # refuses a logical name twice in one array, so that axis stays unnamed; one fsdp axis shards the kernel.
    y = _dense(cfg, cfg.hidden_size, [None, None], [axes.EMBED], "proj", use_bias=False)(taps)
    return jnp.where(in_block[..., None], y, 0).astype(x.dtype)


def init_cache(cfg: TransformerConfig, batch_size: int, max_len: int):
  """An empty decode cache (zeros, index 0) for `Transformer(cfg, decode=True)`; shapes only, no param init."""
  model = Transformer(cfg, decode=True)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((batch_size, max_len), jnp.int32),
                          jnp.ones((batch_size, max_len, max_len), bool))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
