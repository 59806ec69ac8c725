"""Autoregressive text decoding with a KV cache (MMU answers, the text parts of mixed generation).

The official `mmu_generate` (SPEC §7) recomputes the whole sequence every step, batch 1 only. Here the prompt
is written into the backbone's KV cache in one prefill call with its omni-attention mask (MMU: the
`<|mmu|> <|soi|> img <|eoi|>` prefix is bidirectional, text causal, SPEC §4.2/4.3), then each new token attends
to every valid cached slot. The result is the same as the official recomputation because no earlier row of
the official mask ever changes when a token is appended.

Batches are LEFT-padded: sample b has `pad_b = L - prompt_length_b` pads in front. Pad columns are never
attended to and rotary positions start at 0 on each sample's first real token, so every sample sees exactly
what an unpadded batch-1 run (positions = plain arange, as the official code) would see.

Sampling follows the official order: logits / temperature, then top-k (keep logits ≥ the k-th largest, ties
included), then top-p (nucleus: smallest set of most likely tokens whose probability reaches p), then a
categorical draw. temperature == 0 or top_k == 1 means greedy argmax.

The two model hooks the loop needs are plain functions, so any backbone can be plugged in:
  prefill_fn(prompt [B, L], pad_lengths [B], max_len) -> (last_logits [B, V], cache)
  step_fn(tokens [B], cache, index, pad_lengths [B]) -> (logits [B, V], cache)
`lm_fns` builds them for `models.transformer.Transformer`.
"""

