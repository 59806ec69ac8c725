"""Sampling speed (`python -m showo_jax.bench sample`): MaskGIT T2I with CFG and KV-cached MMU, random params.

Per config:
  t2i: 16 MaskGIT steps with classifier-free guidance (w = 1.75): the latency at batch 1 and images/s at
    batch 8 of the pipeline's sampler (`maskgit.t2i_generate_cached`, text prefix computed once), against the
    full-forward sampler (`maskgit.t2i_generate`) and against the 16 batched cond+uncond forwards alone
    (16 × the median of one jitted forward of [2B, L] with its mask), i.e. the loop's overhead.
  mmu: 256 image tokens + a 14-token text prompt, 32 new tokens, greedy, batch 1: ms/token of the KV-cached
    decoder (`autoregressive.generate_with_model`, prefill included) and of full recomputation as the official
    `mmu_generate` does it (one full forward per token), both as one jitted loop. Recomputation runs over a
    fixed buffer of prompt + 32 slots (right-padded, causal rows unaffected) so that it compiles once; the
    official sequence grows from 272 to 303, so this overstates its cost by about 5 %.
Variants that are compared are timed round-robin in the same loop, so that other load on the machine hits them
alike; every figure is a median.
"""

import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.config import showo as showo_config
from showo_jax.data import prompting
from showo_jax.models import omni_mask
from showo_jax.models import transformer
from showo_jax.sampling import autoregressive
from showo_jax.sampling import maskgit

T2I_STEPS = 16
GUIDANCE = 1.75  # the official README's editing/256² value; any w != 0 runs the batched cond+uncond forward
MMU_IMAGE_TOKENS = 256
MMU_TEXT_TOKENS = 14
MMU_NEW_TOKENS = 32


def random_params(cfg: transformer.TransformerConfig, seed: int = 0):
  init = jax.jit(transformer.Transformer(cfg).init)
  return nn.unbox(init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32), omni_mask.causal_spans(1, 8)))["params"]


def _timed(fn):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def round_robin(fns: dict, repeats: int) -> dict:
  """{name: (median seconds, first-call seconds)}: every fn is called once to compile, then `repeats` rounds."""
  first = {name: _timed(fn) for name, fn in fns.items()}
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(_timed(fn))
  return {name: (statistics.median(times[name]), first[name]) for name in fns}


