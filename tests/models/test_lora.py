"""LoRA adapters in the backbone: a zero update at init, merging equals the adapted model, a rank-r adapter
recovers a planted rank-r delta, the update scaled by alpha / r (0.75, in the layer and the merge), LoRA dropout
on the adapter's input in training and off at evaluation, logical axis names like the base kernels, unknown
targets refused."""

import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from showo_jax.common import axes
from showo_jax.models import dense
from showo_jax.models import lora
from showo_jax.models import omni_mask
from showo_jax.models import transformer

_ALL = {"phi": ("q", "k", "v", "o", "fc1", "fc2"), "llama": ("q", "k", "v", "o", "gate", "up", "down")}


def _cfg(family, scan, rank=0, targets=()):
  return transformer.TransformerConfig(
      family=family, vocab_size=97, hidden_size=32, num_layers=2, num_heads=4,
      num_kv_heads=4 if family == "phi" else 2, head_dim=8, intermediate_size=64, rotary_dim=4 if family == "phi" else 8,
      rope_theta=10000.0, norm_eps=1e-5, qk_norm=True, init_std=0.02, dtype="float32", param_dtype="float32",
      scan_layers=scan, remat_policy="none", lora_rank=rank, lora_alpha=8.0, lora_targets=tuple(targets))


def _ids():
  return jax.random.randint(jax.random.key(3), (2, 12), 0, 97)


def _logits(cfg, params, ids):
  return transformer.Transformer(cfg).apply({"params": params}, ids, omni_mask.causal_spans(*ids.shape))


def _init(cfg, ids):
  return nn.unbox(transformer.Transformer(cfg).init(jax.random.key(0), ids, omni_mask.causal_spans(*ids.shape)))["params"]


@pytest.mark.parametrize("family", ["phi", "llama"])
@pytest.mark.parametrize("scan", [False, True])
def test_adapters_start_as_the_base_model_and_merge_exactly(family, scan):
  ids = _ids()
  base_cfg, lora_cfg = _cfg(family, scan), _cfg(family, scan, rank=4, targets=_ALL[family])
  adapted = _init(lora_cfg, ids)
  flat = flax.traverse_util.flatten_dict(adapted)
  base = flax.traverse_util.unflatten_dict({k: v for k, v in flat.items() if not lora.is_adapter(k)})
  adapters = {k for k in flat if k[-1] == "lora_b"}
  per_layer = len(_ALL[family]) * (1 if scan else 2)
  assert len(adapters) == per_layer and all(not np.any(flat[k]) for k in adapters)  # B = 0
  # B = 0: the adapted model is the base model. Not bit for bit: the zero update is a product XLA may fuse into the
  # base one, which changes the float32 rounding (by ~1e-7 on some CPUs); a non-zero initial B (std 0.02) moves
  # logits by ~1e-2.
  np.testing.assert_allclose(_logits(lora_cfg, adapted, ids), _logits(base_cfg, base, ids), rtol=0, atol=1e-6)
  # A trained (non-zero) B: merging gives the same logits within 1e-5 relative.
  rng = np.random.default_rng(0)
  trained = {k: (jnp.asarray(rng.normal(0, 0.05, v.shape), v.dtype) if k in adapters else v) for k, v in flat.items()}
  trained = flax.traverse_util.unflatten_dict(trained)
  want = np.asarray(_logits(lora_cfg, trained, ids), np.float64)
  merged = lora.merge(trained, lora_cfg.lora_alpha, scan)
  assert jax.tree.structure(merged) == jax.tree.structure(base)
  got = np.asarray(_logits(base_cfg, merged, ids), np.float64)
  assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5
  # ... and the update is not negligible (a merge that dropped it would fail above).
  assert np.abs(want - np.asarray(_logits(base_cfg, base, ids))).max() > 1e-3


def test_merged_kernel_is_the_float64_sum():
  rng = np.random.default_rng(1)
  # An o_proj-like kernel [H, D, E]: two input axes, and 3 stacked layers in front.
  w, a, b = rng.normal(size=(3, 2, 4, 5)), rng.normal(size=(3, 2, 4, 3)), rng.normal(size=(3, 3, 5))
  got = dense.merged_kernel(jnp.float32(w), jnp.float32(a), jnp.float32(b), 6.0, num_stacked=1)
  want = w + 2.0 * np.einsum("lhdr,lre->lhde", a, b)
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-5)


