"""Fused attention (models/flash_attention.py, Pallas in interpret mode on CPU) and the other kernels of
`attention.attend` against the reference path, forward and backward, on every task's mask.

Tolerances: float32 operands at HIGHEST precision agree with the reference to 2e-6 relative (the online
softmax sums in another order); bfloat16 operands to 2e-2 (8-bit mantissa, rounded at other points)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo_jax import interop
from showo_jax.common import axes
from showo_jax.common import sharding
from showo_jax.config import showo as showo_config
from showo_jax.interop import showo_keys
from showo_jax.models import attention
from showo_jax.models import flash_attention
from showo_jax.models import losses
from showo_jax.models import omni_mask
from showo_jax.models import transformer
from showo_jax.models.vocab import VocabLayout
from showo_jax.sampling import maskgit
from tests import numpy_reference
from tests import parity_facts

SMALL = VocabLayout(llm_vocab_size=10, codebook_size=4, bos_id=9, eos_id=9)
PAD, SOI, EOI, T2I, MMU = 10, 11, 12, 15, 16
HIGHEST = jax.lax.Precision.HIGHEST
TASKS_A = np.array([0, 0, 0, 0, 1, 1, 2, 2], np.int32)


def _rel(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / np.abs(want).max()


def _batch():
  """One row per task, 40 tokens: left-padded t2i, lm, mmu, and mixed text with two image blocks and pads."""
  img = [20, 21, 22, 23] * 4
  t2i = [PAD] * 5 + [T2I, 9, 1, 2, 9, SOI] + img + [21] * 12 + [EOI] + [PAD] * 6
  lm = [9] + list(range(1, 10)) * 5
  mmu = [MMU, SOI] + img + [EOI, 9] + [1, 2, 3] * 6 + [9, PAD, PAD]
  mixed = [9, 1, SOI] + img[:8] + [EOI, 2, 3, PAD, SOI] + img[:12] + [EOI, 4, 5, 6, 9, PAD, PAD, PAD, 1, 2, 3, 4]
  ids = np.array([row[:40] for row in (t2i, lm, mmu, mixed)], np.int32)
  return ids, np.array([0, 1, 2, 3], np.int32)


def _qkv(rng, b, lq, lk, h, hkv, d, dtype):
  make = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32).astype(dtype)
  return make(b, lq, h, d), make(b, lk, hkv, d), make(b, lk, hkv, d), make(b, lq, h, d)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_flash_equals_reference_forward_and_backward(heads, kv_heads):
  """Every task's mask in one batch, grouped-query heads, a length (40) that is not a multiple of the 16-wide
  tiles (so padding and several key blocks, some skipped, are exercised). The reference reads the mask decided
  position by position from SPEC (numpy_reference.omni_allowed), not one built from the spans under test."""
  ids, tasks = _batch()
  spans = omni_mask.omni_spans(ids, tasks, SMALL)
  allowed = jnp.asarray(numpy_reference.omni_allowed(ids, tasks, SMALL))
  q, k, v, w = _qkv(np.random.default_rng(0), 4, 40, 40, heads, kv_heads, 16, jnp.float32)
  ref = lambda q, k, v: attention.attention(q, k, v, allowed, jnp.float32, HIGHEST)
  fused = lambda q, k, v: flash_attention.flash_attention(q, k, v, spans, jnp.float32, HIGHEST, 16, 16)
  assert _rel(fused(q, k, v), ref(q, k, v)) <= 2e-6
  grads_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
  grads = jax.grad(lambda *a: jnp.sum(fused(*a) * w), argnums=(0, 1, 2))(q, k, v)
  for name, got, want in zip("qkv", grads, grads_ref):
    assert _rel(got, want) <= 2e-6, name


def _grads(fn, q, k, v, w):
  """The value of fn(q, k, v) and the gradients of sum(fn · w) in q, k, v, in float32."""
  out, vjp = jax.vjp(fn, q, k, v)
  return (out,) + tuple(g.astype(jnp.float32) for g in vjp(w.astype(out.dtype)))


def test_flash_rows_against_a_longer_cache():
  """Decode-style calls: the last 12 rows of the mask over all 40 keys (the cached MaskGIT image block),
  forward and backward."""
  ids, tasks = _batch()
  spans = omni_mask.omni_spans(ids, tasks, SMALL).rows(28, 40)
  allowed = jnp.asarray(numpy_reference.omni_allowed(ids, tasks, SMALL)[:, 28:40])
  q, k, v, w = _qkv(np.random.default_rng(1), 4, 12, 40, 4, 2, 16, jnp.float32)
  want = _grads(lambda *a: attention.attention(*a, allowed, jnp.float32, HIGHEST), q, k, v, w)
  got = _grads(lambda *a: flash_attention.flash_attention(*a, spans, jnp.float32, HIGHEST, 8, 16), q, k, v, w)
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    assert _rel(a, b) <= 2e-6, name


def _rms_rel(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2))


def test_flash_in_bfloat16():
  """bf16 operands, forward and backward, against the float32 reference on the same (bf16-exact) numbers: close
  at bf16's resolution, and on average no further off than the reference path run in bf16 (a residual such as
  the log-sum-exp kept in bf16 doubles that error while staying within the 2e-2 bound)."""
  ids, tasks = _batch()
  spans = omni_mask.omni_spans(ids, tasks, SMALL)
  allowed = jnp.asarray(numpy_reference.omni_allowed(ids, tasks, SMALL))
  q, k, v, w = _qkv(np.random.default_rng(2), 4, 40, 40, 4, 2, 16, jnp.bfloat16)
  f32 = lambda *a: attention.attention(*(t.astype(jnp.float32) for t in a), allowed, jnp.float32, HIGHEST)
  want = _grads(f32, q, k, v, w)
  in_bf16 = _grads(lambda *a: attention.attention(*a, allowed, jnp.bfloat16, HIGHEST), q, k, v, w)
  got = _grads(lambda *a: flash_attention.flash_attention(*a, spans, jnp.bfloat16, HIGHEST, 16, 16), q, k, v, w)
  assert got[0].dtype == jnp.bfloat16
  for name, a, b, c in zip(("out", "dq", "dk", "dv"), got, want, in_bf16):
    assert 1e-4 < _rel(a, b) <= 2e-2, name  # really bf16, and close
    assert _rms_rel(a, b) <= 1.25 * _rms_rel(c, b), name


def test_cudnn_call_equals_reference(monkeypatch):
  """The "cudnn" branch is jax.nn.dot_product_attention with the dense mask. On CPU the same call runs with
  jax's XLA implementation, which checks the wrapper, forward and backward: the layout, the mask's broadcast and
  the grouped heads (query head h reads kv head h // G, as the reference)."""
  call = jax.nn.dot_product_attention
  asked = []

  def on_xla(*args, implementation=None, **kwargs):
    asked.append(implementation)
    return call(*args, implementation="xla", **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", on_xla)
  ids, tasks = _batch()
  spans = omni_mask.omni_spans(ids, tasks, SMALL)
  q, k, v, w = _qkv(np.random.default_rng(3), 4, 40, 40, 4, 2, 16, jnp.float32)
  want = _grads(lambda *a: attention.attend(*a, spans, "xla", jnp.float32, HIGHEST), q, k, v, w)
  with jax.default_matmul_precision("highest"):
    got = _grads(lambda *a: attention.attend(*a, spans, "cudnn", jnp.float32), q, k, v, w)
  assert asked and set(asked) == {"cudnn"}
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    assert _rel(a, b) <= 1e-5, name


def test_flash_refuses_a_dense_mask():
  q, k, v, _ = _qkv(np.random.default_rng(4), 1, 8, 8, 2, 2, 8, jnp.float32)
  with pytest.raises(ValueError, match="compact mask"):
    attention.attend(q, k, v, jnp.ones((1, 8, 8), bool), "flash", jnp.float32)
  with pytest.raises(ValueError, match="not one of"):
    attention.attend(q, k, v, jnp.ones((1, 8, 8), bool), "splash", jnp.float32)


def _official(parity, impl, block=32):
  state = {k[len("param."):]: v for k, v in parity.items() if k.startswith("param.")}
  params, config = interop.load_official_showo(state, **parity_facts.TINY_PHI)
  config.model.attention_impl, config.model.attention_block = impl, block
  return params, config, transformer.Transformer(showo_config.transformer_config(config))


def test_flash_model_matches_the_official_logits_and_gradients(parity_showo):
  """The whole backbone with attention_impl="flash" (83 tokens in 32-wide tiles) on the official batch of
  t2i, lm and mmu rows: logits, loss and every gradient as the official PyTorch numbers."""
  params, config, model = _official(parity_showo, "flash")
  ids = parity_showo["input_ids"].astype(np.int32)
  labels = parity_showo["labels"].astype(np.int32)
  spans = omni_mask.omni_spans(ids, TASKS_A, showo_config.vocab_layout(config))

  def loss_fn(p):
    logits = model.apply({"params": p}, ids, spans)
    return losses.showo_loss(logits, ids, labels, TASKS_A, **showo_config.loss_settings(config))["loss"], logits

  (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert _rel(logits, parity_showo["logits"]) <= 1e-4
  assert abs(float(loss) - float(parity_showo["loss_total"])) <= 1e-4 * float(parity_showo["loss_total"])
  official = showo_keys.params_to_official(jax.tree.map(np.asarray, grads), config)
  assert max(_rel(official[k], parity_showo["grad." + k]) for k in official) <= 1e-4


def test_flash_under_a_mesh_equals_one_device():
  """Under jax.set_mesh with batch over data × fsdp and heads over tensor, the kernel runs once per shard
  (shard_map) and gives the single-device numbers."""
  ids, tasks = _batch()
  spans = omni_mask.omni_spans(ids, tasks, SMALL)
  q, k, v, w = _qkv(np.random.default_rng(5), 4, 40, 40, 4, 2, 16, jnp.float32)

  def loss(q, k, v):
    return jnp.sum(attention.attend(q, k, v, spans, "flash", jnp.float32, HIGHEST, 16) * w)

  want = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with jax.set_mesh(mesh), nn.logical_axis_rules(axes.DEFAULT_RULES):
    assert "shard_map" in str(jax.make_jaxpr(loss)(q, k, v))
    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(got, want):
    assert _rel(a, b) <= 1e-6


def test_cached_maskgit_with_flash_equals_xla(parity_showo):
  """The prefix-cached t2i sampler feeds the kernel the block rows against the cache (Spans in decode mode)."""
  params, config, _ = _official(parity_showo, "flash", block=16)
  layout = showo_config.vocab_layout(config)
  cond = parity_showo["t2i.input_ids"][:2].astype(np.int32)
  uncond = parity_showo["t2i.input_ids"][2:4].astype(np.int32)
  tokens = cond[:, -65:-1]
  out = {}
  for impl in ("xla", "flash"):
    cfg = dataclasses.replace(showo_config.transformer_config(config), attention_impl=impl)
    fn = maskgit.t2i_cached_tokens_to_logits(cfg, params, cond, uncond, layout, 64, guidance_scale=1.5)
    out[impl] = np.asarray(fn(jnp.asarray(tokens)))
  assert _rel(out["flash"], out["xla"]) <= 1e-5


def test_blockwise_equals_reference_forward_and_backward():
  """The XLA twin of the kernel (what the planner compiles for 'flash' on CPU devices): same numbers."""
  ids, tasks = _batch()
  spans = omni_mask.omni_spans(ids, tasks, SMALL)
  q, k, v, w = _qkv(np.random.default_rng(6), 4, 40, 40, 4, 2, 16, jnp.float32)
  ref = lambda *a: jnp.sum(attention.attend(*a, spans, "xla", jnp.float32, HIGHEST) * w)
  twin = lambda *a: jnp.sum(attention.attend(*a, spans, "blockwise", jnp.float32, HIGHEST, 16) * w)
  assert abs(float(twin(q, k, v)) - float(ref(q, k, v))) <= 1e-5 * abs(float(ref(q, k, v)))
  for got, want in zip(jax.grad(twin, argnums=(0, 1, 2))(q, k, v), jax.grad(ref, argnums=(0, 1, 2))(q, k, v)):
    assert _rel(got, want) <= 2e-6
  out = attention.attend(q, k, v, spans, "blockwise", jnp.float32, HIGHEST, 16)
  assert _rel(out, attention.attend(q, k, v, spans, "xla", jnp.float32, HIGHEST)) <= 2e-6
