"""A dense layer whose kernel is created at its full multi-axis shape with logical axis names.

flax's DenseGeneral initialises a flattened 2-D kernel and reshapes it, which breaks logical sharding
constraints on 3-D kernels (q/k/v [E, H, D], o [H, D, E]) under a mesh. Here the kernel has its final shape
from the start, and the product accumulates in float32 whatever the compute dtype (bf16 inputs, f32 sums).

The product has a hand-written backward pass (`matmul`) that lays out both backward products the way the
CPU matmul library (XNNPACK/YNNPACK inside XLA:CPU) runs fastest, rather than the layout autodiff produces:
  forward   y  = x · W               x [M, K], W [K, N]
  backward  dx = dy · Wᵀ             (W read transposed inside the product)
            dW = (xᵀ) · dy           (xᵀ materialised first: XLA would otherwise fold the transpose into the
                                      product and run xᵀ·dy as a transposed-operand product, about 1.4×
                                      slower here; only when K ≤ N, see _matmul_bwd)
Both take the compute dtype and accumulate in float32; dW stays float32 with bf16 operands (autodiff would
round it to bf16). The residuals are x and W in the compute dtype. On CPUs without bf16 units the bf16
operands are widened to f32 inside the product (`layers.product_operands`): the same exact products, at f32 speed.
With `lora_rank` r > 0 the layer adds a LoRA update (Hu et al. 2021): y += (alpha / r) · (x · A) · B with
A [in..., r] (normal, std 1/sqrt(K)) and B [r, out...] (zeros, so the adapted layer starts as the base layer);
A and B carry the kernel's input and output axis names, so they shard like it. `merged_kernel` folds them in.
All three products take the same `precision` (layers.MATMUL_PRECISIONS): a hand-written backward pass gets
none of it from autodiff, so it is passed through explicitly.
"""

import functools
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from showo_jax.common import axes
from showo_jax.models import layers


def _dot(a, b, contract, dtype, precision):
  a, b = layers.product_operands(a, b, dtype)
  return jax.lax.dot_general(a, b, (contract, ((), ())), precision=precision, preferred_element_type=jnp.float32)


