"""Building blocks of the Show-o backbone: norms, rotary embeddings, projections, attention core."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.common import axes
from showo_jax.common import cpu_features

# Finite fill for blocked attention scores: -inf would give NaNs in a fully blocked row.

Dtype = jnp.dtype

# `TransformerConfig.matmul_precision` → the `precision` of every backbone product. "default" is None, not
# Precision.DEFAULT, so that jax's `jax_default_matmul_precision` setting still applies to it.
MATMUL_PRECISIONS = {"default": None, "high": jax.lax.Precision.HIGH, "highest": jax.lax.Precision.HIGHEST}


def product_operands(a, b, dtype):
  """The operands of a product that computes in `dtype` and sums in float32: both rounded to `dtype`; on a CPU
  without bf16 units bf16 operands are then widened to f32, which gives the same exact products at f32 speed
  (common/cpu_features.py). Decided at trace time, for the backend the product is compiled for."""
  a, b = a.astype(dtype), b.astype(dtype)
  if dtype == jnp.bfloat16 and jax.default_backend() == "cpu" and not cpu_features.has_bf16_units():
    return a.astype(jnp.float32), b.astype(jnp.float32)
  return a, b


def normal_init(std: float, names: Sequence[str]):
  return nn.with_logical_partitioning(nn.initializers.normal(std), tuple(names))


def zeros_init(names: Sequence[str]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(names))


def ones_init(names: Sequence[str]):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), tuple(names))


class LayerNorm(nn.Module):
  """LayerNorm with gain and bias over the last axis; statistics in float32 (as PyTorch does)."""
  eps: float = 1e-5
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    scale = self.param("scale", ones_init((axes.NORM,)), (dim,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32)
    if self.use_bias:
      bias = self.param("bias", zeros_init((axes.NORM,)), (dim,), self.param_dtype)
      y = y + bias.astype(jnp.float32)
    return y.astype(self.dtype)


class RMSNorm(nn.Module):
  """RMSNorm (LLaMA): x / rms(x) · gain, in float32."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", ones_init((axes.NORM,)), (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def rotary_tables(positions, rotary_dim: int, theta: float):
  """cos/sin tables [B, L, rotary_dim] for integer positions [B, L] (rotate-half / GPT-NeoX layout)."""
  inv_freq = 1.0 / (theta ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / rotary_dim))  # [rotary_dim/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, rotary_dim/2]
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x, cos, sin):
  """Rotates the first cos.shape[-1] dims of x [B, L, H, D]; the remaining dims pass through."""
  rotary_dim = cos.shape[-1]
  half = rotary_dim // 2
  d = x.shape[-1]
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
  if d % rotary_dim:
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    x1, x2 = jnp.split(x_rot.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = x_rot.astype(jnp.float32) * cos + rotated * sin
    return jnp.concatenate([out.astype(x.dtype), x_pass], axis=-1)
  # The same with D viewed as [D / rotary_dim, 2, half] (x1, x2 | pass pairs): out = x·C + flip(x)·S, where
  # flip swaps the two halves of each pair, C = [c, c | 1, 1] and S = [-s, s | 0, 0]. Only elementwise ops and
  # a reverse, which XLA:CPU fuses into the neighbouring norm and transpose; the rotate-half concatenation is
  # a separate, unvectorised pass, forward and backward, in every attention layer.
  groups = d // rotary_dim
  c, s = cos[..., None, None, :half], sin[..., None, None, :half]  # [B, L, 1, 1, 1, half]
  cos_t = jnp.concatenate([jnp.broadcast_to(c, c.shape[:-2] + (2, half)),
                           jnp.ones(c.shape[:-3] + (groups - 1, 2, half), jnp.float32)], axis=-3)
  sin_t = jnp.concatenate([jnp.concatenate([-s, s], axis=-2),
                           jnp.zeros(s.shape[:-3] + (groups - 1, 2, half), jnp.float32)], axis=-3)
  xg = x.reshape(x.shape[:-1] + (groups, 2, half)).astype(jnp.float32)  # [B, L, H, groups, 2, half]
  out = xg * cos_t + jnp.flip(xg, axis=-2) * sin_t
  return out.reshape(x.shape).astype(x.dtype)
