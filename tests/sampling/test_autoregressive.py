"""KV-cached autoregressive decoding (official MMU trace, padding, stopping, top-k/top-p) and mixed generation."""

import functools

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
from showo_jax.sampling import autoregressive as ar
from showo_jax.sampling import maskgit
from showo_jax.sampling import mixed
from tests import parity_facts

TINY = vocab_lib.VocabLayout(llm_vocab_size=100, codebook_size=64, bos_id=99, eos_id=99)


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


@pytest.fixture(scope="module")
def model_a(parity_showo):
  state = {k[len("param."):]: v for k, v in parity_showo.items() if k.startswith("param.")}
  params, config = interop.load_official_showo(state, **parity_facts.TINY_PHI)
  return showo_config.transformer_config(config), params


@functools.lru_cache(maxsize=2)
def _forward(cfg):
  model = transformer.Transformer(cfg)
  return jax.jit(lambda params, ids, allowed: model.apply({"params": params}, ids, allowed))


def _greedy(max_new, eos_ids=()):
  return ar.SamplingConfig(max_new_tokens=max_new, eos_ids=eos_ids, pad_id=TINY.pad_id, top_k=1, temperature=1.0)


def _prompts(parity_sampling, parity_showo):
  """The official MMU prompt (77 tokens) and a shorter one with another image and question (70)."""
  _, trace = parity_sampling
  long = trace["mmu.prompt_ids"][0].astype(np.int32)
  image = parity_showo["mmu.image_tokens"][1]
  short = prompting.mmu_gen_prompt(image[None], [[3, 14, 15]], TINY)[0]
  return [long, short]


# ---------------------------------------------------------------------------------------------- MMU


@pytest.mark.parametrize("scan_layers", [False, True])
def test_greedy_matches_official_mmu_trace(model_a, parity_showo, parity_sampling, scan_layers):
  meta, trace = parity_sampling
  cfg, params = model_a
  if scan_layers:
    params, config = interop.load_official_showo(
        {k[6:]: v for k, v in parity_showo.items() if k.startswith("param.")}, scan_layers=True,
        **parity_facts.TINY_PHI)
    cfg = showo_config.transformer_config(config)
  prompt = trace["mmu.prompt_ids"].astype(np.int32)  # [1, 77]
  tokens, lengths, logits = ar.generate_with_model(cfg, params, prompt, np.array([77]), jax.random.key(0),
                                                   _greedy(12), TINY, "mmu", return_logits=True)
  assert rel_err(logits[0], trace["mmu.step_last_logits"]) <= 1e-4
  np.testing.assert_array_equal(tokens[0], trace["mmu.generated"])
  np.testing.assert_array_equal(tokens[0], meta["mmu_greedy_trace_tiny_A"]["generated"])
  assert int(lengths[0]) == 12


def test_left_padded_batch_equals_full_recomputation(model_a, parity_showo, parity_sampling):
  cfg, params = model_a
  prompts = _prompts(parity_sampling, parity_showo)
  batch = prompting.left_pad(prompts, TINY.pad_id)
  lens = np.array([len(p) for p in prompts])
  n = 6
  tokens, lengths, logits = ar.generate_with_model(cfg, params, batch, lens, jax.random.key(0), _greedy(n), TINY,
                                                   "mmu", return_logits=True)
  np.testing.assert_array_equal(lengths, [n, n])
  forward = _forward(cfg)
  for b, prompt in enumerate(prompts):
    # The official way: the whole unpadded sequence, batch 1, plain arange positions, the mmu mask.
    seq = np.concatenate([prompt, np.asarray(tokens[b])])[None]
    full = np.asarray(forward(params, seq, omni_mask.mmu_mask(seq, TINY)))[0]
    want = full[len(prompt) - 1:len(prompt) - 1 + n]  # [n, V]: logits that predicted each new token
    assert rel_err(logits[b], want) <= 1e-4
    np.testing.assert_array_equal(tokens[b], want.argmax(-1))


def _sampling(max_new, eos_ids=(), **kw):
  return ar.SamplingConfig(max_new_tokens=max_new, eos_ids=eos_ids, pad_id=TINY.pad_id, **kw)


def test_top_k_eos_stopping_and_max_new_tokens(model_a, parity_showo, parity_sampling):
  cfg, params = model_a
  prompts = _prompts(parity_sampling, parity_showo)
  batch, lens = prompting.left_pad(prompts, TINY.pad_id), np.array([len(p) for p in prompts])
  run = functools.partial(ar.generate_with_model, cfg, params, batch, lens, jax.random.key(4), layout=TINY,
                          prompt_mask="mmu")
  free, free_len, logits = run(config=_sampling(8, temperature=2.0, top_k=3), return_logits=True)
  free = np.asarray(free)
  np.testing.assert_array_equal(free_len, [8, 8])  # no stop token: the max_new_tokens cap
  top3 = np.argsort(-np.asarray(logits), axis=-1)[..., :3]  # [B, n, 3]
  assert (free[..., None] == top3).any(-1).all()  # only ever one of the 3 most likely tokens
  assert len(set(free[0].tolist())) > 1
  eos = int(free[0, 3])
  stopped, stop_len = run(config=_sampling(8, (eos,), temperature=2.0, top_k=3))
  stopped = np.asarray(stopped)
  for b in range(2):
    hits = np.nonzero(free[b] == eos)[0]
    length = int(hits[0]) + 1 if hits.size else 8
    assert int(stop_len[b]) == length  # the stop token counts and is kept …
    np.testing.assert_array_equal(stopped[b, :length], free[b, :length])  # … after the same draws …
    assert (stopped[b, length:] == TINY.pad_id).all()  # … and pads follow
  assert int(stop_len[0]) <= 4


