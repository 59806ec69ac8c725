"""MaskGIT decoding of image tokens (Show-o `t2i_generate`, SPEC §6), also used for inpainting/extrapolation.

The sampler knows nothing of the model: it calls `tokens_to_logits(image_tokens [B, N]) -> logits [B, N, V]`
(V = the full vocabulary) and uses the codebook slice `[codebook_start, codebook_start + codebook_size)`, so
the [MASK] logit never takes part. Classifier-free guidance and the omni-attention mask live in the closure
(`t2i_tokens_to_logits`).

One step k = 0 … S-1 (all per sample):
  1. probs = softmax(codebook logits) at temperature 1; a categorical draw at EVERY position; known positions
     keep their code.
  2. ratio = (k+1)/S (double, then float32 as `torch.tensor(ratio)`), mask_ratio = γ(ratio) in float32,
     mask_len = max(1, min(#unknown - 1, floor(N · mask_ratio))) with N = number of image tokens.
  3. confidence = log(max(p_sampled, 1e-20)) + T_k · g, g = -log(-log(u)) (both logs clamped at 1e-20),
     with p = float32.max at known positions (as the official code; the number is reported, see below).
     T_k: "multiplicative" (official, SPEC §0.8) T_k = T_{k-1}·(1 - ratio_k), T_{-1} = T0; or "linear"
     T_k = T0·(1 - ratio_k). Computed in double on the host and used in float32, like the official scalar.
  4. The mask_len lowest-confidence UNKNOWN positions become [MASK] again; the others take their sample.

Deliberate differences from the official code, none of which changes a result on the recorded trace:
  * Bottom-k is exact (stable argsort of the confidence, ties go to the lower position) instead of
    `confidence < sorted[mask_len]`, which re-masks fewer than mask_len positions on ties.
  * Known positions are excluded from the bottom-k instead of relying on log(float32.max) ≈ 88.7 being
    larger than any noisy log-prob, so known tokens never change, even with a large T0 or no unknowns.
  * The official loop re-masks at the last step too (mask_len ≥ 1 always) and then returns that step's raw
    samples, ignoring the re-mask. `decode` does the same: it returns the last step's samples (known codes
    put back), so the output never contains [MASK] for any num_steps ≥ 1, while the state's tokens after the
    last step still show the official (ignored) re-mask.
"""

import dataclasses
import functools
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.models import mask_schedule
from showo_jax.models import omni_mask
from showo_jax.models import transformer
from showo_jax.models import vocab as vocab_lib

TokensToLogits = Callable[[jax.Array], jax.Array]  # image tokens int [B, N] -> logits [B, N, V]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class MaskGitConfig:
  """Static MaskGIT options (hashable: a jit static argument)."""
  codebook_start: int  # token id of code 0 (layout.image_offset)
  codebook_size: int
  mask_id: int
  num_steps: int = 18  # official default; the official README uses 50 (t2i 512²) and 16 (256² editing)
  schedule: str = "cosine"  # mask_schedule name
  guidance_scale: float = 0.0  # w of (1 + w)·cond − w·uncond (read by `t2i_tokens_to_logits`)
  temperature: float = 1.0  # T0 of the Gumbel noise on the confidence
  temperature_annealing: str = "multiplicative"  # official; or "linear"

  def __post_init__(self):
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
    if self.temperature_annealing not in ("multiplicative", "linear"):
      raise ValueError(f"temperature_annealing must be 'multiplicative' or 'linear', got "
                       f"{self.temperature_annealing!r}")
    mask_schedule.get(self.schedule)  # raises on unknown names

  @classmethod
  def from_layout(cls, layout: vocab_lib.VocabLayout, **kwargs) -> "MaskGitConfig":
    return cls(codebook_start=layout.image_offset, codebook_size=layout.codebook_size, mask_id=layout.mask_id,
               **kwargs)

  def ratios(self) -> np.ndarray:
    """float32 [S]: (k+1)/S rounded from double, as `torch.tensor(1.0 * (k+1) / S)`."""
    return (np.arange(1, self.num_steps + 1, dtype=np.float64) / self.num_steps).astype(np.float32)

  def temperatures(self) -> np.ndarray:
    """float32 [S]: the Gumbel temperature used at each step (computed in double, applied in float32)."""
    ratios = np.arange(1, self.num_steps + 1, dtype=np.float64) / self.num_steps
    if self.temperature_annealing == "linear":
      return (self.temperature * (1.0 - ratios)).astype(np.float32)
    return (self.temperature * np.cumprod(1.0 - ratios)).astype(np.float32)


