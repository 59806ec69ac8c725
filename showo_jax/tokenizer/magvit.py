"""MAGVIT-v2 image tokenizer (the official `MAGVITv2`: taming-style VQGAN encoder/decoder + LFQ), Flax Linen.

Layout: NHWC everywhere inside (images [B, H, W, 3], latents [B, h, w, K]); the official code is NCHW, and
`tokenizer/codec.py` transposes at the boundary. Numerics follow SPEC §8: GroupNorm(32,
eps 1e-6) + swish residual blocks with a 1×1 `nin_shortcut` when channels change, single-head attention over
all h·w positions in the mid block (and at levels whose resolution is in `attn_resolutions`, never for the
released model), downsample = zero-pad right/bottom by 1 then 3×3 stride-2 VALID conv, upsample = nearest ×2
then 3×3 conv, 1×1 `quant_conv` / `post_quant_conv`, no output tanh.

Parameter names mirror the official state-dict keys with `.` between module indices replaced by `_`
(`encoder.down.1.block.0.conv1` → `encoder/down_1_block_0/conv1`, `…downsample.conv` → `down_1_downsample`,
`decoder.up.2.upsample.conv` → `up_2_upsample`), GroupNorm gains are `scale`, conv weights `kernel` (HWIO).
`interop/magvit_keys.py` maps them; `encoder_levels`/`decoder_levels` are the structure both sides share.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from showo_jax.tokenizer import lfq

_PRECISIONS = {"default": None, "high": jax.lax.Precision.HIGH, "highest": jax.lax.Precision.HIGHEST}


@dataclasses.dataclass(frozen=True)
class Level:
  """One resolution level of a tower, in the order the tower runs them."""
  index: int  # official level index l (`down.{l}` / `up.{l}`)
  channels_in: int  # channels entering the first residual block
  channels_out: int  # channels of every block's output
  num_blocks: int
  attention: bool  # an AttnBlock after every residual block (official: curr_res in attn_resolutions)
  resample: bool  # downsample (encoder) / upsample (decoder) after the blocks


def encoder_levels(ch: int, ch_mult: Sequence[int], num_res_blocks: Sequence[int],
                   attn_resolutions: Sequence[int], resolution: int) -> list[Level]:
  levels, block_in, res = [], ch, resolution
  for l, mult in enumerate(ch_mult):
    last = l == len(ch_mult) - 1
    levels.append(Level(l, block_in, ch * mult, num_res_blocks[l], res in attn_resolutions, not last))
    block_in = ch * mult
    res = res if last else res // 2
  return levels


def decoder_levels(ch: int, ch_mult: Sequence[int], num_res_blocks: Sequence[int],
                   attn_resolutions: Sequence[int], resolution: int) -> list[Level]:
  """Levels from the coarsest (run first) to the finest, as the official `reversed(range(L))` loop."""
  levels, block_in = [], ch * ch_mult[-1]
  res = resolution // 2 ** (len(ch_mult) - 1)
  for l in reversed(range(len(ch_mult))):
    levels.append(Level(l, block_in, ch * ch_mult[l], num_res_blocks[l], res in attn_resolutions, l != 0))
    block_in = ch * ch_mult[l]
    res = res * 2 if l != 0 else res
  return levels


class _Layers:
  """Shared constructor arguments of every conv / norm of a tower."""

  def __init__(self, module):
    self.m = module

  def conv(self, features, kernel, name, strides=1, padding=None):
    if padding is None:
      padding = ((kernel // 2, kernel // 2),) * 2  # PyTorch `padding=k//2`: symmetric
    return nn.Conv(features, (kernel, kernel), strides=strides, padding=padding, dtype=self.m.dtype,
                   param_dtype=self.m.param_dtype, precision=_PRECISIONS[self.m.precision], name=name)

  def norm(self, name):
    # use_fast_variance=False: E[(x-μ)²] as PyTorch, not E[x²]-μ² (which loses digits for large activations).
    return nn.GroupNorm(num_groups=self.m.norm_groups, epsilon=self.m.norm_eps, use_fast_variance=False,
                        dtype=self.m.dtype, param_dtype=self.m.param_dtype, name=name)


class ResnetBlock(nn.Module):
  """GN → swish → conv3×3 → GN → swish → conv3×3, plus (1×1 nin_shortcut of) the input."""
  features: int
  norm_groups: int = 32
  norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: str = "default"

  @nn.compact
  def __call__(self, x):  # [B, H, W, C_in] → [B, H, W, features]
    layers = _Layers(self)
    h = nn.swish(layers.norm("norm1")(x))
    h = layers.conv(self.features, 3, "conv1")(h)
    h = nn.swish(layers.norm("norm2")(h))  # dropout(0) of the official block omitted: models don't train
    h = layers.conv(self.features, 3, "conv2")(h)
    if x.shape[-1] != self.features:
      x = layers.conv(self.features, 1, "nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all h·w positions with 1×1 q/k/v/proj_out convs, residual."""
  norm_groups: int = 32
  norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: str = "default"

  @nn.compact
  def __call__(self, x):  # [B, H, W, C] → [B, H, W, C]
    layers = _Layers(self)
    b, hgt, wid, c = x.shape
    h = layers.norm("norm")(x)
    q, k, v = (layers.conv(c, 1, name)(h).reshape(b, hgt * wid, c) for name in ("q", "k", "v"))  # [B, N, C]
    precision = _PRECISIONS[self.precision]
    scores = jnp.einsum("bic,bjc->bij", q, k, precision=precision) * c ** -0.5  # [B, N, N]
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    h = jnp.einsum("bij,bjc->bic", weights, v, precision=precision).reshape(b, hgt, wid, c)
    return x + layers.conv(c, 1, "proj_out")(h)


