"""Prefix-cached T2I (`maskgit.t2i_generate_cached`): the same logits and codes as the full-forward path."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo_jax import interop
from showo_jax.config import showo as showo_config
from showo_jax.data import prompting
from showo_jax.models import transformer
from showo_jax.models import vocab as vocab_lib
from showo_jax.sampling import maskgit
from tests import parity_facts

TINY = vocab_lib.VocabLayout(llm_vocab_size=100, codebook_size=64, bos_id=99, eos_id=99)
MASK = TINY.mask_id
IMG = slice(18, 82)  # image positions of the tiny t2i sequences (T = 16, N = 64)


@functools.lru_cache(maxsize=4)
def _apply_fn(cfg):
  model = transformer.Transformer(cfg)
  return lambda params, ids, allowed: model.apply({"params": params}, ids, allowed)


@pytest.fixture(scope="module")
def random_t2i():
  """A random tiny model (scanned layers) and 3 prompts of different lengths: all masked, half known, one."""
  config = showo_config.showo_config("tiny")
  config.model.init_std = 0.3
  config.model.matmul_precision = "highest"  # exact comparisons of two paths: no TF32/bf16 passes on accelerators
  cfg = showo_config.transformer_config(config)
  init = jax.jit(transformer.Transformer(cfg).init)
  params = nn.unbox(init(jax.random.key(7), jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8, 8), bool)))["params"]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 64, (3, 64)) + 110
  images[0] = MASK
  images[1, rng.permutation(64)[:32]] = MASK
  images[2, 17] = MASK
  cond = prompting.t2i_gen_prompt([[5, 6, 7], [8], list(range(1, 15))], images, TINY, 16)
  uncond = prompting.t2i_gen_prompt([[]] * 3, images, TINY, 16)
  return cfg, params, cond, uncond


@pytest.mark.parametrize("guidance", [0.0, 1.75])
def test_cached_logits_match_full_forward(random_t2i, guidance):
  cfg, params, cond, uncond = random_t2i
  args = (params, cond, uncond, TINY, 64, guidance)
  full = maskgit.t2i_tokens_to_logits(_apply_fn(cfg), *args)
  cached = maskgit.t2i_cached_tokens_to_logits(cfg, *args)
  tokens = jnp.asarray(cond[:, IMG])
  want = np.asarray(jax.jit(full)(tokens))
  np.testing.assert_allclose(np.asarray(jax.jit(cached)(tokens)), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("guidance,steps", [(0.0, 4), (1.75, 12)])
def test_cached_codes_equal_full_path(random_t2i, guidance, steps):
  cfg, params, cond, uncond = random_t2i
  mg = maskgit.MaskGitConfig.from_layout(TINY, num_steps=steps, guidance_scale=guidance)
  for seed in (0, 1):
    want = maskgit.t2i_generate(_apply_fn(cfg), params, cond, uncond, jax.random.key(seed), mg, TINY, 64)
    got = maskgit.t2i_generate_cached(cfg, params, cond, uncond, jax.random.key(seed), mg, TINY, 64)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_cached_codes_on_official_trace_model(parity_showo, parity_sampling):
  _, trace = parity_sampling
  state = {k[len("param."):]: v for k, v in parity_showo.items() if k.startswith("param.")}
  params, config = interop.load_official_showo(state, **parity_facts.TINY_PHI)
  cfg = showo_config.transformer_config(config)
  cond = trace["input_ids_cond_initial"].astype(np.int32)
  uncond = trace["input_ids_uncond_initial"].astype(np.int32)
  mg = maskgit.MaskGitConfig.from_layout(TINY, num_steps=12, guidance_scale=2.0)
  want = maskgit.t2i_generate(_apply_fn(cfg), params, cond, uncond, jax.random.key(3), mg, TINY, 64)
  got = maskgit.t2i_generate_cached(cfg, params, cond, uncond, jax.random.key(3), mg, TINY, 64)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
