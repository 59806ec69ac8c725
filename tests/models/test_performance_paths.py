"""The hand-written fast paths against the plain ones: attention and dense custom VJPs, chunked rotary.

Each fast path must give the plain path's numbers (float32: to rounding; bfloat16 products: to bf16 accuracy),
gradients included, in every branch (grouped-query heads, decode-shaped masks, fully blocked rows, dense
layers whose weight gradient is taken through a transposed x or directly, multi-axis kernels).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo_jax.config import showo as showo_config
from showo_jax.models import attention
from showo_jax.models import dense
from showo_jax.models import layers
from showo_jax.models import transformer
from tests import jax_reference


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def _random_mask(rng, b, lq, lk):
  allowed = rng.random((b, lq, lk)) < 0.6
  allowed[np.arange(b)[:, None], np.arange(lq)[None], rng.integers(0, lk, (b, lq))] = True  # ≥ 1 per row
  return allowed


def _attention_oracle(q, k, v, allowed):
  """float64 numpy softmax attention, q [B, Lq, H, D], k/v [B, Lk, Hkv, D]."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  g = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  s = np.where(allowed[:, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


def _attention_grads(fn, q, k, v, allowed, dtype, cot):
  def loss(q, k, v):
    return jnp.sum(fn(q, k, v, allowed, dtype).astype(jnp.float32) * cot)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("heads,kv_heads,lq,lk", [(4, 4, 7, 7), (4, 2, 7, 7), (4, 1, 5, 5), (2, 2, 3, 11)])
def test_attention_matches_plain_and_oracle_float32(heads, kv_heads, lq, lk):
  rng = np.random.default_rng(heads * 10 + kv_heads + lk)
  b, d = 2, 8
  q = jnp.asarray(rng.standard_normal((b, lq, heads, d)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((b, lk, kv_heads, d)), jnp.float32) for _ in range(2))
  allowed = jnp.asarray(_random_mask(rng, b, lq, lk))
  out = attention.attention(q, k, v, allowed, jnp.float32)
  assert out.dtype == jnp.float32 and out.shape == (b, lq, heads, d)
  assert rel_err(out, _attention_oracle(q, k, v, np.asarray(allowed))) <= 1e-5
  assert rel_err(out, jax_reference.dot_product_attention(q, k, v, allowed, jnp.float32)) <= 1e-5
  cot = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
  fast = _attention_grads(attention.attention, q, k, v, allowed, jnp.float32, cot)
  plain = _attention_grads(jax_reference.dot_product_attention, q, k, v, allowed, jnp.float32, cot)
  for got, want in zip(fast, plain):
    assert got.dtype == jnp.float32 and rel_err(got, want) <= 1e-5


def test_attention_bfloat16_products():
  rng = np.random.default_rng(0)
  b, l, h, d = 2, 9, 4, 16
  q, k, v = (jnp.asarray(rng.standard_normal((b, l, h, d)), jnp.bfloat16) for _ in range(3))
  allowed = jnp.asarray(np.tril(np.ones((l, l), bool))[None].repeat(b, 0))
  out = attention.attention(q, k, v, allowed, jnp.float32)
  assert out.dtype == jnp.float32
  oracle = _attention_oracle(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                             np.asarray(allowed))
  assert rel_err(out, oracle) <= 1e-2  # probabilities rounded to bf16 for the p·v product
  cot = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
  fast = _attention_grads(attention.attention, q, k, v, allowed, jnp.float32, cot)
  ref = _attention_grads(jax_reference.dot_product_attention, *(t.astype(jnp.float32) for t in (q, k, v)), allowed,
                         jnp.float32, cot)
  for got, want in zip(fast, ref):
    assert got.dtype == jnp.bfloat16 and rel_err(got, want) <= 3e-2


def test_attention_fully_blocked_row_matches_plain():
  """Not produced by the mask builders, but it must stay finite: a uniform softmax, as with the select."""
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 4, 2, 8)), jnp.float32) for _ in range(3))
  allowed = np.tril(np.ones((4, 4), bool))[None]
  allowed[0, 2] = False
  got = attention.attention(q, k, v, jnp.asarray(allowed), jnp.float32)
  assert np.isfinite(np.asarray(got)).all()
  assert rel_err(got, jax_reference.dot_product_attention(q, k, v, jnp.asarray(allowed), jnp.float32)) <= 1e-5


def _dense_grads(fn, x, kernel, n_in, dtype, cot):
  def loss(x, kernel):
    return jnp.sum(fn(x, kernel, n_in, dtype) * cot)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)


# (x shape, kernel shape, contracted axes): K < N (weight gradient through xᵀ), K > N (direct), K = N,
# two contracted axes (o_proj [H, D, E]), two output axes (q_proj [E, H, D]).
_DENSE_CASES = [((2, 5, 8), (8, 24), 1), ((2, 5, 32), (32, 6), 1), ((3, 16), (16, 16), 1),
                ((2, 5, 3, 4), (3, 4, 6), 2), ((2, 5, 8), (8, 2, 3), 1)]