class _Tower(nn.Module):
  """Fields shared by the encoder and the decoder (the official constructor arguments)."""
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 4, 4)
  num_res_blocks: Sequence[int] = (4, 3, 4, 3, 4)
  attn_resolutions: Sequence[int] = (5,)
  resolution: int = 256
  z_channels: int = 13
  io_channels: int = 3  # image channels: encoder input / decoder output
  norm_groups: int = 32
  norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: str = "default"

  def _block_kwargs(self):
    return dict(norm_groups=self.norm_groups, norm_eps=self.norm_eps, dtype=self.dtype,
                param_dtype=self.param_dtype, precision=self.precision)

  def _mid(self, h):
    kw = self._block_kwargs()
    h = ResnetBlock(h.shape[-1], name="mid_block_1", **kw)(h)
    h = AttnBlock(name="mid_attn_1", **kw)(h)
    return ResnetBlock(h.shape[-1], name="mid_block_2", **kw)(h)

  def _level(self, h, level: Level, prefix: str):
    kw = self._block_kwargs()
    for b in range(level.num_blocks):
      h = ResnetBlock(level.channels_out, name=f"{prefix}_{level.index}_block_{b}", **kw)(h)
      if level.attention:
        h = AttnBlock(name=f"{prefix}_{level.index}_attn_{b}", **kw)(h)
    return h


class MagvitEncoder(_Tower):
  """Images [B, H, W, 3] in [−1, 1] → pre-quantisation latents [B, H/f, W/f, z_channels], f = 2^(levels−1)."""

  @nn.compact
  def __call__(self, x):
    layers = _Layers(self)
    h = layers.conv(self.ch, 3, "conv_in")(x.astype(self.dtype))  # [B, H, W, ch]
    for level in encoder_levels(self.ch, self.ch_mult, self.num_res_blocks, self.attn_resolutions,
                                self.resolution):
      h = self._level(h, level, "down")
      if level.resample:
        # Asymmetric (right/bottom) zero padding, as the official Downsample does before its VALID conv.
        h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
        h = layers.conv(h.shape[-1], 3, f"down_{level.index}_downsample", strides=2, padding="VALID")(h)
    h = self._mid(h)
    h = nn.swish(layers.norm("norm_out")(h))
    h = layers.conv(self.z_channels, 3, "conv_out")(h)  # [B, h, w, K]
    return layers.conv(self.z_channels, 1, "quant_conv")(h)


class MagvitDecoder(_Tower):
  """Codes [B, h, w, z_channels] → images [B, h·f, w·f, 3], unbounded (no tanh, as the official)."""
  ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: Sequence[int] = (4, 4, 3, 4, 3)

  @nn.compact
  def __call__(self, z):
    layers = _Layers(self)
    h = layers.conv(self.z_channels, 1, "post_quant_conv")(z.astype(self.dtype))  # [B, h, w, K]
    h = layers.conv(self.ch * self.ch_mult[-1], 3, "conv_in")(h)
    h = self._mid(h)
    for level in decoder_levels(self.ch, self.ch_mult, self.num_res_blocks, self.attn_resolutions,
                                self.resolution):
      h = self._level(h, level, "up")
      if level.resample:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest ×2: [B, 2h, 2w, C]
        h = layers.conv(h.shape[-1], 3, f"up_{level.index}_upsample")(h)
    h = nn.swish(layers.norm("norm_out")(h))
    return layers.conv(self.io_channels, 3, "conv_out")(h).astype(jnp.float32)


class MagvitV2(nn.Module):
  """Encoder + lookup-free quantizer + decoder. `__call__` (used by `init`) reconstructs images."""
  encoder: MagvitEncoder
  decoder: MagvitDecoder

  @property
  def bits(self) -> int:
    return self.encoder.z_channels

  def encode(self, images):
    """images float [B, H, W, 3] → (z float32 [B, h, w, K], codes ±1 [B, h, w, K], int32 indices [B, h, w])."""
    z = self.encoder(images).astype(jnp.float32)
    codes, indices = lfq.quantize(z)
    return z, codes, indices

  def decode_codes(self, codes):
    """codes [B, h, w, K] → float32 images [B, H, W, 3]."""
    return self.decoder(codes)

  def decode_indices(self, indices, grid_shape: tuple[int, int]):
    """int indices [B, h·w] (row-major over the (h, w) grid) → float32 images [B, h·f, w·f, 3]."""
    h, w = grid_shape
    codes = lfq.indices_to_codes(indices.reshape(indices.shape[0], h, w), self.bits)  # [B, h, w, K]
    return self.decode_codes(codes)

  def __call__(self, images):
    _, codes, _ = self.encode(images)
    return self.decode_codes(codes)