def _flat(x, kernel, n_in):
  """x [..., in...] → [M, K]; kernel [in..., out...] → [K, N]."""
  k = 1
  for s in kernel.shape[:n_in]:
    k *= s
  return x.reshape(-1, k), kernel.reshape(k, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def matmul(x, kernel, n_in: int, dtype, precision: Optional[jax.lax.Precision] = None):
  """float32 x · kernel contracting the last `n_in` axes of x with the first `n_in` axes of kernel.

  Args:
    x: [..., in...] activations.
    kernel: [in..., out...] weights.
    n_in: number of contracted axes.
    dtype: compute dtype of both operands (bfloat16 or float32); the sums are float32.
    precision: of the forward and both backward products; None = jax's default (TF32 on GPU, bf16 on TPU).
  Returns:
    float32 [..., out...].
  """
  return _matmul_fwd(x, kernel, n_in, dtype, precision)[0]


def _matmul_fwd(x, kernel, n_in, dtype, precision):
  x2, w2 = _flat(x.astype(dtype), kernel.astype(dtype), n_in)  # residuals in the compute dtype
  y = _dot(x2, w2, ((1,), (0,)), dtype, precision).reshape(x.shape[:x.ndim - n_in] + kernel.shape[n_in:])
  # Zero-size arrays carry the input shapes and dtypes that the cotangents must have.
  return y, (x2, w2, jnp.zeros((0,) + x.shape, x.dtype), jnp.zeros((0,) + kernel.shape, kernel.dtype))


def _matmul_bwd(n_in, dtype, precision, res, dy):
  del n_in
  x2, w2, x_like, k_like = res
  dy2 = dy.reshape(x2.shape[0], w2.shape[1]).astype(dtype)
  dx = _dot(dy2, w2, ((1,), (1,)), dtype, precision)  # [M, K]
  if x2.shape[1] <= dy2.shape[1]:
    # The barrier keeps xᵀ a real array (see the module docstring).
    dw = _dot(jax.lax.optimization_barrier(x2.T), dy2, ((1,), (0,)), dtype, precision)  # [K, N]
  else:
    # Wide x (fc2, down_proj): transposing it costs more than the fast product saves, and transposing dy
    # instead makes XLA recompute dy's whole elementwise producer chain in transposed (strided) order.
    dw = _dot(x2, dy2, ((0,), (0,)), dtype, precision)  # [K, N]
  return (dx.reshape(x_like.shape[1:]).astype(x_like.dtype), dw.reshape(k_like.shape[1:]).astype(k_like.dtype))


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
  """y = x · W + b, contracting the last `num_in_axes` axes of x with the leading axes of W."""
  features: Sequence[int]
  kernel_axes: Sequence[str]  # logical names of W: input axes then output axes
  num_in_axes: int = 1
  use_bias: bool = True
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32  # of both product operands
  param_dtype: jnp.dtype = jnp.float32
  out_dtype: Optional[jnp.dtype] = None  # of y; None: `dtype`
  precision: Optional[jax.lax.Precision] = None  # of the products, forward and backward; None: jax's default
  lora_rank: int = 0  # 0: no adapter
  lora_alpha: float = 16.0  # the update is scaled by alpha / rank
  lora_dropout: float = 0.0  # on the adapter's input, training only
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    features = tuple(self.features)
    n_in = self.num_in_axes
    in_shape = x.shape[-n_in:]
    kernel = self.param("kernel", layers.normal_init(self.init_std, self.kernel_axes), in_shape + features,
                        self.param_dtype)
    dtype = jnp.dtype(self.dtype)
    y = matmul(x, kernel, n_in, dtype, self.precision)
    if self.lora_rank > 0:
      r = self.lora_rank
      fan_in = math.prod(in_shape)
      a = self.param("lora_a", layers.normal_init(1.0 / math.sqrt(fan_in), self.kernel_axes[:n_in] + (axes.LORA,)),
                     in_shape + (r,), self.param_dtype)
      b = self.param("lora_b", layers.zeros_init((axes.LORA,) + tuple(self.kernel_axes[n_in:])), (r,) + features,
                     self.param_dtype)
      h = nn.Dropout(self.lora_dropout, deterministic=self.deterministic or self.lora_dropout == 0)(x)
      h = matmul(h, a, n_in, dtype, self.precision)
      y = y + (self.lora_alpha / r) * matmul(h, b, 1, dtype, self.precision)
    if self.use_bias:
      bias = self.param("bias", layers.zeros_init(self.kernel_axes[n_in:]), features, self.param_dtype)
      y = y + bias.astype(jnp.float32)
    return y.astype(self.dtype if self.out_dtype is None else self.out_dtype)


def merged_kernel(kernel, lora_a, lora_b, alpha: float, num_stacked: int = 0):
  """W + (alpha / r) · A · B, summed in float32 and cast back to W's dtype, for W [in..., out...],
  A [in..., r], B [r, out...], each with `num_stacked` leading axes (scanned layers) in front."""
  if num_stacked:
    return jax.vmap(lambda w, a, b: merged_kernel(w, a, b, alpha, num_stacked - 1))(kernel, lora_a, lora_b)
  r = lora_a.shape[-1]
  delta = jnp.tensordot(lora_a.astype(jnp.float32), lora_b.astype(jnp.float32), axes=1,
                        precision=jax.lax.Precision.HIGHEST)
  if delta.shape != kernel.shape:
    raise ValueError(f"LoRA factors {lora_a.shape} x {lora_b.shape} do not make the kernel's shape {kernel.shape}")
  return (kernel.astype(jnp.float32) + (alpha / r) * delta).astype(kernel.dtype)