def _nucleus(logits, top_p):
  """Reference nucleus set in float64 numpy: most likely tokens until their mass reaches top_p."""
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  order = np.argsort(-probs, axis=-1)
  keep = np.zeros_like(probs, bool)
  for b in range(probs.shape[0]):
    mass = 0.0
    for i in order[b]:
      keep[b, i] = True
      mass += probs[b, i]
      if mass >= top_p:
        break
  return keep


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.6), (4, 0.5), (1, 1.0)])
def test_filtering_only_samples_allowed_tokens(top_k, top_p):
  logits = jax.random.normal(jax.random.key(0), (4, 40)) * 2.0
  config = _sampling(1, temperature=0.7, top_k=top_k, top_p=top_p)
  draws = np.asarray(jax.vmap(lambda k: ar.choose_tokens(logits, k, config))(jax.random.split(jax.random.key(1),
                                                                                               400)))  # [400, 4]
  scaled = np.asarray(logits, np.float64) / 0.7
  allowed = np.ones_like(scaled, bool)
  if top_k:
    allowed &= scaled >= np.sort(scaled, -1)[:, -top_k][:, None]
  if top_p < 1.0:
    allowed &= _nucleus(np.where(allowed, scaled, -np.inf), top_p)
  for b in range(4):
    assert allowed[b, draws[:, b]].all()
    if top_k == 1:
      assert (draws[:, b] == scaled[b].argmax()).all()
  assert allowed.sum() < allowed.size  # the filter really removed tokens


def test_greedy_config_and_bad_options():
  assert _sampling(1).greedy and _sampling(1, temperature=1.0, top_k=1).greedy
  assert not _sampling(1, temperature=1.0).greedy
  for kw in (dict(max_new_tokens=0), dict(top_p=0.0), dict(temperature=-1.0)):
    with pytest.raises(ValueError):
      ar.SamplingConfig(**{**dict(max_new_tokens=1, eos_ids=(), pad_id=0), **kw})


# ---------------------------------------------------------------------------------------------- mixed


def test_cached_image_block_matches_full_mixed_mask(model_a):
  cfg, params = model_a
  prompt = jnp.array([[99, 4, 8, 15, 16, 23]], jnp.int32)
  prefill_fn, _ = ar.lm_fns(cfg, params, ar.prompt_mask_fn_for("mixed", TINY))
  _, cache = jax.jit(prefill_fn, static_argnums=2)(prompt, jnp.zeros((1,), jnp.int32), 6 + 66)
  fn = jax.jit(mixed.image_tokens_to_logits(cfg, params, cache, jnp.int32(6), TINY))
  image = np.random.default_rng(0).integers(0, 64, (1, 64)) + 110
  image[0, ::3] = TINY.mask_id
  seq = np.concatenate([np.asarray(prompt), [[TINY.soi_id]], image, [[TINY.eoi_id]]], axis=1)  # [1, 72]
  full = np.asarray(_forward(cfg)(params, seq, omni_mask.mixed_mask(seq, TINY)))[:, 7:71]
  assert rel_err(fn(jnp.asarray(image, jnp.int32)), full) <= 1e-4


def test_mixed_generation_makes_images_on_soi(model_a):
  cfg, params = model_a
  # Make <|soi|> the most likely next token everywhere: text asks for an image straight away.
  bias = np.array(params["lm_head"]["bias"])
  bias[TINY.soi_id] += 100.0
  params = dict(params, lm_head=dict(params["lm_head"], bias=bias))
  config = mixed.MixedConfig(text=_sampling(4, (TINY.eos_id,)), num_image_tokens=64, max_images=2,
                             image=maskgit.MaskGitConfig.from_layout(TINY, num_steps=4))
  segments = mixed.mixed_generate(cfg, params, [99, 4, 8], jax.random.key(0), TINY, config)
  assert [kind for kind, _ in segments] == ["image", "image"]  # the third <|soi|> ends generation
  for _, codes in segments:
    assert codes.shape == (64,) and codes.min() >= 0 and codes.max() < 64
  with pytest.raises(ValueError):
    mixed.MixedConfig(text=config.text, num_image_tokens=64,
                      image=maskgit.MaskGitConfig.from_layout(TINY, guidance_scale=1.0))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decode_mode_adds_no_params_and_cache_shapes(scan_layers):
  config = showo_config.showo_config("tiny")
  config.model.scan_layers = scan_layers
  cfg = showo_config.transformer_config(config)
  args = (jax.random.key(0), jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 5, 5), bool))
  plain = jax.eval_shape(transformer.Transformer(cfg).init, *args)
  cached = jax.eval_shape(transformer.Transformer(cfg, decode=True).init, *args)
  assert jax.tree.structure(plain["params"]) == jax.tree.structure(cached["params"])
  cache = transformer.init_cache(cfg, 3, 11)
  keys = [x for x in jax.tree.leaves(cache) if x.ndim >= 4]
  assert keys and all(x.shape[-4:] == (3, 11, 4, 16) and not x.any() for x in keys)
