"""Fused omni-attention in Pallas: the [L, L] scores and mask never exist in memory.

The mask arrives in its O(L) form (`omni_mask.Spans`: a key range and a skip-pads flag per query row, a pad flag
per key), so one kernel serves every Show-o task (t2i, mmu, lm, mixed) and the decode prefixes. The grid runs
over (batch, query head, query block); each program streams the key blocks its rows can reach (the union of
their ranges: text rows stop at their own position, so causal blocks beyond it are skipped) with the online
softmax of FlashAttention-2, and keeps the log-sum-exp for the backward pass. The backward pass is two kernels:
dq over (batch, head, query block) and dk/dv over (batch, kv head, key block), the latter looping over the query
heads that share its kv head (grouped-query attention) and skipping query blocks that cannot see it.

Numerics follow models/attention.py: products take the operands' dtype and accumulate in float32 (with the
given `precision`), the softmax is float32. Blocked scores are excluded by a select, so a partly blocked block
contributes exactly 0. Sequences are padded to the block size here; padded rows see only themselves.

`interpret=True` runs the kernels in Pallas' interpreter (CPU: the tests and the reference); on GPU and TPU they
compile (Triton / Mosaic). Blocks of 128 suit both; small blocks in the tests exercise the skipping.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from showo_jax.models import omni_mask

_NT = (((1,), (1,)), ((), ()))  # a [M, D] · b [N, D] → [M, N]
_NN = (((1,), (0,)), ((), ()))  # a [M, K] · b [K, N] → [M, N]
_TN = (((0,), (0,)), ((), ()))  # a [K, M] · b [K, N] → [M, N]


def _dot(a, b, dims, precision):
  return jax.lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _visible(start, end, skip, key_pad, key_start, block_k):
  """bool [bq, bk]: which keys [key_start, key_start + bk) each query row may attend to."""
  cols = key_start + jax.lax.broadcasted_iota(jnp.int32, (start.shape[0], block_k), 1)
  inside = (cols >= start[:, None]) & (cols <= end[:, None])
  return inside & ~((skip[:, None] != 0) & (key_pad[None, :] != 0))


def _key_blocks(start, end, block_k):
  """The key blocks [lo, hi) that some row of a query block can reach."""
  return jnp.min(start) // block_k, jnp.max(end) // block_k + 1


# ------------------------------------------------------------------------------------------------- forward


def _forward_kernel(start_ref, end_ref, skip_ref, kpad_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale,
                    block_k, precision):
  start, end, skip = start_ref[...], end_ref[...], skip_ref[...]
  q = q_ref[...]
  rows = q.shape[0]

  def body(kb, carry):
    acc, m, l = carry
    ks = pl.multiple_of(kb * block_k, block_k)
    k, v = k_ref[pl.ds(ks, block_k), :], v_ref[pl.ds(ks, block_k), :]
    ok = _visible(start, end, skip, kpad_ref[pl.ds(ks, block_k)], ks, block_k)
    s = jnp.where(ok, _dot(q, k, _NT, precision) * scale, omni_mask.MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    p = jnp.where(ok, jnp.exp(s - m_new[:, None]), 0.0)
    corr = jnp.exp(m - m_new)
    acc = acc * corr[:, None] + _dot(p.astype(v.dtype), v, _NN, precision)
    return acc, m_new, l * corr + jnp.sum(p, axis=1)

  lo, hi = _key_blocks(start, end, block_k)
  init = (jnp.zeros((rows, q.shape[1]), jnp.float32), jnp.full((rows,), omni_mask.MASK_VALUE, jnp.float32),
          jnp.zeros((rows,), jnp.float32))
  acc, m, l = jax.lax.fori_loop(lo, hi, body, init)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)  # l > 0: every row sees at least one key
  lse_ref[...] = m + jnp.log(l)


def _row_spec(block):
  return pl.BlockSpec((None, block), lambda b, h, i: (b, i))


def _keys_spec(length, dim, group):
  return pl.BlockSpec((None, None, length, dim), lambda b, h, i: (b, h // group, 0, 0))


def _forward(q, k, v, spans, scale, block_q, block_k, precision, interpret):
  b, h, lq, d = q.shape
  hkv, lk = k.shape[1], k.shape[2]
  group = h // hkv
  tile = pl.BlockSpec((None, None, block_q, d), lambda b_, h_, i: (b_, h_, i, 0))
  kernel = functools.partial(_forward_kernel, scale=scale, block_k=block_k, precision=precision)
  return pl.pallas_call(
      kernel, grid=(b, h, lq // block_q),
      in_specs=[_row_spec(block_q)] * 3 + [pl.BlockSpec((None, lk), lambda b_, h_, i: (b_, 0)),
                                           tile, _keys_spec(lk, d, group), _keys_spec(lk, d, group)],
      out_specs=[tile, pl.BlockSpec((None, None, block_q), lambda b_, h_, i: (b_, h_, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lq), jnp.float32)],
      interpret=interpret)(*spans, q, k, v)


# ------------------------------------------------------------------------------------------------ backward


def _dq_kernel(start_ref, end_ref, skip_ref, kpad_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref,
               *, scale, block_k, precision):
  start, end, skip = start_ref[...], end_ref[...], skip_ref[...]
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]

  def body(kb, dq):
    ks = pl.multiple_of(kb * block_k, block_k)
    k, v = k_ref[pl.ds(ks, block_k), :], v_ref[pl.ds(ks, block_k), :]
    ok = _visible(start, end, skip, kpad_ref[pl.ds(ks, block_k)], ks, block_k)
    p = jnp.where(ok, jnp.exp(_dot(q, k, _NT, precision) * scale - lse[:, None]), 0.0)
    ds = p * (_dot(do, v, _NT, precision) - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k, _NN, precision)

  lo, hi = _key_blocks(start, end, block_k)
  dq = jax.lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(start_ref, end_ref, skip_ref, kpad_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref, *, scale, block_q, precision):
  k, v, kpad = k_ref[...], v_ref[...], kpad_ref[...]
  block_k = k.shape[0]
  ks = pl.program_id(2) * block_k
  group, lq = q_ref.shape[0], q_ref.shape[1]
  num_qb = lq // block_q

  def body(i, carry):
    g, qs = i // num_qb, pl.multiple_of((i % num_qb) * block_q, block_q)
    rows = pl.ds(qs, block_q)
    start, end, skip = start_ref[rows], end_ref[rows], skip_ref[rows]

    def update(carry):
      dk, dv = carry
      q, do = q_ref[g, rows, :], do_ref[g, rows, :]
      ok = _visible(start, end, skip, kpad, ks, block_k)
      p = jnp.where(ok, jnp.exp(_dot(q, k, _NT, precision) * scale - lse_ref[g, rows][:, None]), 0.0)
      dv = dv + _dot(p.astype(do.dtype), do, _TN, precision)
      ds = p * (_dot(do, v, _NT, precision) - delta_ref[g, rows][:, None])
      return dk + _dot(ds.astype(q.dtype), q, _TN, precision), dv

    reaches = jnp.any((start <= ks + block_k - 1) & (end >= ks))  # some row of the block sees this key block
    return jax.lax.cond(reaches, update, lambda c: c, carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, group * num_qb, body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(q, k, v, spans, o, lse, do, scale, block_q, block_k, precision, interpret):
  b, h, lq, d = q.shape
  hkv, lk = k.shape[1], k.shape[2]
  group = h // hkv
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [B, H, Lq]
  kpad_spec = pl.BlockSpec((None, lk), lambda b_, h_, i: (b_, 0))
  q_tile = pl.BlockSpec((None, None, block_q, d), lambda b_, h_, i: (b_, h_, i, 0))
  row_tile = pl.BlockSpec((None, None, block_q), lambda b_, h_, i: (b_, h_, i))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=scale, block_k=block_k, precision=precision),
      grid=(b, h, lq // block_q),
      in_specs=[_row_spec(block_q)] * 3 + [kpad_spec, q_tile, _keys_spec(lk, d, group), _keys_spec(lk, d, group),
                                           q_tile, row_tile, row_tile],
      out_specs=q_tile, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      interpret=interpret)(*spans, q, k, v, do, lse, delta)
  # dk/dv: one program per (batch, kv head, key block); it reads the `group` query heads of its kv head whole.
  all_rows = pl.BlockSpec((None, lq), lambda b_, h_, j: (b_, 0))
  heads = pl.BlockSpec((None, group, lq, d), lambda b_, h_, j: (b_, h_, 0, 0))
  head_rows = pl.BlockSpec((None, group, lq), lambda b_, h_, j: (b_, h_, 0))
  k_tile = pl.BlockSpec((None, None, block_k, d), lambda b_, h_, j: (b_, h_, j, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, scale=scale, block_q=block_q, precision=precision),
      grid=(b, hkv, lk // block_k),
      in_specs=[all_rows] * 3 + [pl.BlockSpec((None, block_k), lambda b_, h_, j: (b_, j)), heads, k_tile, k_tile,
                                 heads, head_rows, head_rows],
      out_specs=[k_tile, k_tile],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      interpret=interpret)(*spans, q, k, v, do, lse, delta)
  return dq, dk, dv


# ------------------------------------------------------------------------------------------------ the entry


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _fused(q, k, v, spans, scale, block_q, block_k, precision, interpret):
  return _forward(q, k, v, spans, scale, block_q, block_k, precision, interpret)[0]


def _fused_fwd(q, k, v, spans, scale, block_q, block_k, precision, interpret):
  o, lse = _forward(q, k, v, spans, scale, block_q, block_k, precision, interpret)
  return o, (q, k, v, spans, o, lse)


def _fused_bwd(scale, block_q, block_k, precision, interpret, res, do):
  q, k, v, spans, o, lse = res
  dq, dk, dv = _backward(q, k, v, spans, o, lse, do, scale, block_q, block_k, precision, interpret)
  return dq, dk, dv, jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0), spans)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _padded_spans(spans: omni_mask.Spans, lq: int, lk: int):
  """int32 spans padded to (lq, lk): padded query rows see one key (their own position, or the last), padded
  keys are pads that no real row's range reaches (every real range ends inside the real keys)."""
  b, rows = spans.start.shape
  keys = spans.key_pad.shape[1]
  own = jnp.broadcast_to(jnp.minimum(jnp.arange(rows, lq, dtype=jnp.int32), lk - 1), (b, lq - rows))
  start = jnp.concatenate([spans.start.astype(jnp.int32), own], axis=1)
  end = jnp.concatenate([spans.end.astype(jnp.int32), own], axis=1)
  skip = jnp.pad(spans.skip_pad.astype(jnp.int32), ((0, 0), (0, lq - rows)))
  key_pad = jnp.pad(spans.key_pad.astype(jnp.int32), ((0, 0), (0, lk - keys)), constant_values=1)
  return start, end, skip, key_pad


