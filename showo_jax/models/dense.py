"""A dense layer whose kernel is created at its full multi-axis shape with logical axis names.

flax's DenseGeneral initialises a flattened 2-D kernel and reshapes it, which breaks logical sharding
constraints on 3-D kernels (q/k/v [E, H, D], o [H, D, E]) under a mesh. Here the kernel has its final shape
from the start, and the product accumulates in float32 whatever the compute dtype (bf16 inputs, f32 sums).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from showo_jax.models import layers


class Dense(nn.Module):
  """y = x · W + b, contracting the last `num_in_axes` axes of x with the leading axes of W."""
  features: Sequence[int]
  kernel_axes: Sequence[str]  # logical names of W: input axes then output axes
  num_in_axes: int = 1
  use_bias: bool = True
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = tuple(self.features)
    n_in = self.num_in_axes
    in_shape = x.shape[-n_in:]
    kernel = self.param("kernel", layers.normal_init(self.init_std, self.kernel_axes), in_shape + features,
                        self.param_dtype)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())),
                            preferred_element_type=jnp.float32)
    if self.use_bias:
      bias = self.param("bias", layers.zeros_init(self.kernel_axes[n_in:]), features, self.param_dtype)
      y = y + bias.astype(jnp.float32)
    return y.astype(self.dtype)