def mask_lengths(config: MaskGitConfig, step, num_unknown, num_tokens: int):
  """Positions to re-mask after `step`: max(1, min(#unknown - 1, floor(N · γ(ratio)))), int32 like num_unknown."""
  ratio = jnp.asarray(config.ratios())[step]
  mask_ratio = mask_schedule.get(config.schedule)(ratio).astype(jnp.float32)
  target = jnp.floor(jnp.float32(num_tokens) * mask_ratio).astype(jnp.int32)
  return jnp.maximum(1, jnp.minimum(num_unknown - 1, target))


def gumbel_noise(rng, shape):
  """-log(-log(u)), u ~ U[0, 1), both logs clamped at 1e-20 (official `gumbel_noise`)."""
  u = jax.random.uniform(rng, shape, jnp.float32)
  return -jnp.log(jnp.maximum(-jnp.log(jnp.maximum(u, 1e-20)), 1e-20))


def bottom_k_mask(scores, k, eligible):
  """bool [B, N]: the k[b] lowest scores among eligible positions (stable: ties go to lower positions)."""
  scores = jnp.where(eligible, scores, jnp.inf)
  order = jnp.argsort(scores, axis=-1, stable=True)  # [B, N]
  rank = jnp.argsort(order, axis=-1)  # inverse permutation: rank of each position
  return (rank < k[:, None]) & eligible


@flax.struct.dataclass
class StepOutput:
  """Everything one MaskGIT step computes (the names of the recorded parity trace)."""
  probs: jax.Array  # float32 [B, N, C]: codebook probabilities
  sampled: jax.Array  # int32 [B, N]: codes, the known ones put back
  selected_probs: jax.Array  # float32 [B, N]: prob of the sampled code; float32.max where known
  confidence: jax.Array  # float32 [B, N]: log(p) + T·g (official formula, known positions included)
  mask_len: jax.Array  # int32 [B]
  masking: jax.Array  # bool [B, N]: re-masked for the next step
  next_tokens: jax.Array  # int32 [B, N]: token ids fed to the next step


def step_from_draws(logits, tokens, step_index, config: MaskGitConfig, draws, noise) -> StepOutput:
  """One MaskGIT step with given randomness (used by `decode`, and by tests with the recorded draws).

  Args:
    logits: float [B, N, V] (full vocabulary, guidance already applied) at the image positions.
    tokens: int [B, N] current image token ids, config.mask_id where unknown.
    step_index: int scalar k.
    config: MaskGitConfig.
    draws: int [B, N] codes drawn from `probs` at every position (the `multinomial_samples`).
    noise: float32 [B, N] Gumbel noise.
  """
  n = tokens.shape[1]
  code_logits = logits[..., config.codebook_start:config.codebook_start + config.codebook_size]
  probs = jax.nn.softmax(code_logits.astype(jnp.float32), axis=-1)  # [B, N, C]
  unknown = tokens == config.mask_id  # [B, N]
  sampled = jnp.where(unknown, draws, tokens - config.codebook_start).astype(jnp.int32)
  selected = jnp.take_along_axis(probs, jnp.clip(sampled, 0, config.codebook_size - 1)[..., None], -1)[..., 0]
  selected = jnp.where(unknown, selected, jnp.float32(_FLOAT32_MAX))
  temperature = jnp.asarray(config.temperatures())[step_index]
  confidence = jnp.log(jnp.maximum(selected, 1e-20)) + temperature * noise
  mask_len = mask_lengths(config, step_index, unknown.sum(-1, dtype=jnp.int32), n)
  masking = bottom_k_mask(confidence, mask_len, unknown)
  next_tokens = jnp.where(masking, config.mask_id, sampled + config.codebook_start).astype(jnp.int32)
  return StepOutput(probs=probs, sampled=sampled, selected_probs=selected, confidence=confidence,
                    mask_len=mask_len, masking=masking, next_tokens=next_tokens)