def _t2i_inputs(config, layout, batch, rng):
  n, t = config.data.num_image_tokens, config.data.max_text_len
  texts = [list(rng.integers(0, layout.llm_vocab_size, t // 2)) for _ in range(batch)]
  masked = np.full((batch, n), layout.mask_id, np.int32)
  cond = prompting.t2i_gen_prompt(texts, masked, layout, t)
  uncond = prompting.t2i_gen_prompt([[]] * batch, masked, layout, t)
  return cond, uncond


def bench_t2i(config, params, batch: int, repeats: int) -> dict:
  layout = showo_config.vocab_layout(config)
  cfg = showo_config.transformer_config(config)
  n = config.data.num_image_tokens
  cond, uncond = _t2i_inputs(config, layout, batch, np.random.default_rng(batch))
  mg = maskgit.MaskGitConfig.from_layout(layout, num_steps=T2I_STEPS, guidance_scale=GUIDANCE)
  model = transformer.Transformer(cfg)

  def apply(p, ids, allowed):
    return model.apply({"params": p}, ids, allowed)

  ids = jnp.concatenate([jnp.asarray(cond), jnp.asarray(uncond)])  # [2B, L]
  allowed = omni_mask.predict_next_mask(ids, layout, remove_pad=True)
  forward = jax.jit(apply)
  rng = jax.random.key(0)
  fns = {
      "cached": lambda: maskgit.t2i_generate_cached(cfg, params, cond, uncond, rng, mg, layout, n),
      "full": lambda: maskgit.t2i_generate(apply, params, cond, uncond, rng, mg, layout, n),
      "forward": lambda: forward(params, ids, allowed),
  }
  r = round_robin(fns, repeats)
  forwards = T2I_STEPS * r["forward"][0]
  return {"batch": batch, "seq_len": int(cond.shape[1]), "cached_s": r["cached"][0], "full_s": r["full"][0],
          "forwards_16_s": forwards, "cached_over_forwards": r["cached"][0] / forwards,
          "full_over_forwards": r["full"][0] / forwards, "images_per_s": batch / r["cached"][0],
          "compile_cached_s": r["cached"][1] - r["cached"][0], "repeats": repeats}


def _recompute_generate(cfg, layout, max_new: int):
  """The official loop, jitted: one full forward of the whole (fixed-size) buffer per new token, greedy."""
  model = transformer.Transformer(cfg)

  @jax.jit
  def run(params, prompt):
    b, p = prompt.shape
    buf = jnp.concatenate([prompt, jnp.full((b, max_new), layout.pad_id, jnp.int32)], axis=1)
    allowed = omni_mask.mmu_mask(buf, layout)  # the eoi column rule; rows stay causal past the prompt

    def body(i, buf):
      logits = model.apply({"params": params}, buf, allowed)
      nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, p + i - 1, axis=1, keepdims=False), axis=-1)
      return jax.lax.dynamic_update_slice(buf, nxt[:, None].astype(jnp.int32), (0, p + i))

    return jax.lax.fori_loop(0, max_new, body, buf)[:, p:]

  return run


def bench_mmu(config, params, repeats: int) -> dict:
  layout = showo_config.vocab_layout(config)
  cfg = showo_config.transformer_config(config)
  rng = np.random.default_rng(0)
  image = rng.integers(0, layout.codebook_size, (1, MMU_IMAGE_TOKENS)) + layout.image_offset
  question = [list(rng.integers(0, layout.llm_vocab_size, MMU_TEXT_TOKENS))]
  prompt = np.stack(prompting.mmu_gen_prompt(image, question, layout))  # [1, P]
  lengths = np.array([prompt.shape[1]], np.int32)
  sc = autoregressive.SamplingConfig(max_new_tokens=MMU_NEW_TOKENS, eos_ids=(), pad_id=layout.pad_id)
  recompute = _recompute_generate(cfg, layout, MMU_NEW_TOKENS)
  key = jax.random.key(0)
  fns = {
      "cached": lambda: autoregressive.generate_with_model(cfg, params, prompt, lengths, key, sc, layout, "mmu"),
      "recompute": lambda: recompute(params, jnp.asarray(prompt)),
  }
  r = round_robin(fns, repeats)
  cached_tokens = np.asarray(fns["cached"]()[0])
  same = bool((cached_tokens == np.asarray(fns["recompute"]())).all())
  cached, full = r["cached"][0] / MMU_NEW_TOKENS, r["recompute"][0] / MMU_NEW_TOKENS
  return {"prompt_len": int(prompt.shape[1]), "new_tokens": MMU_NEW_TOKENS, "cached_ms_per_token": 1e3 * cached,
          "recompute_ms_per_token": 1e3 * full, "speedup": full / cached, "same_tokens": same, "repeats": repeats}


def bench_config(config, repeats: int, batch_repeats: int) -> dict:
  cfg = showo_config.transformer_config(config)
  params = random_params(cfg)
  return {"t2i_batch1": bench_t2i(config, params, 1, repeats),
          "t2i_batch8": bench_t2i(config, params, 8, batch_repeats),
          "mmu": bench_mmu(config, params, repeats)}


def report_lines(name: str, r: dict) -> list:
  lines = []
  for key in ("t2i_batch1", "t2i_batch8"):
    t = r[key]
    lines.append(
        f"{name:6s} t2i b{t['batch']} 16 steps CFG (L={t['seq_len']}): prefix-cached {t['cached_s']:.3f} s "
        f"({t['images_per_s']:.2f} img/s), full {t['full_s']:.3f} s, 16 batched forwards {t['forwards_16_s']:.3f} s"
        f" → loop/forwards: cached {t['cached_over_forwards']:.2f}x, full {t['full_over_forwards']:.2f}x")
  m = r["mmu"]
  lines.append(f"{name:6s} mmu {m['prompt_len']}-token prompt, {m['new_tokens']} new: KV cache "
               f"{m['cached_ms_per_token']:.2f} ms/token, recompute {m['recompute_ms_per_token']:.2f} ms/token "
               f"→ {m['speedup']:.1f}x (same tokens: {m['same_tokens']})")
  return lines