@pytest.mark.parametrize("x_shape,k_shape,n_in", _DENSE_CASES)
def test_dense_matmul_matches_plain_float32(x_shape, k_shape, n_in):
  rng = np.random.default_rng(len(x_shape) + k_shape[-1])
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(k_shape), jnp.float32)
  y = dense.matmul(x, kernel, n_in, jnp.float32)
  want = np.tensordot(np.asarray(x, np.float64), np.asarray(kernel, np.float64), n_in)
  assert y.shape == want.shape and rel_err(y, want) <= 1e-6
  cot = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  fast = _dense_grads(dense.matmul, x, kernel, n_in, jnp.float32, cot)
  plain = _dense_grads(jax_reference.plain_matmul, x, kernel, n_in, jnp.float32, cot)
  for got, ref in zip(fast, plain):
    assert got.dtype == jnp.float32 and rel_err(got, ref) <= 1e-6


@pytest.mark.parametrize("x_shape,k_shape,n_in", _DENSE_CASES[:2])
def test_dense_matmul_bfloat16_products(x_shape, k_shape, n_in):
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(k_shape), jnp.float32)
  cot = jnp.asarray(rng.standard_normal(x_shape[:-n_in] + k_shape[n_in:]), jnp.float32)
  # float64 reference of the same computation on bf16-rounded operands (dy is rounded too).
  rnd = lambda t: np.asarray(jnp.asarray(t).astype(jnp.bfloat16), np.float64)
  x64, k64, cot64 = rnd(x), rnd(kernel), rnd(cot)
  want_y = np.tensordot(x64, k64, n_in)
  batch = tuple(range(x.ndim - n_in))
  want_dx = np.tensordot(cot64, k64, (tuple(range(len(batch), cot.ndim)), tuple(range(n_in, kernel.ndim))))
  want_dk = np.tensordot(x64, cot64, (batch, batch))
  assert rel_err(dense.matmul(x, kernel, n_in, jnp.bfloat16), want_y) <= 1e-5
  dx, dk = _dense_grads(dense.matmul, x, kernel, n_in, jnp.bfloat16, cot)
  assert dx.dtype == jnp.float32 and dk.dtype == jnp.float32
  assert rel_err(dx, want_dx) <= 1e-5 and rel_err(dk, want_dk) <= 1e-5  # f32 sums of exact bf16 products
  # The plain path agrees to bf16 accuracy (it rounds the weight gradient to bf16).
  plain = _dense_grads(jax_reference.plain_matmul, x, kernel, n_in, jnp.bfloat16, cot)
  assert rel_err(dk, plain[1]) <= 1e-2 and rel_err(dx, plain[0]) <= 1e-2


def _rotary_oracle(x, cos, sin):
  rd = cos.shape[-1]
  x = np.asarray(x, np.float64)
  cos, sin = np.asarray(cos, np.float64)[:, :, None], np.asarray(sin, np.float64)[:, :, None]
  x1, x2, rest = x[..., :rd // 2], x[..., rd // 2:rd], x[..., rd:]
  rot = np.concatenate([-x2, x1], -1)
  return np.concatenate([x[..., :rd] * cos + rot * sin, rest], -1)


@pytest.mark.parametrize("d,rd", [(64, 32), (16, 16), (24, 16), (12, 4), (10, 8)])  # (10, 8): fallback path
def test_rotary_matches_rotate_half_formula(d, rd):
  rng = np.random.default_rng(d + rd)
  x = jnp.asarray(rng.standard_normal((2, 5, 3, d)), jnp.float32)
  positions = jnp.asarray(rng.integers(0, 50, (2, 5)))
  cos, sin = layers.rotary_tables(positions, rd, 10000.0)
  assert rel_err(layers.apply_rotary(x, cos, sin), _rotary_oracle(x, cos, sin)) <= 1e-6
  # Linear in x: the gradient is the transposed rotation, i.e. the rotation by the opposite angle.
  cot = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  grad = jax.grad(lambda x: jnp.sum(layers.apply_rotary(x, cos, sin) * cot))(x)
  assert rel_err(grad, _rotary_oracle(cot, cos, -sin)) <= 1e-6


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_model_fast_paths_match_plain_paths(monkeypatch, dtype):
  """Whole tiny model (phi, 4 heads, GQA-free) and llama (GQA): loss and every gradient, fast vs plain."""
  for size in ("tiny", "tiny-llama"):
    config = showo_config.showo_config(size)
    config.model.dtype = dtype
    cfg = showo_config.transformer_config(config)
    rng = np.random.default_rng(3)
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 12)), jnp.int32)
    allowed = jnp.asarray(np.tril(np.ones((12, 12), bool))[None].repeat(2, 0))
    model = transformer.Transformer(cfg)
    params = nn.unbox(model.init(jax.random.key(0), ids, allowed))["params"]
    cot = jnp.asarray(rng.standard_normal((2, 12, cfg.vocab_size)), jnp.float32)

    def loss_and_grads():
      loss = lambda p: jnp.sum(model.apply({"params": p}, ids, allowed) * cot)
      # A new jit each call, so it is traced afresh and picks up the monkeypatched functions; one compiled
      # program instead of hundreds of op-by-op dispatches.
      return jax.jit(jax.value_and_grad(loss))(params)

    fast = loss_and_grads()
    with monkeypatch.context() as m:
      m.setattr(attention, "attention", jax_reference.dot_product_attention)
      m.setattr(dense, "matmul", jax_reference.plain_matmul)
      plain = loss_and_grads()
    tol = 1e-5 if dtype == "float32" else 3e-2
    assert rel_err(fast[0], plain[0]) <= tol
    for got, want in zip(jax.tree.leaves(fast[1]), jax.tree.leaves(plain[1])):
      assert got.dtype == jnp.float32 and rel_err(got, want) <= tol
