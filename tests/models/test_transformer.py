"""Backbone numerics: official parity (logits, activations, gradients), llama family vs a float64 oracle,
scan/remat equivalence, mixed precision, logical axis annotations."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo_jax import interop
from showo_jax.config import showo as showo_config
from showo_jax.interop import showo_keys
from showo_jax.models import losses
from showo_jax.models import transformer
from tests import numpy_reference
from tests import parity_facts

TASKS_A = np.array([0, 0, 0, 0, 1, 1, 2, 2], np.int32)  # parity batch: 4 t2i, 2 lm, 2 mmu


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def _state(parity):
  return {k[len("param."):]: v for k, v in parity.items() if k.startswith("param.")}


@pytest.mark.parametrize("scan_layers", [False, True])
def test_logits_match_official(parity_showo, scan_layers):
  params, config = interop.load_official_showo(_state(parity_showo), scan_layers=scan_layers, **parity_facts.TINY_PHI)
  logits = interop.showo_logits(params, config, parity_showo["input_ids"], parity_showo["attention_allowed"])
  assert logits.dtype == np.float32 and logits.shape == (8, 83, 175)
  assert rel_err(logits, parity_showo["logits"]) <= 1e-4
  # The official additive float mask gives the same result.
  additive = interop.showo_logits(params, config, parity_showo["input_ids"], parity_showo["attention_mask"])
  np.testing.assert_array_equal(additive, logits)


def test_activations_match_official(parity_showo):
  params, config = interop.load_official_showo(_state(parity_showo), **parity_facts.TINY_PHI)
  model = transformer.Transformer(showo_config.transformer_config(config))
  _, state = model.apply({"params": params}, parity_showo["input_ids"].astype(np.int32),
                         parity_showo["attention_allowed"][:, 0], mutable=["intermediates"])
  inter = state["intermediates"]
  assert rel_err(inter["embeddings"][0], parity_showo["act.embeddings"]) <= 1e-6
  for i in range(2):
    layer = inter[f"layers_{i}"]
    assert rel_err(layer["output"][0], parity_showo[f"act.layer{i}.output"]) <= 1e-4
    assert rel_err(layer["attn_out"][0], parity_showo[f"act.layer{i}.self_attn_out"]) <= 1e-4
    q = np.transpose(layer["attn"]["q_norm_out"][0], (0, 2, 1, 3))  # ours [B, L, H, D]; official [B, H, L, D]
    assert rel_err(q, parity_showo[f"act.layer{i}.q_layernorm_out"]) <= 1e-4
  assert rel_err(inter["final_norm_out"][0], parity_showo["act.final_layernorm"]) <= 1e-4


def _total_loss_fn(model, config, parity):
  ids = parity["input_ids"].astype(np.int32)
  allowed = parity["attention_allowed"][:, 0]
  labels = parity["labels"].astype(np.int32)

  def loss_fn(params):
    logits = model.apply({"params": params}, ids, allowed)
    return losses.showo_loss(logits, ids, labels, TASKS_A, **showo_config.loss_settings(config))["loss"]
  return loss_fn


def test_gradients_match_official(parity_showo):
  params, config = interop.load_official_showo(_state(parity_showo), **parity_facts.TINY_PHI)
  model = transformer.Transformer(showo_config.transformer_config(config))
  loss, grads = jax.jit(jax.value_and_grad(_total_loss_fn(model, config, parity_showo)))(params)
  assert abs(float(loss) - float(parity_showo["loss_total"])) <= 1e-4 * float(parity_showo["loss_total"])
  official = showo_keys.params_to_official(jax.tree.map(np.asarray, grads), config)
  worst = max(rel_err(official[k], parity_showo["grad." + k]) for k in official)
  assert worst <= 1e-4, worst


@pytest.mark.parametrize("policy", ["full", "save_dots", "save_qkv_proj"])
def test_remat_and_scan_give_identical_numbers(parity_showo, policy):
  base_params, config = interop.load_official_showo(_state(parity_showo), **parity_facts.TINY_PHI)
  model = transformer.Transformer(showo_config.transformer_config(config))
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(_total_loss_fn(model, config, parity_showo)))(base_params)
  config.model.remat_policy = policy
  config.model.scan_layers = True
  scanned = showo_keys.stack_layers(base_params, config.model.num_layers)
  model = transformer.Transformer(showo_config.transformer_config(config))
  loss, grads = jax.jit(jax.value_and_grad(_total_loss_fn(model, config, parity_showo)))(scanned)
  assert abs(float(loss) - float(ref_loss)) <= 1e-6
  grads = showo_keys.unstack_layers(jax.tree.map(np.asarray, grads), config.model.num_layers)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    assert rel_err(g, r) <= 1e-5


def test_phi_matches_float64_oracle(parity_showo):
  state = _state(parity_showo)
  params, config = interop.load_official_showo(state, **parity_facts.TINY_PHI)
  ids, allowed = parity_showo["input_ids"], parity_showo["attention_allowed"][:, 0]
  want = numpy_reference.forward(state, ids, allowed, family="phi", num_heads=4, num_kv_heads=4, rotary_dim=8)
  assert rel_err(interop.showo_logits(params, config, ids, allowed), want) <= 1e-4
  assert rel_err(want, parity_showo["logits"]) <= 1e-5  # the oracle itself agrees with the official code


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_llama_family_matches_float64_oracle(parity_showo, kv_heads):
  rng = np.random.default_rng(kv_heads)
  state = numpy_reference.random_llama_state(rng, vocab=175, hidden=64, layers=2, heads=4, kv_heads=kv_heads,
                                             inter=96)
  params, config = interop.load_official_showo(state, **parity_facts.TINY_LLAMA)
  assert config.model.family == "llama" and config.model.num_kv_heads == kv_heads
  assert "bias" not in params["lm_head"] and "bias" not in params["layers_0"]["attn"]["q_proj"]
  ids, allowed = parity_showo["input_ids"], parity_showo["attention_allowed"][:, 0]
  want = numpy_reference.forward(state, ids, allowed, family="llama", num_heads=4, num_kv_heads=kv_heads,
                                 rotary_dim=16, theta=config.model.rope_theta, eps=config.model.norm_eps)
  assert rel_err(interop.showo_logits(params, config, ids, allowed), want) <= 1e-4
  # Export gives the same state dict back.
  back = showo_keys.params_to_official(params, config)
  assert sorted(back) == sorted(state) and all(np.array_equal(back[k], state[k]) for k in state)


def test_bfloat16_compute_keeps_float32_params_and_logits(parity_showo):
  params, config = interop.load_official_showo(_state(parity_showo), **parity_facts.TINY_PHI)
  config.model.dtype = "bfloat16"
  logits = interop.showo_logits(params, config, parity_showo["input_ids"], parity_showo["attention_allowed"])
  assert logits.dtype == np.float32
  assert rel_err(logits, parity_showo["logits"]) <= 5e-2  # bf16 has an 8-bit mantissa
  assert rel_err(logits, parity_showo["logits"]) > 1e-6  # and the computation really ran in bf16


@pytest.mark.parametrize("size,scan", [("tiny", False), ("tiny-llama", True)])
def test_every_param_has_logical_axes(size, scan):
  config = showo_config.showo_config(size)
  config.model.scan_layers = scan
  model = transformer.Transformer(showo_config.transformer_config(config))
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4, 4), bool))
  boxed = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert boxed and all(isinstance(x, nn.Partitioned) for x in boxed)
  for leaf in boxed:
    assert len(leaf.names) == leaf.value.ndim and all(n is not None for n in leaf.names)
  specs = nn.get_partition_spec(variables)["params"]
  assert specs["lm_head"]["kernel"] == jax.P("embed", "vocab")
  if scan:
    assert specs["layers"]["attn"]["q_proj"]["kernel"] == jax.P("layers", "embed", "heads", "head_dim")


def test_init_shapes_follow_config():
  config = showo_config.showo_config("tiny")
  model = transformer.Transformer(showo_config.transformer_config(config))
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 5, 5), bool)))
  p = params["params"]
  assert p["embed"]["embedding"].shape == (175, 64)
  assert p["layers_1"]["attn"]["q_norm"]["scale"].shape == (16,)
  np.testing.assert_array_equal(p["layers_1"]["attn"]["q_norm"]["scale"], np.ones(16))  # identity at init
  assert abs(float(p["embed"]["embedding"].std()) - 0.02) < 0.003


@pytest.mark.parametrize("scan", [False, True])
def test_dropout_is_training_only_and_drops_the_configured_share(scan):
  config = showo_config.showo_config("tiny")
  config.model.update(dropout_rate=0.25, scan_layers=scan)
  cfg = showo_config.transformer_config(config)
  ids = jnp.arange(24).reshape(2, 12) % 50
  allowed = jnp.tril(jnp.ones((2, 12, 12), bool))
  params = nn.unbox(transformer.Transformer(cfg).init(jax.random.key(0), ids, allowed))
  plain = transformer.Transformer(showo_config.transformer_config(showo_config.showo_config("tiny")))
  if scan:
    plain = transformer.Transformer(dataclasses.replace(plain.cfg, scan_layers=True))
  # Inference (deterministic, the default) ignores the rate entirely.
  np.testing.assert_array_equal(transformer.Transformer(cfg).apply(params, ids, allowed), plain.apply(params, ids, allowed))
  train = transformer.Transformer(cfg, deterministic=False)
  a = train.apply(params, ids, allowed, rngs={"dropout": jax.random.key(1)})
  b = train.apply(params, ids, allowed, rngs={"dropout": jax.random.key(1)})
  c = train.apply(params, ids, allowed, rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # The embedding dropout zeroes about a quarter of the entries and scales the rest by 1 / 0.75.
  _, inter = train.apply(params, ids, allowed, rngs={"dropout": jax.random.key(3)}, mutable=["intermediates"])
  emb = np.asarray(inter["intermediates"]["embeddings"][0])
  table = np.asarray(params["params"]["embed"]["embedding"])[np.asarray(ids)]
  kept = emb != 0
  assert 0.2 < 1 - kept.mean() < 0.3
  np.testing.assert_allclose(emb[kept], table[kept] / 0.75, rtol=1e-6)
