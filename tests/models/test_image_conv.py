"""The convolution over image-token grids (`config.model.image_conv`): which tokens it sees, its numbers against
a float64 2-D convolution, its kernel's sharding, text unchanged, and the cached sampling paths equal to the full
forward."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo_jax.common import axes
from showo_jax.config import showo as showo_config
from showo_jax.data import prompting
from showo_jax.models import omni_mask
from showo_jax.models import transformer
from showo_jax.models import vocab as vocab_lib
from showo_jax.sampling import autoregressive as ar
from showo_jax.sampling import maskgit
from showo_jax.sampling import mixed

# One worker runs the whole module (setup.cfg: --dist loadgroup), so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("image_conv")

TINY = vocab_lib.VocabLayout(llm_vocab_size=100, codebook_size=64, bos_id=99, eos_id=99)
SOI, EOI = 1, 2


def test_grid_index_literal():
  # text, a 2x2 block, text, a block cut short by <|eoi|>, text; then a block of more than side² tokens
  ids = jnp.array([[5, 5, SOI, 7, 7, 7, 7, EOI, 5, SOI, 7, 7, EOI, 5],
                   [SOI, 7, 7, 7, 7, 7, EOI, 5, 5, 5, 5, 5, 5, 5]])
  in_block, k = transformer.image_grid_index(ids, 2, SOI, EOI)
  np.testing.assert_array_equal(in_block, [[0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0],
                                           [0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(k, [[0, 0, 0, 0, 1, 2, 3, 0, 0, 0, 0, 1, 0, 0],
                                    [0, 0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
  in_block, _ = transformer.image_grid_index(jnp.array([[7, 7]]), 2, SOI, EOI)  # a decoded token: no block
  assert not in_block.any()


def _conv2d_f64(grid, kernel):
  """grid [S, S, D], kernel [k, k, D, D'] → zero-padded 'same' convolution (cross-correlation), float64."""
  s, k = grid.shape[0], kernel.shape[0]
  padded = np.pad(grid.astype(np.float64), ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  out = np.zeros((s, s, kernel.shape[-1]))
  for i in range(s):
    for j in range(s):
      out[i, j] = np.einsum("abd,abde->e", padded[i:i + k, j:j + k], kernel.astype(np.float64))
  return out


def test_image_conv_against_float64_convolution():
  side, d = 3, 4
  cfg = dataclasses.replace(_conv_cfg(3)[0], hidden_size=d, image_grid=side, soi_id=SOI, eoi_id=EOI)
  conv = transformer.ImageConv(cfg)
  # two blocks in one row (mixed / interleaved sequences), text around them
  ids = jnp.array([[5, SOI] + [7] * 9 + [EOI, 5, 5, SOI] + [7] * 9 + [EOI, 5]])
  x = jax.random.normal(jax.random.key(0), ids.shape + (d,))
  params = nn.unbox(conv.init(jax.random.key(1), x, ids))["params"]
  params = jax.tree.map(lambda p: p * 10.0, params)  # well away from 0, so a wrong tap shows
  got = np.asarray(conv.apply({"params": params}, x, ids))[0]
  kernel = np.asarray(params["proj"]["kernel"]).reshape(3, 3, d, d)  # taps: rows of the window first
  x = np.asarray(x)[0]
  for start in (2, 15):
    want = _conv2d_f64(x[start:start + 9].reshape(side, side, d), kernel).reshape(9, d)
    np.testing.assert_allclose(got[start:start + 9], want, rtol=1e-5, atol=1e-5)
  outside = np.ones(len(got), bool)
  outside[2:11] = outside[15:24] = False
  assert not got[outside].any()


def _conv_cfg(kernel):
  config = showo_config.showo_config("tiny")
  config.model.init_std = 0.3
  config.model.matmul_precision = "highest"
  config.model.image_conv = kernel
  return showo_config.transformer_config(config), config


def test_kernel_output_axis_is_the_embedding():
  """The conv's output is added to the residual stream: its kernel's output axis is the embedding axis (fully
  sharded over fsdp by the default rules), not an MLP axis split over tensor."""
  cfg, _ = _conv_cfg(3)
  model = transformer.Transformer(cfg)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4, 4), bool))
  kernel = variables["params"]["image_conv"]["proj"]["kernel"]
  assert kernel.names == (None, None, axes.EMBED) and kernel.value.shape == (9, cfg.hidden_size, cfg.hidden_size)
  assert nn.logical_to_mesh_axes(kernel.names, axes.DEFAULT_RULES) == jax.P(None, None, "fsdp")


@pytest.fixture(scope="module")
def conv_model():
  cfg, _ = _conv_cfg(3)
  assert (cfg.image_conv, cfg.image_grid, cfg.soi_id, cfg.eoi_id) == (3, 8, TINY.soi_id, TINY.eoi_id)
  init = jax.jit(transformer.Transformer(cfg).init)
  params = nn.unbox(init(jax.random.key(3), jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8, 8), bool)))["params"]
  return cfg, params


@functools.lru_cache(maxsize=4)
def _forward(cfg):
  model = transformer.Transformer(cfg)
  return jax.jit(lambda params, ids, allowed: model.apply({"params": params}, ids, allowed))


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / np.abs(want).max()


