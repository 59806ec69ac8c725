"""MAGVIT-v2 encode/decode on NCHW float images, as the official `get_code` / `decode_code`: one jitted pair
per tokenizer config (compiled once per config, whatever the params), with the inputs checked on the host.

Works for any tokenizer params: ours (tokenizer/trainer.py `load_tokenizer`) or official weights
(interop/magvit_keys.py). `showo_jax.interop` re-exports both functions as part of its public API.
"""

import functools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from showo_jax.common import xla_options
from showo_jax.tokenizer import config as tokenizer_config
from showo_jax.tokenizer import magvit


def unwrap(params):
  """Bare params of a tree that may be wrapped as {"params": …}."""
  return params["params"] if set(params) == {"params"} else params


@functools.lru_cache(maxsize=16)
def _compiled(config_json: str):
  """Jitted (encode, decode) for one config; keyed by the config's JSON so equal configs share compilations."""
  model = tokenizer_config.magvit_from_config(ml_collections.ConfigDict(json.loads(config_json)))

  def encode(params, images):  # float32 [B, 3, H, W] → int32 [B, h·w]
    _, _, indices = model.apply({"params": params}, jnp.transpose(images, (0, 2, 3, 1)),
                                method=magvit.MagvitV2.encode)  # [B, h, w]
    return indices.reshape(indices.shape[0], -1)

  def decode(params, indices, grid_shape):  # int32 [B, h·w] → float32 [B, 3, H, W]
    images = model.apply({"params": params}, indices, grid_shape, method=magvit.MagvitV2.decode_indices)
    return jnp.transpose(images, (0, 3, 1, 2))

  options = xla_options.conv_net()
  return (jax.jit(encode, compiler_options=options),
          jax.jit(decode, static_argnames="grid_shape", compiler_options=options))


def _config_key(config) -> str:
  return json.dumps(config.to_dict(), sort_keys=True)


def magvit_encode(params, config, images) -> jax.Array:
  """Images float32 [B, 3, H, W] in [−1, 1] (NCHW, as the official `get_code`) → int32 [B, h·w] row-major."""
  if np.ndim(images) != 4 or np.shape(images)[1] != config.in_channels:
    raise ValueError(f"magvit_encode expects images [B, {config.in_channels}, H, W], got {np.shape(images)}")
  factor = tokenizer_config.downsample_factor(config)
  if np.shape(images)[2] % factor or np.shape(images)[3] % factor:
    raise ValueError(f"magvit_encode: image size {np.shape(images)[2:]} is not a multiple of {factor}")
  encode, _ = _compiled(_config_key(config))
  return encode(unwrap(params), jnp.asarray(images, jnp.float32))


def magvit_decode(params, config, indices, shape=None) -> jax.Array:
  """Indices int [B, h·w] (row-major) → float32 images [B, 3, h·f, w·f], unclamped like the official decoder.

  Args:
    params: tokenizer params (bare or {"params": …}).
    config: its config.
    indices: int [B, h·w] codes in [0, 2**codebook_bits).
    shape: (h, w) of the token grid; default square (h = w = √(h·w)), as the official `decode_code`.
  """
  if np.ndim(indices) != 2:
    raise ValueError(f"magvit_decode expects indices [B, h*w], got shape {np.shape(indices)}")
  n = np.shape(indices)[1]
  if shape is None:
    side = math.isqrt(n)
    if side * side != n:
      raise ValueError(f"magvit_decode: {n} tokens are not a square grid; pass shape=(h, w)")
    shape = (side, side)
  shape = (int(shape[0]), int(shape[1]))
  if shape[0] * shape[1] != n:
    raise ValueError(f"magvit_decode: shape={shape} does not hold {n} tokens")
  if not isinstance(indices, jax.core.Tracer):
    host = np.asarray(indices)
    size = tokenizer_config.codebook_size(config)
    if host.size and (host.min() < 0 or host.max() >= size):
      raise ValueError(f"magvit_decode: indices must be in [0, {size}), got [{host.min()}, {host.max()}]")
    indices = host.astype(np.int32)
  _, decode = _compiled(_config_key(config))
  return decode(unwrap(params), jnp.asarray(indices, jnp.int32), grid_shape=shape)