def _prepare(q, k, v, spans, block_q, block_k):
  """Tiles cut to the sequence, [B, L, H, D] → padded [B, H, L', D], padded int32 spans."""
  lq, lk, h, hkv = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
  if h % hkv:
    raise ValueError(f"{hkv} kv heads do not divide {h} query heads")
  block_q, block_k = min(block_q, _round_up(lq, 8)), min(block_k, _round_up(lk, 8))
  lq_pad, lk_pad = _round_up(lq, block_q), _round_up(lk, block_k)
  to_heads = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  return (to_heads(q, lq_pad), to_heads(k, lk_pad), to_heads(v, lk_pad), _padded_spans(spans, lq_pad, lk_pad),
          block_q, block_k)


def flash_attention(q, k, v, spans: omni_mask.Spans, dtype, precision: Optional[jax.lax.Precision] = None,
                    block_q: int = 128, block_k: int = 128, interpret: Optional[bool] = None):
  """Softmax attention over the omni-attention mask in its compact form, differentiable in q, k, v.

  Args:
    q: [B, Lq, H, D] queries; k, v: [B, Lk, Hkv, D], Hkv dividing H (as models/attention.py).
    spans: the mask (`omni_mask.omni_spans` / `t2i_spans`, or their `.rows`), rows [B, Lq], keys [B, Lk].
    dtype: output dtype.
    precision: of every product, forward and backward.
    block_q, block_k: tile sizes (cut to the sequence when it is shorter); lengths are padded to them.
    interpret: run in Pallas' interpreter; None = on CPU only.
  Returns:
    [B, Lq, H, D]; equal to `attention.attention(q, k, v, omni_mask.expand(spans), ...)` up to float rounding.
  """
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  qh, kh, vh, padded, block_q, block_k = _prepare(q, k, v, spans, block_q, block_k)
  o = _fused(qh, kh, vh, padded, float(1.0 / np.sqrt(q.shape[-1])), block_q, block_k, precision, bool(interpret))
  return o.transpose(0, 2, 1, 3)[:, :q.shape[1]].astype(dtype)


