"""PatchGAN discriminator (pix2pix / taming-transformers `NLayerDiscriminator`), Flax Linen, NHWC.

conv4×4 s2 (ch) → LeakyReLU(0.2) → [conv4×4 s2 (ch·min(2^n, 8)) → norm → LeakyReLU] for n = 1 … L−1 →
conv4×4 s1 (ch·min(2^L, 8)) → norm → LeakyReLU → conv4×4 s1 → 1 logit per patch. All convs pad 1.
Difference from taming: the norm is GroupNorm (or none) instead of BatchNorm, so the discriminator has no
running statistics and its update is a pure function of (params, batch), like the rest of the train step.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class PatchDiscriminator(nn.Module):
  """Images [B, H, W, C] in [−1, 1] → patch logits float32 [B, h, w, 1] (h ≈ H / 2^(L−1) − 2)."""
  ch: int = 64
  num_layers: int = 3
  norm: str = "group"  # "group" | "none"
  norm_groups: int = 32
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _conv(self, features, stride, name):
    return nn.Conv(features, (4, 4), strides=stride, padding=((1, 1), (1, 1)), dtype=self.dtype,
                   param_dtype=self.param_dtype, name=name)

  def _norm(self, x, name):
    if self.norm == "none":
      return x
    groups = min(self.norm_groups, x.shape[-1])
    return nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype,
                        name=name)(x)

  @nn.compact
  def __call__(self, x):
    h = nn.leaky_relu(self._conv(self.ch, 2, "conv_0")(x.astype(self.dtype)), 0.2)  # [B, H/2, W/2, ch]
    for n in range(1, self.num_layers):
      h = self._conv(self.ch * min(2 ** n, 8), 2, f"conv_{n}")(h)
      h = nn.leaky_relu(self._norm(h, f"norm_{n}"), 0.2)
    h = self._conv(self.ch * min(2 ** self.num_layers, 8), 1, f"conv_{self.num_layers}")(h)
    h = nn.leaky_relu(self._norm(h, f"norm_{self.num_layers}"), 0.2)
    return self._conv(1, 1, "conv_out")(h).astype(jnp.float32)
