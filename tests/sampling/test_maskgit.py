"""MaskGIT sampler: official step tables, replay of the official trace, invariants, CFG, editing helpers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo_jax import interop
from showo_jax.config import showo as showo_config
from showo_jax.data import prompting
from showo_jax.models import omni_mask
from showo_jax.models import transformer
from showo_jax.models import vocab as vocab_lib
from showo_jax.sampling import editing
from showo_jax.sampling import maskgit
from tests import parity_facts

TINY = vocab_lib.VocabLayout(llm_vocab_size=100, codebook_size=64, bos_id=99, eos_id=99)
MASK = TINY.mask_id  # 174
IMG = slice(18, 82)  # image positions of the tiny t2i sequences (T = 16, N = 64)
TABLES = "maskgit_inference_tables (all-masked start, temperature 1.0)"


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def _state(parity):
  return {k[len("param."):]: v for k, v in parity.items() if k.startswith("param.")}


@functools.lru_cache(maxsize=4)
def _apply_fn(cfg):
  model = transformer.Transformer(cfg)
  return jax.jit(lambda params, ids, allowed: model.apply({"params": params}, ids, allowed))


def _fixed_logits(seed, batch, n, vocab=175):
  """A tokens_to_logits that ignores its input: enough to exercise the schedule and the bookkeeping."""
  logits = jax.random.normal(jax.random.key(seed), (batch, n, vocab))
  return lambda tokens: logits


def _config(**kwargs):
  return maskgit.MaskGitConfig.from_layout(TINY, **kwargs)


# ---------------------------------------------------------------------------------------------- (a) tables


def test_mask_len_matches_official_tables(parity_sampling):
  meta, _ = parity_sampling
  tables = meta[TABLES]
  assert len(tables) == 12
  for key, rows in tables.items():
    n, steps = (int(part.split("=")[1]) for part in key.split(","))
    config = _config(num_steps=steps)
    np.testing.assert_array_equal(config.ratios(), np.float32([r["ratio"] for r in rows]))
    np.testing.assert_allclose(config.temperatures(), [r["gumbel_temperature"] for r in rows], rtol=1e-6,
                               atol=1e-12)
    unknown = n
    for r in rows:
      assert int(maskgit.mask_lengths(config, r["step"], jnp.int32(unknown), n)) == r["mask_len"], (key, r)
      assert unknown == r["unknown_before"]
      unknown = r["mask_len"]


@pytest.mark.parametrize("n,steps", [(64, 12), (64, 50), (256, 16), (256, 18), (1024, 12)])
def test_decode_follows_official_tables(parity_sampling, n, steps):
  meta, _ = parity_sampling
  want = [r["mask_len"] for r in meta[TABLES][f"N={n},steps={steps}"]]
  config = _config(num_steps=steps)
  codes, history = maskgit.decode(_fixed_logits(0, 2, n), jnp.full((2, n), MASK), jax.random.key(1), config,
                                  keep_history=True)
  masked = np.asarray(history == MASK).sum(-1)  # [S, B]
  np.testing.assert_array_equal(masked, np.repeat(np.array(want)[:, None], 2, axis=1))
  assert ((np.asarray(codes) >= 0) & (np.asarray(codes) < 64)).all()


# ---------------------------------------------------------------------------------------------- (b) trace


def test_replays_official_trace(parity_showo, parity_sampling):
  meta, trace = parity_sampling
  info = meta["maskgit_trace_tiny_A"]
  params, config = interop.load_official_showo(_state(parity_showo), **parity_facts.TINY_PHI)
  cfg = showo_config.transformer_config(config)
  apply_fn = _apply_fn(cfg)
  layout = showo_config.vocab_layout(config)
  assert layout == TINY
  cond = trace["input_ids_cond_initial"].astype(np.int32)
  uncond = trace["input_ids_uncond_initial"].astype(np.int32)
  allowed = omni_mask.predict_next_mask(np.concatenate([cond, uncond]), layout)
  np.testing.assert_array_equal(np.asarray(allowed), np.asarray(omni_mask.to_allowed(trace["attention_mask"])))
  mg = maskgit.MaskGitConfig.from_layout(layout, num_steps=info["timesteps"], guidance_scale=info["guidance_scale"],
                                         temperature=info["temperature"])
  fn = maskgit.t2i_tokens_to_logits(apply_fn, params, cond, uncond, layout, 64, mg.guidance_scale)
  step = jax.jit(maskgit.step_from_draws, static_argnums=3)
  tokens = cond[:, IMG]
  for s in range(mg.num_steps):
    inputs = trace[f"step{s}.model_input_ids"].astype(np.int32)
    # The step's model inputs are what our previous step produced (cond rows and the rebuilt uncond rows).
    np.testing.assert_array_equal(inputs[:2, IMG], tokens)
    np.testing.assert_array_equal(inputs[2:, IMG], tokens)
    np.testing.assert_array_equal(inputs[2:, :17], uncond[:, :17])
    assert rel_err(apply_fn(params, inputs, allowed), trace[f"step{s}.model_logits"]) <= 1e-4
    out = step(fn(jnp.asarray(tokens)), jnp.asarray(tokens), s, mg,
               trace[f"step{s}.multinomial_samples"].astype(np.int32), trace[f"step{s}.gumbel_noise"])
    np.testing.assert_allclose(out.probs, trace[f"step{s}.guided_codebook_probs"], atol=2e-6)
    np.testing.assert_allclose(out.selected_probs, trace[f"step{s}.selected_probs"], rtol=1e-4, atol=1e-7)
    want_conf = trace[f"step{s}.confidence"]
    assert (np.abs(np.asarray(out.confidence) - want_conf) <= 1e-5 * np.maximum(np.abs(want_conf), 1.0)).all()
    np.testing.assert_array_equal(out.mask_len, np.int32(info["steps"][s]["mask_len"]))
    np.testing.assert_array_equal(out.masking, trace[f"step{s}.masking"])
    after = np.asarray(info["steps"][s]["image_tokens_after_step_minus_offset"])
    np.testing.assert_array_equal(np.asarray(out.next_tokens), np.where(after < 0, MASK, after + 110))
    tokens = np.asarray(out.next_tokens)
  np.testing.assert_array_equal(out.sampled, trace["final_sampled_ids"])
  np.testing.assert_array_equal(out.sampled, np.asarray(info["final_sampled_ids"]))


def test_t2i_generate_on_trace_prompts(parity_showo, parity_sampling):
  _, trace = parity_sampling
  params, config = interop.load_official_showo(_state(parity_showo), **parity_facts.TINY_PHI)
  apply_fn = _apply_fn(showo_config.transformer_config(config))
  cond = trace["input_ids_cond_initial"].astype(np.int32)
  uncond = trace["input_ids_uncond_initial"].astype(np.int32)
  mg = _config(num_steps=12, guidance_scale=2.0)
  run = functools.partial(maskgit.t2i_generate, apply_fn, params, cond, uncond, config=mg, layout=TINY,
                          num_image_tokens=64)
  codes = np.asarray(run(rng=jax.random.key(3)))
  known = cond[:, IMG] != MASK
  np.testing.assert_array_equal(codes[known], cond[:, IMG][known] - 110)  # the inpainting context survives
  assert codes.min() >= 0 and codes.max() < 64
  np.testing.assert_array_equal(codes, run(rng=jax.random.key(3)))


# ---------------------------------------------------------------------------------------------- (c) invariants


@pytest.fixture(scope="module")
def random_t2i():
  """A random tiny model and a batch of 3 t2i prompts: all masked, half known, one token unknown."""
  config = showo_config.showo_config("tiny")
  config.model.init_std = 0.3  # peaked enough that samples depend on the model, not only on the noise
  config.model.matmul_precision = "highest"  # float32 products on accelerators too, as on CPU
  cfg = showo_config.transformer_config(config)
  ids0 = jnp.zeros((1, 8), jnp.int32)
  init = jax.jit(transformer.Transformer(cfg).init)
  params = nn.unbox(init(jax.random.key(7), ids0, jnp.ones((1, 8, 8), bool)))["params"]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 64, (3, 64)) + 110
  images[0] = MASK
  images[1, rng.permutation(64)[:32]] = MASK
  images[2, 17] = MASK
  cond = prompting.t2i_gen_prompt([[5, 6, 7], [8], [1, 2, 3, 4, 5]], images, TINY, 16)
  uncond = prompting.t2i_gen_prompt([[]] * 3, images, TINY, 16)
  return _apply_fn(cfg), params, cond, uncond


@pytest.mark.parametrize("steps", [1, 2, 5, 12])
def test_invariants(random_t2i, steps):
  apply_fn, params, cond, uncond = random_t2i
  mg = _config(num_steps=steps, guidance_scale=1.5)
  fn = maskgit.t2i_tokens_to_logits(apply_fn, params, cond, uncond, TINY, 64, mg.guidance_scale)
  start = jnp.asarray(cond[:, IMG])
  codes, history = maskgit.decode(fn, start, jax.random.key(steps), mg, keep_history=True)
  codes, history, start = np.asarray(codes), np.asarray(history), np.asarray(start)
  unknown = start == MASK
  assert codes.shape == (3, 64) and codes.min() >= 0 and codes.max() < 64  # never [MASK]
  np.testing.assert_array_equal(codes[~unknown], start[~unknown] - 110)  # known tokens never change
  # The trajectory: states after steps 0 … S-2, then the returned codes (the last re-mask is ignored).
  trajectory = np.concatenate([history[:-1], codes[None] + 110])  # [S, B, N]
  masked = trajectory == MASK
  assert not masked[:, ~unknown].any() and not masked[-1].any()
  assert (masked[1:] <= masked[:-1]).all()  # a revealed token is never re-masked, so it is revealed once …
  for k in range(steps):  # … and keeps the value it was revealed with.
    done = ~masked[k]
    np.testing.assert_array_equal(trajectory[k][done], codes[done] + 110)
  # Still-masked counts follow the mask_len rule with N = 64 (the rule itself is checked on the tables).
  before = unknown.sum(-1)
  for k in range(steps - 1):
    np.testing.assert_array_equal(masked[k].sum(-1), maskgit.mask_lengths(mg, k, jnp.asarray(before), 64))
    before = masked[k].sum(-1)
  # Deterministic for a seed, different for another.
  np.testing.assert_array_equal(codes, maskgit.decode(fn, start, jax.random.key(steps), mg))
  if steps > 1:
    assert (codes != np.asarray(maskgit.decode(fn, start, jax.random.key(99), mg))).any()


def test_cfg(random_t2i):
  apply_fn, params, cond, uncond = random_t2i
  tokens = jnp.asarray(cond[:, IMG])
  plain = maskgit.t2i_tokens_to_logits(apply_fn, params, cond, None, TINY, 64)
  zero = maskgit.t2i_tokens_to_logits(apply_fn, params, cond, uncond, TINY, 64, 0.0)
  guided = maskgit.t2i_tokens_to_logits(apply_fn, params, cond, uncond, TINY, 64, 2.0)
  np.testing.assert_array_equal(zero(tokens), plain(tokens))  # so w = 0 decodes exactly like the plain path
  free = maskgit.t2i_tokens_to_logits(apply_fn, params, uncond, None, TINY, 64)
  np.testing.assert_allclose(guided(tokens), 3.0 * plain(tokens) - 2.0 * free(tokens), rtol=1e-5, atol=1e-4)


def test_bottom_k_ties_and_known_positions():
  scores = jnp.array([[0.0, 0.0, 0.0, 0.0, -1.0], [5.0, 1.0, 1.0, 1.0, 1.0]])
  eligible = jnp.array([[True] * 5, [False, True, True, True, True]])
  got = maskgit.bottom_k_mask(scores, jnp.array([3, 2]), eligible)
  np.testing.assert_array_equal(got, [[True, True, False, False, True], [False, True, True, False, False]])
  # No eligible position: nothing is masked whatever k says (a fully known image stays as it is).
  assert not maskgit.bottom_k_mask(scores, jnp.array([1, 1]), jnp.zeros((2, 5), bool)).any()
  codes = maskgit.decode(_fixed_logits(0, 1, 4), jnp.array([[110, 111, 112, 113]]), jax.random.key(0),
                         _config(num_steps=3))
  np.testing.assert_array_equal(codes, [[0, 1, 2, 3]])


def test_temperature_annealing():
  mult = _config(num_steps=4, temperature=2.0).temperatures()
  lin = _config(num_steps=4, temperature=2.0, temperature_annealing="linear").temperatures()
  np.testing.assert_allclose(mult, [1.5, 0.75, 0.1875, 0.0])
  np.testing.assert_allclose(lin, [1.5, 1.0, 0.5, 0.0])
  with pytest.raises(ValueError):
    _config(temperature_annealing="cosine")
  with pytest.raises(ValueError):
    _config(num_steps=0)


# ---------------------------------------------------------------------------------------------- (e) editing


def test_bicubic_weights_literal():
  # 4 → 2 (scale 2): source 0.5 and 2.5; taps clamped at the borders; Keys' A = -0.75 weights.
  np.testing.assert_allclose(editing._resize_matrix(4, 2), [[0.5, 0.59375, -0.09375, 0.0],
                                                           [0.0, -0.09375, 0.59375, 0.5]])
  np.testing.assert_allclose(editing._resize_matrix(3, 3), np.eye(3), atol=1e-7)  # same size: identity


def test_inpainting_mask_literal():
  mask = np.zeros((4, 4), np.float32)
  mask[:2, :2] = 1.0  # top-left quadrant → 1.09375² = 1.196 at (0, 0), -0.1025 at its neighbours
  np.testing.assert_array_equal(editing.inpainting_token_mask(mask, 2), [True, False, False, False])
  centre = np.zeros((4, 4), np.float32)
  centre[1:3, 1:3] = 1.0  # a centred 2x2 square: (0.59375 - 0.09375)² = 0.25 everywhere → nothing
  assert not editing.inpainting_token_mask(centre, 2).any()
  tall = np.zeros((4, 6), np.uint8)
  tall[:, 3:] = 255  # right half of a uint8 mask, grid (2, 3): the middle column gets exactly
  np.testing.assert_array_equal(editing.inpainting_token_mask(tall, (2, 3)).reshape(2, 3),  # 0.5 → masked
                                [[False, True, True], [False, True, True]])
  pil = __import__("PIL.Image", fromlist=["Image"]).fromarray((mask * 255).astype(np.uint8))
  np.testing.assert_array_equal(editing.inpainting_token_mask(pil, 2), [True, False, False, False])
  tokens = np.arange(110, 114)[None]
  np.testing.assert_array_equal(editing.mask_tokens(tokens, [True, False, False, True], MASK),
                                [[MASK, 111, 112, MASK]])


GRID = np.arange(16).reshape(4, 4)  # rows 0-3: 0 1 2 3 / 4 5 6 7 / 8 9 10 11 / 12 13 14 15
M = -1


@pytest.mark.parametrize("direction,window,stitched", [
    ("left", [[M, M, 0, 1], [M, M, 4, 5], [M, M, 8, 9], [M, M, 12, 13]],
     [[M, M, 0, 1, 2, 3], [M, M, 4, 5, 6, 7], [M, M, 8, 9, 10, 11], [M, M, 12, 13, 14, 15]]),
    ("right", [[2, 3, M, M], [6, 7, M, M], [10, 11, M, M], [14, 15, M, M]],
     [[0, 1, 2, 3, M, M], [4, 5, 6, 7, M, M], [8, 9, 10, 11, M, M], [12, 13, 14, 15, M, M]]),
    ("up", [[M, M, M, M], [M, M, M, M], [0, 1, 2, 3], [4, 5, 6, 7]],
     [[M, M, M, M], [M, M, M, M], [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]),
    ("down", [[8, 9, 10, 11], [12, 13, 14, 15], [M, M, M, M], [M, M, M, M]],
     [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [M, M, M, M], [M, M, M, M]]),
])
def test_extrapolation_literal(direction, window, stitched):
  got = editing.extrapolation_window(GRID, direction, M)
  np.testing.assert_array_equal(got, window)
  # The "generated" window here is the input itself with -1 standing for new tokens: the stitch must put the
  # original grid back intact next to the new half.
  np.testing.assert_array_equal(editing.stitch_extrapolation(GRID, got, direction), stitched)


def test_extrapolation_offset_batch_and_errors():
  grid = np.stack([GRID, GRID + 100])  # [2, 4, 4]
  window = editing.extrapolation_window(grid, "left", M, offset=1)  # keep 1 column, 3 new
  np.testing.assert_array_equal(window[1], [[M, M, M, 100], [M, M, M, 104], [M, M, M, 108], [M, M, M, 112]])
  wide = editing.stitch_extrapolation(grid, window, "left", offset=1)
  assert wide.shape == (2, 4, 7)
  np.testing.assert_array_equal(wide[:, :, 3:], grid)
  # A second step right on the 4x7 grid uses a 4-wide window: keeps the last 2 columns.
  right = editing.extrapolation_window(wide, "right", M, window=4)
  np.testing.assert_array_equal(right[0, :, :2], wide[0, :, 5:])
  assert editing.stitch_extrapolation(wide, right, "right").shape == (2, 4, 9)
  with pytest.raises(ValueError):
    editing.extrapolation_window(wide, "up", M, window=4)  # 7 wide: not the 4-token window
  with pytest.raises(ValueError):
    editing.extrapolation_window(GRID, "sideways", M)