# ------------------------------------------------------------------------------- the same algorithm in XLA


def blockwise_attention(q, k, v, spans: omni_mask.Spans, dtype, precision: Optional[jax.lax.Precision] = None,
                        block_q: int = 128):
  """`flash_attention`'s algorithm in plain XLA: a loop over query blocks, each against all keys, with the
  same residuals (o, log-sum-exp) and a backward pass that recomputes each block's scores. Memory is
  O(B·H·block_q·Lk) instead of O(B·H·Lq·Lk), on any backend without Pallas; it is how the planner sizes the
  fused kernel on CPU devices, where the Pallas kernel only runs interpreted. Same arguments as
  `flash_attention` (no key tiles: each block sees every key)."""
  qh, kh, vh, padded, block_q, _ = _prepare(q, k, v, spans, block_q, k.shape[1])
  group = qh.shape[1] // kh.shape[1]
  kh, vh = jnp.repeat(kh, group, axis=1), jnp.repeat(vh, group, axis=1)  # the kv head of each query head
  o = _blockwise(qh, kh, vh, padded, float(1.0 / np.sqrt(q.shape[-1])), block_q, precision)
  return o.transpose(0, 2, 1, 3)[:, :q.shape[1]].astype(dtype)


def _blocks(x, block):
  """[B, H, L, ...] or [B, L] → [L / block, B, (H,) block, ...]: the scan axis first."""
  b, n = x.shape[0], x.shape[-1] if x.ndim == 2 else x.shape[2]
  if x.ndim == 2:
    return x.reshape(b, n // block, block).transpose(1, 0, 2)
  return jnp.moveaxis(x.reshape(x.shape[:2] + (n // block, block) + x.shape[3:]), 2, 0)


def _block_scores(qb, k, rows, key_pad, scale, precision):
  """Scores [B, H, bq, Lk] of one query block and which of them are visible."""
  start, end, skip = (r[:, None, :, None] for r in rows)
  cols = jnp.arange(k.shape[2])[None, None, None, :]
  ok = (cols >= start) & (cols <= end) & ~((skip != 0) & (key_pad[:, None, None, :] != 0))
  s = jnp.einsum("bhqd,bhkd->bhqk", qb, k, precision=precision, preferred_element_type=jnp.float32) * scale
  return s, ok


def _blockwise_forward(q, k, v, spans, scale, block, precision):
  start, end, skip, key_pad = spans

  def one(args):
    qb, *rows = args
    s, ok = _block_scores(qb, k, rows, key_pad, scale, precision)
    m = jnp.max(jnp.where(ok, s, omni_mask.MASK_VALUE), axis=-1, keepdims=True)
    p = jnp.where(ok, jnp.exp(s - m), 0.0)
    l = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v, precision=precision,
                   preferred_element_type=jnp.float32) / l
    return o.astype(q.dtype), (m + jnp.log(l))[..., 0]

  o, lse = jax.lax.map(one, (_blocks(q, block), _blocks(start, block), _blocks(end, block), _blocks(skip, block)))
  unblock = lambda x: jnp.moveaxis(x, 0, 2).reshape(q.shape[:3] + x.shape[4:])
  return unblock(o), unblock(lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _blockwise(q, k, v, spans, scale, block, precision):
  return _blockwise_forward(q, k, v, spans, scale, block, precision)[0]


def _blockwise_fwd(q, k, v, spans, scale, block, precision):
  o, lse = _blockwise_forward(q, k, v, spans, scale, block, precision)
  return o, (q, k, v, spans, o, lse)


def _blockwise_bwd(scale, block, precision, res, do):
  q, k, v, spans, o, lse = res
  start, end, skip, key_pad = spans
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
  dot = functools.partial(jnp.einsum, precision=precision, preferred_element_type=jnp.float32)

  def one(carry, args):
    dk, dv = carry
    qb, dob, lseb, deltab, *rows = args
    s, ok = _block_scores(qb, k, rows, key_pad, scale, precision)
    p = jnp.where(ok, jnp.exp(s - lseb[..., None]), 0.0)
    dv = dv + dot("bhqk,bhqd->bhkd", p.astype(dob.dtype), dob)
    ds = p * (dot("bhqd,bhkd->bhqk", dob, v) - deltab[..., None])
    dk = dk + dot("bhqk,bhqd->bhkd", ds.astype(qb.dtype), qb) * scale
    return (dk, dv), (dot("bhqk,bhkd->bhqd", ds.astype(k.dtype), k) * scale).astype(q.dtype)

  zeros = jnp.zeros(k.shape, jnp.float32)
  (dk, dv), dq = jax.lax.scan(one, (zeros, zeros), (_blocks(q, block), _blocks(do, block), _blocks(lse, block),
                                                    _blocks(delta, block), _blocks(start, block),
                                                    _blocks(end, block), _blocks(skip, block)))
  dq = jnp.moveaxis(dq, 0, 2).reshape(q.shape)
  return (dq, dk.astype(k.dtype), dv.astype(v.dtype), jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0),
                                                                    spans))


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)
