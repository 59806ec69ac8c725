"""Plain-autodiff references for the model's hand-written VJPs (models/attention.py, models/dense.py): same
numbers, derivatives left to JAX, so tests can compare values and gradients against them."""

import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.models.omni_mask import MASK_VALUE  # the same finite stand-in for -inf as the model's


def plain_matmul(x, kernel, n_in: int, dtype, precision=None):
  """models/dense.py `matmul` left to autodiff: the reference for its hand-written backward pass."""
  contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
  return jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), (contract, ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)


def dot_product_attention(q, k, v, allowed, dtype, precision=None):
  """Softmax attention with a boolean mask and grouped-query heads, differentiated by autodiff.

  The plain reference for models/attention.py `attention` (what the model uses), which has the same numbers and
  a hand-written backward pass.

  Args:
    q: [B, Lq, H, D] queries.
    k: [B, Lk, Hkv, D] keys, Hkv dividing H (each kv head serves H // Hkv query heads).
    v: [B, Lk, Hkv, D] values.
    allowed: bool [B, Lq, Lk], True = may attend.
    dtype: output dtype.
    precision: of both products (autodiff gives the backward products the same).
  Returns:
    [B, Lq, H, D]. Scores and softmax are computed in float32.
  """
  b, lq, h, d = q.shape
  hkv = k.shape[2]
  q = q.reshape(b, lq, hkv, h // hkv, d)
  scores = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, precision=precision, preferred_element_type=jnp.float32)
  scores = scores / np.sqrt(d).astype(np.float32)
  scores = jnp.where(allowed[:, None, None, :, :], scores, MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v, precision=precision, preferred_element_type=jnp.float32)
  return out.reshape(b, lq, h, d).astype(dtype)