import dataclasses
import functools
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from showo_jax.models import omni_mask
from showo_jax.models import transformer
from showo_jax.models import vocab as vocab_lib

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite "-inf" for filtered logits


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Static options of autoregressive sampling (hashable, so it can be a jit static argument)."""
  max_new_tokens: int
  eos_ids: tuple[int, ...]  # generation of a sample stops after it emits any of these (kept in the output)
  pad_id: int  # emitted after a sample has stopped
  temperature: float = 0.0  # 0 = greedy
  top_k: int = 0  # 0 = off; 1 = greedy (the official demo)
  top_p: float = 1.0  # 1.0 = off

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"bad sampling options: temperature={self.temperature}, top_k={self.top_k}, "
                       f"top_p={self.top_p}")
    object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0 or self.top_k == 1


# ------------------------------------------------------------------------------------------- token choice


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
  """Sets logits outside the top-k / nucleus sets to a large negative value. logits: [B, V] float32."""
  if top_k > 0:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]  # [B, 1]
    logits = jnp.where(logits < kth, _NEG, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)  # [B, V] most likely first
    sorted_probs = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), order, axis=-1)
    # Keep a token while the mass strictly before it is below p: the first token always survives.
    keep_sorted = (jnp.cumsum(sorted_probs, axis=-1) - sorted_probs) < top_p
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
    logits = jnp.where(keep, logits, _NEG)
  return logits


def choose_tokens(logits, rng, config: SamplingConfig):
  """Next tokens [B] int32 from last-position logits [B, V]."""
  logits = logits.astype(jnp.float32)
  if config.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits / config.temperature, config.top_k, config.top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


# ------------------------------------------------------------------------------------------- cached model


def cached_allowed(pad_lengths, index, block_allowed, max_len: int):
  """Attention mask of Lq new tokens written at [index, index + Lq) over a cache of max_len slots.

  Args:
    pad_lengths: int [B], left pads of each sample (cache slots 0 … pad-1 are never attended to).
    index: int scalar, the first cache slot of the new tokens.
    block_allowed: bool [B, Lq, Lq], attention among the new tokens themselves.
    max_len: cache length.
  Returns:
    bool [B, Lq, max_len]: every valid earlier slot, plus `block_allowed` on the new slots.
  """
  lq = block_allowed.shape[-1]
  col = jnp.arange(max_len)
  past = (col[None, :] >= pad_lengths[:, None]) & (col[None, :] < index)  # [B, max_len]
  rel = col - index  # slot → index within the new block
  in_block = (rel >= 0) & (rel < lq)  # [max_len]
  block = jnp.take(block_allowed, jnp.clip(rel, 0, lq - 1), axis=2) & in_block  # [B, Lq, max_len]
  return past[:, None, :] | block


def extend(cfg: transformer.TransformerConfig, params, cache, index, tokens, pad_lengths, block_allowed=None):
  """Runs Lq new tokens through the cached backbone.

  Args:
    cfg: backbone config.
    params: backbone params.
    cache: the decode cache (`transformer.init_cache`); its per-layer index must equal `index`.
    index: int scalar, cache slot of tokens[:, 0].
    tokens: int [B, Lq].
    pad_lengths: int [B] left pads.
    block_allowed: bool [B, Lq, Lq] among the new tokens; default causal.
  Returns:
    (logits float32 [B, Lq, V], the updated cache).
  """
  b, lq = tokens.shape
  if block_allowed is None:
    block_allowed = jnp.broadcast_to(jnp.tril(jnp.ones((lq, lq), bool)), (b, lq, lq))
  max_len = next(x.shape[-3] for x in jax.tree.leaves(cache) if x.ndim >= 4)  # keys [(layers,) B, T, Hkv, D]
  allowed = cached_allowed(pad_lengths, index, block_allowed, max_len)
  # Real tokens count positions from their sample's first real token; pads get 0 (never attended to).
  positions = jnp.maximum(index + jnp.arange(lq)[None, :] - pad_lengths[:, None], 0)  # [B, Lq]
  model = transformer.Transformer(cfg, decode=True)
  logits, variables = model.apply({"params": params, "cache": cache}, tokens, allowed, positions,
                                  mutable=["cache"])
  return logits, variables["cache"]


def prompt_block_mask(prompt, pad_lengths, prompt_mask_fn: Optional[Callable] = None):
  """bool [B, L, L] for a left-padded prompt: `prompt_mask_fn(prompt)` (default causal) without pad columns;
  pad rows see only themselves."""
  b, length = prompt.shape
  base = (jnp.broadcast_to(jnp.tril(jnp.ones((length, length), bool)), (b, length, length))
          if prompt_mask_fn is None else prompt_mask_fn(prompt))
  is_pad = jnp.arange(length)[None, :] < pad_lengths[:, None]  # [B, L]
  eye = jnp.eye(length, dtype=bool)[None]
  return jnp.where(is_pad[:, :, None], eye, base & ~is_pad[:, None, :])


def prompt_mask_fn_for(kind: str, layout: Optional[vocab_lib.VocabLayout] = None) -> Optional[Callable]:
  """The prompt mask by name: "causal" (plain text), "mmu" (bidirectional image prefix, SPEC §4.2) or
  "mixed" (bidirectional inside every <|soi|>…<|eoi|> block, causal elsewhere)."""
  if kind == "causal":
    return None
  if layout is None:
    raise ValueError(f"prompt mask {kind!r} needs the vocabulary layout")
  if kind == "mmu":
    return functools.partial(omni_mask.mmu_mask, layout=layout)
  if kind == "mixed":
    return functools.partial(omni_mask.mixed_mask, layout=layout)
  raise ValueError(f"unknown prompt mask {kind!r}; use 'causal', 'mmu' or 'mixed'")


def lm_fns(cfg: transformer.TransformerConfig, params, prompt_mask_fn: Optional[Callable] = None):
  """(prefill_fn, step_fn) for the Show-o backbone; `prompt_mask_fn(ids) -> bool [B, L, L]` gives the
  prompt's omni-attention mask (see `prompt_mask_fn_for`), default causal."""

  def prefill_fn(prompt, pad_lengths, max_len):
    cache = transformer.init_cache(cfg, prompt.shape[0], max_len)
    block = prompt_block_mask(prompt, pad_lengths, prompt_mask_fn)
    logits, cache = extend(cfg, params, cache, 0, prompt, pad_lengths, block)
    return logits[:, -1], cache  # left padding: the last column is real for every sample

  def step_fn(tokens, cache, index, pad_lengths):
    logits, cache = extend(cfg, params, cache, index, tokens[:, None], pad_lengths)
    return logits[:, 0], cache

  return prefill_fn, step_fn


# ------------------------------------------------------------------------------------------- the loop