def _mmu_prompt(seed, question):
  image = np.random.default_rng(seed).integers(0, 64, (1, 64)) + TINY.image_offset
  return prompting.mmu_gen_prompt(image, [question], TINY)[0]


def test_text_is_unchanged_and_images_see_the_grid(conv_model):
  cfg, params = conv_model
  cfg_plain = dataclasses.replace(cfg, image_conv=0)
  text = jnp.array([[99, 4, 8, 15, 16, 23, 42]], jnp.int32)
  causal = omni_mask.mixed_mask(text, TINY)
  np.testing.assert_array_equal(np.asarray(_forward(cfg)(params, text, causal)),
                                np.asarray(_forward(cfg_plain)(params, text, causal)))
  seq = jnp.asarray(_mmu_prompt(0, [3, 14, 15]))[None]
  mask = omni_mask.mmu_mask(seq, TINY)
  with_conv, without = _forward(cfg)(params, seq, mask), _forward(cfg_plain)(params, seq, mask)
  assert _rel_err(with_conv, without) > 1e-2  # a model that skipped the convolution would pass the text check alone


def test_cached_paths_equal_full_forward(conv_model):
  cfg, params = conv_model
  # MMU: left-padded prefill + decode against the unpadded full sequence
  prompts = [_mmu_prompt(0, [3, 14, 15]), _mmu_prompt(1, [9])]
  batch, lens, n = prompting.left_pad(prompts, TINY.pad_id), np.array([len(p) for p in prompts]), 4
  greedy = ar.SamplingConfig(max_new_tokens=n, eos_ids=(), pad_id=TINY.pad_id, top_k=1, temperature=1.0)
  tokens, _, logits = ar.generate_with_model(cfg, params, batch, lens, jax.random.key(0), greedy, TINY, "mmu",
                                             return_logits=True)
  for b, prompt in enumerate(prompts):
    seq = np.concatenate([prompt, np.asarray(tokens[b])])[None]
    full = np.asarray(_forward(cfg)(params, seq, omni_mask.mmu_mask(seq, TINY)))[0]
    assert _rel_err(logits[b], full[len(prompt) - 1:len(prompt) - 1 + n]) <= 1e-4
  # T2I: MaskGIT over the cached text prefix against the full forward, with CFG
  images = np.random.default_rng(2).integers(0, 64, (2, 64)) + TINY.image_offset
  images[:, ::2] = TINY.mask_id
  cond = prompting.t2i_gen_prompt([[5, 6, 7], [8]], images, TINY, 16)
  uncond = prompting.t2i_gen_prompt([[]] * 2, images, TINY, 16)
  model = transformer.Transformer(cfg)
  apply = lambda p, ids, allowed: model.apply({"params": p}, ids, allowed)
  args = (params, cond, uncond, TINY, 64, 1.5)
  want = jax.jit(maskgit.t2i_tokens_to_logits(apply, *args))(jnp.asarray(cond[:, 18:82]))
  got = jax.jit(maskgit.t2i_cached_tokens_to_logits(cfg, *args))(jnp.asarray(cond[:, 18:82]))
  assert _rel_err(got, want) <= 1e-4
  # mixed: an image block on top of a cached text prefix
  prompt = jnp.array([[99, 4, 8, 15, 16, 23]], jnp.int32)
  prefill_fn, _ = ar.lm_fns(cfg, params, ar.prompt_mask_fn_for("mixed", TINY))
  _, cache = jax.jit(prefill_fn, static_argnums=2)(prompt, jnp.zeros((1,), jnp.int32), 6 + 66)
  block_fn = jax.jit(mixed.image_tokens_to_logits(cfg, params, cache, jnp.int32(6), TINY))
  seq = np.concatenate([np.asarray(prompt), [[TINY.soi_id]], images[:1], [[TINY.eoi_id]]], axis=1)
  full = np.asarray(_forward(cfg)(params, seq, omni_mask.mixed_mask(seq, TINY)))[:, 7:71]
  assert _rel_err(block_fn(jnp.asarray(images[:1], jnp.int32)), full) <= 1e-4


def test_flops_count_the_conv():
  """The analytic FLOPs (MFU's numerator) grow by the conv's product at every position, as XLA counts it."""
  from showo_jax.training import flops  # pylint: disable=g-import-not-at-top
  _, with_conv = _conv_cfg(3)
  _, plain = _conv_cfg(0)
  seq = showo_config.seq_len(plain)
  e = plain.model.hidden_size
  analytic = flops.forward_flops_per_sequence(with_conv, seq) - flops.forward_flops_per_sequence(plain, seq)
  assert analytic == 2 * seq * 9 * e * e

  def xla_flops(config):
    model = transformer.Transformer(showo_config.transformer_config(config))
    ids, allowed = jnp.zeros((1, seq), jnp.int32), jnp.ones((1, seq, seq), bool)
    params = jax.eval_shape(model.init, jax.random.key(0), ids, allowed)["params"]
    compiled = jax.jit(lambda p: model.apply({"params": p}, ids, allowed)).lower(nn.unbox(params)).compile()
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]
  # XLA also counts the taps' selects and the residual add: a few per element beside 9·e multiply-adds.
  assert xla_flops(with_conv) - xla_flops(plain) == pytest.approx(analytic, rel=0.05)