def step(logits, tokens, step_index, rng, config: MaskGitConfig) -> StepOutput:
  """One MaskGIT step drawing its own randomness: categorical samples, then Gumbel noise."""
  sample_rng, noise_rng = jax.random.split(rng)
  code_logits = logits[..., config.codebook_start:config.codebook_start + config.codebook_size]
  draws = jax.random.categorical(sample_rng, code_logits.astype(jnp.float32), axis=-1).astype(jnp.int32)
  noise = gumbel_noise(noise_rng, tokens.shape)
  return step_from_draws(logits, tokens, step_index, config, draws, noise)


@flax.struct.dataclass
class DecodeState:
  """Carry of the decoding loop."""
  step: jax.Array  # int32 []: steps done
  tokens: jax.Array  # int32 [B, N]: image token ids, mask_id where (still) unknown
  sampled: jax.Array  # int32 [B, N]: codes of the latest step (the output after the last one)
  history: jax.Array  # int32 [S, B, N] (or [0, B, N]): `tokens` after each step
  rng: jax.Array

  @classmethod
  def make(cls, tokens, rng, config: MaskGitConfig, keep_history: bool = False) -> "DecodeState":
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
      raise ValueError(f"image tokens must be [B, N], got shape {tokens.shape}")
    depth = config.num_steps if keep_history else 0
    return cls(step=jnp.zeros((), jnp.int32), tokens=tokens,
               sampled=jnp.where(tokens == config.mask_id, 0, tokens - config.codebook_start),
               history=jnp.zeros((depth,) + tokens.shape, jnp.int32), rng=rng)

  def split_rng(self) -> tuple["DecodeState", jax.Array]:
    rng, step_rng = jax.random.split(self.rng)
    return self.replace(rng=rng), step_rng

  def advance(self, out: StepOutput) -> "DecodeState":
    """Takes a step's result; shapes and dtypes must not change inside the loop."""
    for name, new, old in (("tokens", out.next_tokens, self.tokens), ("sampled", out.sampled, self.sampled)):
      if new.shape != old.shape or new.dtype != old.dtype:
        raise ValueError(f"{name}: expected {old.shape} {old.dtype}, got {new.shape} {new.dtype}")
    history = self.history
    if history.shape[0]:
      history = jax.lax.dynamic_update_index_in_dim(history, out.next_tokens, self.step, 0)
    return self.replace(step=self.step + 1, tokens=out.next_tokens, sampled=out.sampled, history=history)


@functools.partial(jax.jit, static_argnames=("tokens_to_logits", "config", "keep_history"))
def decode(tokens_to_logits: TokensToLogits, image_tokens, rng, config: MaskGitConfig,
           keep_history: bool = False):
  """MaskGIT decoding, a fixed-count `lax.fori_loop` of `config.num_steps` steps.

  Args:
    tokens_to_logits: image token ids [B, N] -> logits [B, N, V] (full vocabulary, guidance applied).
    image_tokens: int [B, N]: codebook token ids where known, config.mask_id where to generate.
    rng: PRNG key; the result is a deterministic function of it.
    config: MaskGitConfig.
    keep_history: also return the token ids after every step, [S, B, N].
  Returns:
    codes int32 [B, N] in [0, codebook_size) (the last step's samples; known codes unchanged), and the history
    when asked for.
  """
  state = DecodeState.make(image_tokens, rng, config, keep_history)

  def body(k, state):
    state, step_rng = state.split_rng()
    out = step(tokens_to_logits(state.tokens), state.tokens, k, step_rng, config)
    return state.advance(out)

  state = jax.lax.fori_loop(0, config.num_steps, body, state)
  if keep_history:
    return state.sampled, state.history
  return state.sampled