@flax.struct.dataclass
class DecodeState:
  """Carry of the sampling while_loop."""
  step: jax.Array  # int32 []: tokens emitted so far (all samples advance together)
  index: jax.Array  # int32 []: cache slot of the next token to feed back
  last: jax.Array  # int32 [B]: the latest emitted token
  tokens: jax.Array  # int32 [B, max_new_tokens]: output, pad_id after a sample stopped
  done: jax.Array  # bool [B]: the sample emitted a stop token
  lengths: jax.Array  # int32 [B]: tokens emitted before stopping, the stop token included
  logits: jax.Array  # float32 [B, max_new_tokens, V] (or [B, 0, V]): logits each token was drawn from
  cache: dict
  rng: jax.Array

  def emit(self, logits, rng, config: SamplingConfig) -> "DecodeState":
    """Chooses and records the token at `step` from `logits` [B, V]."""
    token = choose_tokens(logits, rng, config)
    token = jnp.where(self.done, config.pad_id, token)
    stop = jnp.isin(token, jnp.asarray(config.eos_ids, jnp.int32)) if config.eos_ids else jnp.zeros_like(self.done)
    tokens = jax.lax.dynamic_update_slice(self.tokens, token[:, None], (0, self.step))
    out_logits = self.logits
    if out_logits.shape[1]:
      out_logits = jax.lax.dynamic_update_slice(out_logits, logits[:, None].astype(jnp.float32), (0, self.step, 0))
    return self.replace(step=self.step + 1, last=token, tokens=tokens, logits=out_logits,
                        lengths=self.lengths + (~self.done).astype(jnp.int32), done=self.done | stop)


def continue_decoding(step_fn, logits, cache, index, pad_lengths, rng, config: SamplingConfig,
                      return_logits: bool = False):
  """Samples up to max_new_tokens from next-token `logits` [B, V] and a cache filled up to `index`.

  Returns the final DecodeState (tokens, lengths, done, and the cache/index for continuing). The first token
  comes from `logits`; each later one from feeding the previous token back (nothing is fed after the last).
  """
  b, vocab = logits.shape
  n = config.max_new_tokens
  rng, first_rng = jax.random.split(rng)
  state = DecodeState(
      step=jnp.zeros((), jnp.int32), index=jnp.asarray(index, jnp.int32), last=jnp.zeros((b,), jnp.int32),
      tokens=jnp.full((b, n), config.pad_id, jnp.int32), done=jnp.zeros((b,), bool),
      lengths=jnp.zeros((b,), jnp.int32), logits=jnp.zeros((b, n if return_logits else 0, vocab), jnp.float32),
      cache=cache, rng=rng)
  state = state.emit(logits, first_rng, config)

  def cond(s):
    return (s.step < n) & ~jnp.all(s.done)

  def body(s):
    rng, step_rng = jax.random.split(s.rng)
    next_logits, cache = step_fn(s.last, s.cache, s.index, pad_lengths)
    s = s.replace(cache=cache, index=s.index + 1, rng=rng)
    return s.emit(next_logits, step_rng, config)

  return jax.lax.while_loop(cond, body, state)


@functools.partial(jax.jit, static_argnames=("prefill_fn", "step_fn", "config", "return_logits"))
def generate(prefill_fn, step_fn, prompt, prompt_lengths, rng, config: SamplingConfig,
             return_logits: bool = False):
  """Cached autoregressive generation for a left-padded batch.

  Args:
    prefill_fn, step_fn: the model hooks (module docstring; `lm_fns` for the Show-o backbone).
    prompt: int [B, L], left-padded.
    prompt_lengths: int [B], real tokens per sample (≥ 1).
    rng: PRNG key (unused when greedy).
    config: SamplingConfig.
    return_logits: also return the logits each token was drawn from.
  Returns:
    tokens int32 [B, max_new_tokens] (pad_id after a stop token), lengths int32 [B] (the stop token counts),
    and with return_logits, logits float32 [B, max_new_tokens, V] (zeros after every sample stopped).
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  pad_lengths = prompt.shape[1] - jnp.asarray(prompt_lengths, jnp.int32)
  logits, cache = prefill_fn(prompt, pad_lengths, prompt.shape[1] + config.max_new_tokens)
  state = continue_decoding(step_fn, logits, cache, prompt.shape[1], pad_lengths, rng, config, return_logits)
  if return_logits:
    return state.tokens, state.lengths, state.logits
  return state.tokens, state.lengths


@functools.partial(jax.jit, static_argnames=("cfg", "config", "layout", "prompt_mask", "return_logits"))
def generate_with_model(cfg: transformer.TransformerConfig, params, prompt, prompt_lengths, rng,
                        config: SamplingConfig, layout: Optional[vocab_lib.VocabLayout] = None,
                        prompt_mask: str = "mmu", return_logits: bool = False):
  """`generate` for the Show-o backbone with params as a traced argument (not baked into the program).

  `prompt_mask` names the prompt's attention mask (`prompt_mask_fn_for`); MMU prompts use "mmu".
  """
  prefill_fn, step_fn = lm_fns(cfg, params, prompt_mask_fn_for(prompt_mask, layout))
  return generate(prefill_fn, step_fn, prompt, prompt_lengths, rng, config, return_logits)