def test_rank_r_adapter_recovers_a_planted_rank_r_delta():
  """y = x (W0 + U V) with rank(U V) = 2; only A and B train: the merged kernel converges to W0 + U V. A wrong
  scale, a transposed factor or a dropped update leaves a residual far above the 2 % bound."""
  rng = np.random.default_rng(2)
  k, n, r = 16, 12, 2
  w0 = rng.normal(0, 0.3, (k, n)).astype(np.float32)
  delta = (rng.normal(0, 0.5, (k, r)) @ rng.normal(0, 0.5, (r, n))).astype(np.float32)
  layer = dense.Dense(features=(n,), kernel_axes=(axes.EMBED, axes.MLP), use_bias=False, lora_rank=r, lora_alpha=4.0)
  params = nn.unbox(layer.init(jax.random.key(0), jnp.zeros((1, k))))["params"]
  params["kernel"] = jnp.asarray(w0)
  frozen = params["kernel"]
  x = jnp.asarray(rng.normal(size=(256, k)), jnp.float32)
  y = x @ (w0 + delta)
  tx = optax.adam(1e-2)
  factors = {"lora_a": params["lora_a"], "lora_b": params["lora_b"]}

  @jax.jit
  def step(factors, opt_state):
    def loss(f):
      return jnp.mean((layer.apply({"params": dict(f, kernel=frozen)}, x) - y) ** 2)
    g = jax.grad(loss)(factors)
    updates, opt_state = tx.update(g, opt_state)
    return optax.apply_updates(factors, updates), opt_state

  opt_state = tx.init(factors)
  for _ in range(1500):
    factors, opt_state = step(factors, opt_state)
  learned = np.asarray(dense.merged_kernel(frozen, factors["lora_a"], factors["lora_b"], 4.0)) - w0
  assert np.linalg.norm(learned - delta) / np.linalg.norm(delta) < 0.02


def test_adapters_carry_the_kernels_axis_names():
  cfg = _cfg("llama", True, rank=4, targets=("q", "o", "down"))
  ids = _ids()
  boxed = transformer.Transformer(cfg).init(jax.random.key(0), ids, omni_mask.causal_spans(*ids.shape))["params"]
  attn, mlp = boxed["layers"]["attn"], boxed["layers"]["mlp"]
  assert attn["q_proj"]["lora_a"].names == (axes.LAYERS, axes.EMBED, axes.LORA)
  assert attn["q_proj"]["lora_b"].names == (axes.LAYERS, axes.LORA, axes.HEADS, axes.HEAD_DIM)
  assert attn["o_proj"]["lora_a"].names == (axes.LAYERS, axes.HEADS, axes.HEAD_DIM, axes.LORA)
  assert mlp["down_proj"]["lora_b"].names == (axes.LAYERS, axes.LORA, axes.EMBED)
  assert "lora_a" not in attn["k_proj"] and "lora_a" not in mlp["up_proj"]


def test_unknown_target_is_refused_by_name():
  with pytest.raises(ValueError, match="fc1.*llama"):
    _init(_cfg("llama", False, rank=2, targets=("q", "fc1")), _ids())


def _adapted_dense(rank, alpha, dropout, deterministic, k=24, n=20):
  """A Dense with a rank-`rank` adapter, its params with a non-zero B (a trained adapter), and an input."""
  layer = dense.Dense(features=(n,), kernel_axes=(axes.EMBED, axes.MLP), use_bias=False, lora_rank=rank,
                      lora_alpha=alpha, lora_dropout=dropout, deterministic=deterministic)
  rng = np.random.default_rng(4)
  params = {"kernel": rng.normal(0, 0.3, (k, n)), "lora_a": rng.normal(0, 0.3, (k, rank)),
            "lora_b": rng.normal(0, 0.3, (rank, n))}
  x = rng.normal(size=(64, k))
  return layer, {name: jnp.float32(v) for name, v in params.items()}, jnp.float32(x)


def _f64(*arrays):
  return [np.asarray(a, np.float64) for a in arrays]