# ------------------------------------------------------------------------------------------- t2i closure


def t2i_tokens_to_logits(apply_fn, params, cond_ids, uncond_ids, layout: vocab_lib.VocabLayout,
                         num_image_tokens: int, guidance_scale: float = 0.0) -> TokensToLogits:
  """The t2i / inpainting / extrapolation closure (SPEC §6 step 1).

  Args:
    apply_fn: (params, ids [B', L], allowed) -> logits [B', L, V]; allowed is the mask as `omni_mask.Spans`.
    params: model params.
    cond_ids: int [B, L] `t2i_gen_prompt` sequences: …, <|soi|>, N image tokens, <|eoi|>.
    uncond_ids: int [B, L] null-prompt sequences (`t2i_gen_prompt` with empty texts), or None.
    layout: vocabulary (pad/soi/eoi ids for the mask).
    num_image_tokens: N.
    guidance_scale: w; with w != 0 and uncond_ids given, one forward on [cond; uncond] (2B rows) and
      logits = (1 + w)·cond − w·uncond. The uncond rows are the null-prompt prefix followed by the current
      image block, exactly as the official loop rebuilds them every step.
  Returns:
    tokens_to_logits(image_tokens [B, N]) -> logits [B, N, V]. The omni-attention mask
    (`predict_next_mask`, pads removed) is computed once here: it does not depend on the image tokens.
  """
  cond_ids = jnp.asarray(cond_ids, jnp.int32)
  start = cond_ids.shape[1] - 1 - num_image_tokens  # image block [start, start + N), then <|eoi|>
  use_cfg = uncond_ids is not None and guidance_scale != 0.0
  ids = jnp.concatenate([cond_ids, jnp.asarray(uncond_ids, jnp.int32)]) if use_cfg else cond_ids
  allowed = omni_mask.t2i_spans(ids, layout)  # `predict_next_mask` in its compact form, computed once

  def tokens_to_logits(image_tokens):
    reps = ids.shape[0] // image_tokens.shape[0]
    seqs = ids.at[:, start:start + num_image_tokens].set(jnp.tile(image_tokens, (reps, 1)))  # [B', L]
    logits = apply_fn(params, seqs, allowed)[:, start:start + num_image_tokens]  # [B', N, V]
    if not use_cfg:
      return logits
    cond, uncond = jnp.split(logits, 2)
    return (1.0 + guidance_scale) * cond - guidance_scale * uncond

  return tokens_to_logits


@functools.partial(jax.jit, static_argnames=("apply_fn", "config", "layout", "num_image_tokens", "keep_history"))
def t2i_generate(apply_fn, params, cond_ids, uncond_ids, rng, config: MaskGitConfig,
                 layout: vocab_lib.VocabLayout, num_image_tokens: int, keep_history: bool = False):
  """Text-to-image / inpainting / extrapolation: decodes the image block of `cond_ids` ([MASK] where unknown)
  with CFG weight `config.guidance_scale`; params are traced, not baked into the program.

  Returns codes int32 [B, N] (and the history with keep_history). `apply_fn` must be hashable and stable
  (e.g. a module-level function or `model.apply`-based partial kept by the caller) to avoid recompiles.
  """
  cond_ids = jnp.asarray(cond_ids, jnp.int32)
  fn = t2i_tokens_to_logits(apply_fn, params, cond_ids, uncond_ids, layout, num_image_tokens,
                            config.guidance_scale)
  start = cond_ids.shape[1] - 1 - num_image_tokens
  return decode(fn, cond_ids[:, start:start + num_image_tokens], rng, config, keep_history)


# ------------------------------------------------------------------------------------------- prefix-cached t2i


