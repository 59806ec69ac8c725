"""Analytic FLOP count of a Show-o train step, and the device peak used for MFU."""

import time

import jax
import jax.numpy as jnp

from showo_jax.config import showo as showo_config


def forward_flops_per_sequence(config, seq_len: int) -> float:
  """Matmul FLOPs (2 per multiply-add) of one forward pass over one sequence.

  Attention is counted over the full L×L score matrix: the omni-attention mask is applied to dense scores, so
  blocked entries cost the same as allowed ones (image blocks are bidirectional anyway).
  """
  m = config.model
  e, f, l = m.hidden_size, m.intermediate_size, m.num_layers
  d = showo_config.head_dim(m)
  q_out, kv_out = m.num_heads * d, m.num_kv_heads * d
  mlp = (3 if m.family == "llama" else 2) * e * f
  per_token_params = l * (e * q_out + 2 * e * kv_out + q_out * e + mlp) + e * m.vocab_size  # + lm head
  per_token_params += m.get("image_conv", 0) ** 2 * e * e  # the image-grid conv runs at every position, then masks
  attention = l * 2 * seq_len * q_out  # q·kᵀ and p·v, per query token
  return 2.0 * seq_len * (per_token_params + attention)


def train_flops_per_step(config) -> float:
  """Forward + backward (≈ 3× forward) over the global batch."""
  t = config.train
  rows = t.batch_t2i + t.batch_lm + t.batch_mmu
  return 3.0 * rows * forward_flops_per_sequence(config, showo_config.seq_len(config))


def matmul(out_dtype=None):
  """x · x, the product the peak is measured on; out_dtype float32 with bf16 x is what the model's products
  do (bf16 operands, f32 sums): on CPUs with bf16 units XLA reaches them only in that form."""
  return jax.jit(lambda x: jax.lax.dot(x, x, preferred_element_type=out_dtype))


def measure_matmul_peak(size: int = 2048, dtype=jnp.float32, repeats: int = 5, out_dtype=None) -> float:
  """FLOP/s of one device on a large square matmul of `dtype` operands returning `out_dtype` (None: `dtype`),
  median of `repeats`; the MFU denominator."""
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  f = matmul(out_dtype)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  times.sort()
  return 2.0 * size**3 / times[len(times) // 2]
