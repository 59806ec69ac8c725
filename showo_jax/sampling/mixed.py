"""Mixed-modality generation: text, then an image when the model asks for one, then text again.

From one prompt (batch 1): generate text with the KV cache until the model emits `<|soi|>`; then decode the
image block `<|soi|>, N image tokens, <|eoi|>` with MaskGIT under omni-attention (bidirectional inside the
block, causal to everything before it — `omni_mask.mixed_mask`); write the finished block into the cache and
continue with text from the logits at `<|eoi|>`. This interleaving is an extension: the official code has
the "mixed"/lvg prompt formats but no such sampler (SPEC §3.5).

During MaskGIT every step runs the block on top of the cached prefix and throws the block's cache writes
away (the cache is functional), so the prefix is computed once. No classifier-free guidance: there is no
defined null prompt for a mixed context, so `MaskGitConfig.guidance_scale` must be 0.

Batch size 1 only: samples would request images at different times, which a fixed-shape batch cannot follow.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.models import omni_mask
from showo_jax.models import transformer
from showo_jax.models import vocab as vocab_lib
from showo_jax.sampling import autoregressive
from showo_jax.sampling import maskgit


@dataclasses.dataclass(frozen=True)
class MixedConfig:
  """text: options of every text segment (max_new_tokens is per segment; <|soi|> is added to the stop ids);
  image: MaskGIT options (guidance_scale 0); num_image_tokens: N; max_images: images before stopping."""
  text: autoregressive.SamplingConfig
  image: maskgit.MaskGitConfig
  num_image_tokens: int
  max_images: int = 1

  def __post_init__(self):
    if self.image.guidance_scale != 0.0:
      raise ValueError("mixed generation has no classifier-free guidance; set image.guidance_scale = 0")

  def cache_len(self, prompt_len: int) -> int:
    """Slots for the prompt, every text segment and every image block."""
    return (prompt_len + (self.max_images + 1) * self.text.max_new_tokens
            + self.max_images * (self.num_image_tokens + 2))


def _no_pads(batch: int):
  return jnp.zeros((batch,), jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "layout", "max_len"))
def _prefill(cfg, params, prompt, layout: vocab_lib.VocabLayout, max_len: int):
  prefill_fn, _ = autoregressive.lm_fns(cfg, params, functools.partial(omni_mask.mixed_mask, layout=layout))
  return prefill_fn(prompt, _no_pads(prompt.shape[0]), max_len)


@functools.partial(jax.jit, static_argnames=("cfg", "config"))
def _text_segment(cfg, params, logits, cache, index, rng, config: autoregressive.SamplingConfig):
  _, step_fn = autoregressive.lm_fns(cfg, params)
  state = autoregressive.continue_decoding(step_fn, logits, cache, index, _no_pads(logits.shape[0]), rng, config)
  return state.tokens, state.lengths, state.cache, state.index


def image_tokens_to_logits(cfg: transformer.TransformerConfig, params, cache, index,
                           layout: vocab_lib.VocabLayout) -> maskgit.TokensToLogits:
  """MaskGIT closure for an image block written at cache slot `index` after a cached prefix.

  image tokens [B, N] → logits [B, N, V] of `<|soi|>, image, <|eoi|>` run with full attention inside the block
  and to every cached slot before it; the block's own cache writes are discarded.
  """
  def tokens_to_logits(image_tokens):
    block = _block(image_tokens, layout)
    everything = jnp.ones((block.shape[0], block.shape[1], block.shape[1]), bool)
    logits, _ = autoregressive.extend(cfg, params, cache, index, block, _no_pads(block.shape[0]), everything)
    return logits[:, 1:-1]
  return tokens_to_logits


def _block(image_tokens, layout):
  b = image_tokens.shape[0]
  return jnp.concatenate([jnp.full((b, 1), layout.soi_id, jnp.int32), image_tokens.astype(jnp.int32),
                          jnp.full((b, 1), layout.eoi_id, jnp.int32)], axis=1)  # [B, N + 2]


@functools.partial(jax.jit, static_argnames=("cfg", "layout", "config"))
def _image_segment(cfg, params, cache, index, rng, layout: vocab_lib.VocabLayout, config: MixedConfig):
  n = config.num_image_tokens
  fn = image_tokens_to_logits(cfg, params, cache, index, layout)
  codes = maskgit.decode(fn, jnp.full((1, n), config.image.mask_id, jnp.int32), rng, config.image)
  block = _block(codes + config.image.codebook_start, layout)
  everything = jnp.ones((1, n + 2, n + 2), bool)
  logits, cache = autoregressive.extend(cfg, params, cache, index, block, _no_pads(1), everything)
  return codes, logits[:, -1], cache, index + n + 2


def mixed_generate(cfg: transformer.TransformerConfig, params, prompt_ids, rng, layout: vocab_lib.VocabLayout,
                   config: MixedConfig) -> list[tuple[str, np.ndarray]]:
  """Interleaved text/image generation for one prompt.

  Args:
    cfg, params: the backbone.
    prompt_ids: int [L] or [1, L], e.g. `BOS, text…` (images inside the prompt as `<|soi|> … <|eoi|>` blocks).
    rng: PRNG key.
    layout: vocabulary.
    config: MixedConfig.
  Returns:
    [("text", int32 [n]) | ("image", int32 [N] codes), …] in generation order. Stop tokens are not included:
    generation ends at an EOS of `config.text.eos_ids`, at a text segment reaching max_new_tokens, or at a
    `<|soi|>` once `max_images` images have been made (that `<|soi|>` is dropped).
  """
  prompt = jnp.asarray(prompt_ids, jnp.int32).reshape(1, -1)
  text_config = dataclasses.replace(config.text, eos_ids=tuple(config.text.eos_ids) + (layout.soi_id,))
  logits, cache = _prefill(cfg, params, prompt, layout, config.cache_len(prompt.shape[1]))
  index = jnp.asarray(prompt.shape[1], jnp.int32)
  segments, images = [], 0
  while True:
    rng, text_rng, image_rng = jax.random.split(rng, 3)
    tokens, lengths, cache, index = _text_segment(cfg, params, logits, cache, index, text_rng, text_config)
    text = np.asarray(tokens[0, :int(lengths[0])])
    wants_image = text.size > 0 and text[-1] == layout.soi_id
    stopped = text.size > 0 and text[-1] in text_config.eos_ids
    if stopped:
      text = text[:-1]
    if text.size:
      segments.append(("text", text))
    if not wants_image or images == config.max_images:
      return segments
    # `<|soi|>` was sampled but not fed back: the image block starts at `index`.
    codes, logits, cache, index = _image_segment(cfg, params, cache, index, image_rng, layout, config)
    segments.append(("image", np.asarray(codes[0])))
    images += 1
