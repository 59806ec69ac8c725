"""Masked softmax attention with a hand-written backward pass (fewer passes over the [L, L] scores).

On CPU the attention block is a small share of the FLOPs but was 35-40 % of the train step: every elementwise
pass over the f32 [B, H, L, L] scores is memory-bound, and autodiff of
`softmax(where(mask, q·kᵀ/√d, -big)) · v` makes about ten of them. With q̂ = q/√d and b the additive mask:
  forward   s = q̂·kᵀ + b, m = rowmax(s), e = exp(s - m), l = rowsum(e), o = (e·v) / l
  backward  do' = do / l, δ = rowsum(do' ∘ o), dv = eᵀ·do', ds = e ∘ (do'·vᵀ - δ), dq = ds·k/√d, dk = dsᵀ·q̂
The normalisation by l and the 1/√d scale are applied on the [L, D] side of each product, never on the [L, L]
side; blocked scores give e = 0 exactly, so the backward pass needs no mask. What remains on the [L, L] side
(bias, max, exp, sum; ds) XLA fuses into the two products that produce s and do'·vᵀ. Products take the compute
dtype (bf16 or f32) and accumulate in f32; all elementwise work is f32. All six products (two forward, four
backward) take the `precision` argument: the hand-written backward pass would otherwise run at jax's default.

`attend` picks among this path ("xla", the reference), the Pallas kernel of models/flash_attention.py ("flash",
which reads the mask in its compact `omni_mask.Spans` form), the same algorithm in plain XLA ("blockwise": one
query block's scores at a time, any backend) and cuDNN's fused attention ("cudnn", GPU only: it takes the dense
mask as a [B, 1, L, L] operand but never writes the [B, H, L, L] scores).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.common import axes
from showo_jax.common import sharding
from showo_jax.models import flash_attention
from showo_jax.models import layers
from showo_jax.models import omni_mask

IMPLEMENTATIONS = ("xla", "flash", "blockwise", "cudnn")

# dot_general dimension numbers over [B, Hkv, rows, cols] operands; the G query heads that share a kv head are
# stacked along the query rows (Lg = G·Lq), so each product is one [Lg, ·]·[·, ·] matrix product per (b, kv head).
_BATCH = ((0, 1), (0, 1))
_QK = (((3,), (3,)), _BATCH)  # q [B,Hkv,Lg,D] · k [B,Hkv,Lk,D] → [B,Hkv,Lg,Lk]
_PV = (((3,), (2,)), _BATCH)  # p [B,Hkv,Lg,Lk] · v [B,Hkv,Lk,D] → [B,Hkv,Lg,D]
# Products over the query rows take the small operand already transposed, [D, Lg]·[Lg, Lk]: transposing
# the [Lg, Lk] side instead costs a full pass over it, and a transposed operand inside the product falls
# back to a slower matmul on CPU.
_TN = (((3,), (2,)), _BATCH)  # doᵀ [B,Hkv,D,Lg] · p [B,Hkv,Lg,Lk] → [B,Hkv,D,Lk]


def _dot(a, b, dims, dtype, precision):
  a, b = layers.product_operands(a, b, dtype)
  return jax.lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _transposed(x):
  """[..., L, D] → [..., D, L] as a real array (the barrier stops XLA folding it back into the product)."""
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def _rows_first(x, hkv):
  """[B, L, Hkv·G, D] → [B, Hkv, G·L, D]."""
  b, l, h, d = x.shape
  g = h // hkv
  return x.reshape(b, l, hkv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, hkv, g * l, d)


def _rows_last(x, lq):
  """[B, Hkv, G·Lq, D] → [B, Lq, Hkv·G, D]."""
  b, hkv, gl, d = x.shape
  g = gl // lq
  return x.reshape(b, hkv, g, lq, d).transpose(0, 3, 1, 2, 4).reshape(b, lq, hkv * g, d)


def _forward(q, k, v, allowed, dtype, precision):
  b, lq, h, d = q.shape
  hkv = k.shape[2]
  cdt = q.dtype
  # The 1/√d scale goes on q (exact for d a power of 4): on the [Lg, Lk] side XLA:CPU would materialise it as
  # a full-size constant array for the fused product.
  scale = np.float32(1.0 / np.sqrt(d))
  qh = (_rows_first(q, hkv).astype(jnp.float32) * scale).astype(cdt)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  # An additive bias rather than a select: XLA:CPU fuses the add into the max/exp passes, not the select.
  bias = jnp.where(allowed, 0.0, omni_mask.MASK_VALUE)[:, None]  # f32 [B, 1, Lq, Lk]
  if h > hkv:
    bias = jnp.tile(bias, (1, 1, h // hkv, 1))  # [B, 1, Lg, Lk]
  s = _dot(qh, kh, _QK, cdt, precision) + bias  # f32 [B,Hkv,Lg,Lk]
  m = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.exp(s - m)  # exactly 0 where blocked
  l = jnp.sum(e, axis=-1, keepdims=True)  # ≥ 1: the row max contributes exp(0)
  o = _dot(e, vh, _PV, cdt, precision) / l  # f32 [B,Hkv,Lg,D]
  return _rows_last(o, lq).astype(dtype), (qh, kh, vh, e, l, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def attention(q, k, v, allowed, dtype, precision: Optional[jax.lax.Precision] = None):
  """Softmax attention with a boolean mask and grouped-query heads.

  Args:
    q: [B, Lq, H, D] queries.
    k: [B, Lk, Hkv, D] keys, Hkv dividing H (each kv head serves H // Hkv query heads).
    v: [B, Lk, Hkv, D] values.
    allowed: bool [B, Lq, Lk], True = may attend; every row must allow at least one key.
    dtype: output dtype.
    precision: of every product, forward and backward; None = jax's default (TF32 on GPU, bf16 on TPU).
  Returns:
    [B, Lq, H, D]. Products take q's dtype and accumulate in float32; the softmax is computed in float32.
  """
  return _forward(q, k, v, allowed, dtype, precision)[0]


def _attention_fwd(q, k, v, allowed, dtype, precision):
  out, res = _forward(q, k, v, allowed, dtype, precision)
  return out, res + (allowed,)


def _attention_bwd(dtype, precision, res, dout):
  del dtype
  qh, kh, vh, e, l, o, allowed = res
  cdt = qh.dtype
  scale = np.float32(1.0 / np.sqrt(qh.shape[-1]))
  do = _rows_first(dout.astype(jnp.float32), kh.shape[1]) / l  # do' [B,Hkv,Lg,D]
  delta = jnp.sum(do * o, axis=-1, keepdims=True)  # [B,Hkv,Lg,1]
  dv = _dot(_transposed(do.astype(cdt)), e, _TN, cdt, precision)  # [B,Hkv,D,Lk]
  ds = e * (_dot(do, vh, _QK, cdt, precision) - delta)  # f32 [B,Hkv,Lg,Lk], gradient of the scaled scores; 0 if blocked
  dq = _dot(ds, kh, _PV, cdt, precision) * scale  # [B,Hkv,Lg,D]
  dk = _dot(_transposed(qh), ds, _TN, cdt, precision)  # [B,Hkv,D,Lk]; qh already carries the scale
  grad_allowed = np.zeros(allowed.shape, jax.dtypes.float0)
  return (_rows_last(dq, allowed.shape[1]).astype(cdt), dk.transpose(0, 3, 1, 2).astype(kh.dtype),
          dv.transpose(0, 3, 1, 2).astype(vh.dtype), grad_allowed)


attention.defvjp(_attention_fwd, _attention_bwd)


def attend(q, k, v, mask, impl: str, dtype, precision: Optional[jax.lax.Precision] = None, block: int = 128):
  """Attention with the kernel `impl` (IMPLEMENTATIONS); q [B, Lq, H, D], k/v [B, Lk, Hkv, D] → [B, Lq, H, D].

  `mask` is a bool [B, Lq, Lk] or an `omni_mask.Spans` (expanded for "xla" and "cudnn"; "flash" needs Spans).
  "flash" runs once per shard of the active mesh (batch and heads).
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention_impl={impl!r} is not one of {IMPLEMENTATIONS}")
  if impl == "blockwise":
    if not isinstance(mask, omni_mask.Spans):
      raise ValueError(f"attention_impl={impl!r} reads the compact mask: pass omni_mask.Spans (omni_spans, "
                       "t2i_spans), not a dense [B, L, L] array")
    return flash_attention.blockwise_attention(q, k, v, mask, dtype, precision, block)
  if impl == "flash":
    if not isinstance(mask, omni_mask.Spans):
      raise ValueError(f"attention_impl={impl!r} reads the compact mask: pass omni_mask.Spans (omni_spans, "
                       "t2i_spans), not a dense [B, L, L] array")
    kernel = lambda q_, k_, v_, *spans: flash_attention.flash_attention(
        q_, k_, v_, omni_mask.Spans(*spans), dtype, precision, block, block)
    return sharding.per_shard(kernel, (q, k, v), tuple(mask), (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, None),
                              (axes.BATCH, axes.LENGTH))
  allowed = omni_mask.expand(mask) if isinstance(mask, omni_mask.Spans) else mask
  if impl == "cudnn":
    out = jax.nn.dot_product_attention(q, k, v, mask=allowed[:, None], implementation="cudnn")
    return out.astype(dtype)
  return attention(q, k, v, allowed, dtype, precision)