def t2i_cached_tokens_to_logits(cfg: transformer.TransformerConfig, params, cond_ids, uncond_ids,
                                layout: vocab_lib.VocabLayout, num_image_tokens: int,
                                guidance_scale: float = 0.0) -> TokensToLogits:
  """`t2i_tokens_to_logits` with the text prefix run once instead of at every MaskGIT step.

  The t2i sequence is `[PAD]*p, <|t2i|>, text, EOS` (T + 1 text rows, causal), then the block
  `<|soi|>, N image tokens, <|eoi|>` (bidirectional: `<|soi|>` sees the image too). Text rows never attend
  to the block, so their keys/values are the same at every step: they are written once into the backbone's
  KV cache (`Transformer(decode=True)`, max_len = L), and each call runs only the N + 2 block rows on top of
  it, with the rows [T + 1, L) of the same `predict_next_mask` over all L columns and the same absolute
  positions (plain arange) as the full forward. The block's own cache writes are thrown away. With CFG the
  cond and null-prompt prefixes are cached side by side (2B rows) and the block is one batched call.

  Args:
    cfg: backbone config.
    params: backbone params.
    cond_ids, uncond_ids, layout, num_image_tokens, guidance_scale: as `t2i_tokens_to_logits`.
  Returns:
    tokens_to_logits(image_tokens [B, N]) -> logits [B, N, V], equal to the full forward's up to float
    rounding (the matmuls see other shapes).
  """
  cond_ids = jnp.asarray(cond_ids, jnp.int32)
  length = cond_ids.shape[1]
  start = length - 1 - num_image_tokens  # image block [start, start + N), then <|eoi|>
  prefix = start - 1  # text rows [0, prefix); <|soi|> at `prefix` belongs to the bidirectional block
  use_cfg = uncond_ids is not None and guidance_scale != 0.0
  ids = jnp.concatenate([cond_ids, jnp.asarray(uncond_ids, jnp.int32)]) if use_cfg else cond_ids
  allowed = omni_mask.t2i_spans(ids, layout)  # `predict_next_mask` in its compact form
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), ids.shape)  # official: plain arange
  model = transformer.Transformer(cfg, decode=True)
  cache = transformer.init_cache(cfg, ids.shape[0], length)
  _, variables = model.apply({"params": params, "cache": cache}, ids[:, :prefix], allowed.rows(0, prefix),
                             positions[:, :prefix], mutable=["cache"])
  cache = variables["cache"]  # keys/values of the text rows at slots [0, prefix); index = prefix
  block_ids, block_allowed, block_positions = ids[:, prefix:], allowed.rows(prefix, length), positions[:, prefix:]

  def tokens_to_logits(image_tokens):
    reps = ids.shape[0] // image_tokens.shape[0]
    block = block_ids.at[:, 1:1 + num_image_tokens].set(jnp.tile(image_tokens, (reps, 1)))  # [B', N + 2]
    logits, _ = model.apply({"params": params, "cache": cache}, block, block_allowed, block_positions,
                            mutable=["cache"])
    logits = logits[:, 1:1 + num_image_tokens]  # [B', N, V]
    if not use_cfg:
      return logits
    cond, uncond = jnp.split(logits, 2)
    return (1.0 + guidance_scale) * cond - guidance_scale * uncond

  return tokens_to_logits


@functools.partial(jax.jit, static_argnames=("cfg", "config", "layout", "num_image_tokens", "keep_history"))
def t2i_generate_cached(cfg: transformer.TransformerConfig, params, cond_ids, uncond_ids, rng,
                        config: MaskGitConfig, layout: vocab_lib.VocabLayout, num_image_tokens: int,
                        keep_history: bool = False):
  """`t2i_generate` for the Show-o backbone with the text prefix computed once per sample (and once for the
  CFG null prompt); see `t2i_cached_tokens_to_logits`. Same arguments, except the backbone config `cfg`
  instead of an apply function; same codes for the same seed."""
  cond_ids = jnp.asarray(cond_ids, jnp.int32)
  fn = t2i_cached_tokens_to_logits(cfg, params, cond_ids, uncond_ids, layout, num_image_tokens,
                                   config.guidance_scale)
  start = cond_ids.shape[1] - 1 - num_image_tokens
  return decode(fn, cond_ids[:, start:start + num_image_tokens], rng, config, keep_history)