def test_adapter_scale_is_alpha_over_rank_in_the_layer_and_in_the_merge():
  """alpha 3, rank 4: the update is scaled by 0.75 (not alpha, not 1/rank, not alpha/sqrt(rank)), against a
  float64 recomputation of y = x W + (alpha / r) x A B and of the merged W + (alpha / r) A B."""
  layer, p, x = _adapted_dense(rank=4, alpha=3.0, dropout=0.0, deterministic=True)
  w, a, b, x64 = _f64(p["kernel"], p["lora_a"], p["lora_b"], x)
  want = x64 @ w + 0.75 * (x64 @ a) @ b
  got = np.asarray(layer.apply({"params": p}, x), np.float64)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
  assert np.abs(0.75 * (x64 @ a) @ b).max() > 0.1 * np.abs(want).max()  # the update is not negligible
  # The merge, of a per-layer tree and of a scanned one (two layers stacked).
  merged = lora.merge({"mlp": {"fc1": dict(p)}}, 3.0, scanned=False)
  np.testing.assert_allclose(np.asarray(merged["mlp"]["fc1"]["kernel"], np.float64), w + 0.75 * a @ b,
                             rtol=0, atol=1e-6)
  assert set(merged["mlp"]["fc1"]) == {"kernel"}
  stacked = {name: jnp.stack([v, 2 * v]) for name, v in p.items()}
  merged = lora.merge({"layers": {"mlp": {"fc1": stacked}}}, 3.0, scanned=True)["layers"]["mlp"]["fc1"]["kernel"]
  want = np.stack([w + 0.75 * a @ b, 2 * w + 0.75 * (2 * a) @ (2 * b)])
  np.testing.assert_allclose(np.asarray(merged, np.float64), want, rtol=0, atol=1e-5)


def test_lora_dropout_drops_the_adapters_input_in_training_only():
  """rate 0.5: in training the adapter sees x with about half its entries zeroed and the rest scaled by 2 (the
  base path sees all of x), y = x W + (alpha / r) · dropout(x) A B with that very mask; at evaluation the layer
  is bit for bit the layer without dropout."""
  rate, scale = 0.5, 0.75
  layer, p, x = _adapted_dense(rank=4, alpha=3.0, dropout=rate, deterministic=False)
  y, seen = layer.apply({"params": p}, x, rngs={"dropout": jax.random.key(7)}, capture_intermediates=True)
  h = np.asarray(seen["intermediates"]["Dropout_0"]["__call__"][0], np.float64)  # what the adapter multiplied
  x64, w, a, b = _f64(x, p["kernel"], p["lora_a"], p["lora_b"])
  kept = h != 0
  np.testing.assert_allclose(h[kept], x64[kept] / (1 - rate), rtol=1e-6)
  assert abs(1 - kept.mean() - rate) < 0.05, kept.mean()  # 1,536 entries: 4 standard deviations is 0.05
  want = x64 @ w + scale * (h @ a) @ b
  np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=0, atol=1e-5 * np.abs(want).max())
  # Evaluation: the same params, no rng; equal to a layer built without dropout, and unlike training.
  evaluated = layer.clone(deterministic=True).apply({"params": p}, x)
  plain, _, _ = _adapted_dense(rank=4, alpha=3.0, dropout=0.0, deterministic=True)
  np.testing.assert_array_equal(np.asarray(evaluated), np.asarray(plain.apply({"params": p}, x)))
  assert np.abs(np.asarray(y) - np.asarray(evaluated)).max() > 1e-2
  # Another rng draws another mask.
  other = layer.apply({"params": p}, x, rngs={"dropout": jax.random.key(8)})
  assert np.abs(np.asarray(other) - np.asarray(y)).max() > 1e-2


def test_the_backbone_applies_lora_dropout_in_training_and_not_in_evaluation():
  """Through the transformer: with lora dropout the training forward (deterministic=False, a dropout rng) moves
  the logits, the evaluation forward gives the logits of the same adapters without dropout, bit for bit."""
  ids = _ids()
  cfg = _cfg("phi", False, rank=4, targets=_ALL["phi"])
  params = _init(cfg, ids)
  flat = flax.traverse_util.flatten_dict(params)
  rng = np.random.default_rng(5)
  params = flax.traverse_util.unflatten_dict(
      {k: (jnp.asarray(rng.normal(0, 0.5, v.shape), v.dtype) if k[-1] == "lora_b" else v) for k, v in flat.items()})
  with_dropout = dataclasses.replace(cfg, lora_dropout=0.5)
  model = transformer.Transformer(with_dropout)
  spans = omni_mask.causal_spans(*ids.shape)
  trained = model.clone(deterministic=False).apply({"params": params}, ids, spans, rngs={"dropout": jax.random.key(1)})
  evaluated = model.apply({"params": params}, ids, spans)
  np.testing.assert_array_equal(np.asarray(evaluated), np.asarray(_logits(cfg, params, ids)))
  assert np.abs(np.asarray(trained) - np.asarray(evaluated)).max() > 1e-3
