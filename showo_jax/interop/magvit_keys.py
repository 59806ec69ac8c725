"""Official MAGVITv2 state dicts ↔ showo_jax tokenizer params.

Official keys (SPEC §9.2) map to the Flax tree of `tokenizer/magvit.py` one to one: `encoder.down.{l}.block.{b}.
conv1.weight` ↔ `encoder/down_{l}_block_{b}/conv1/kernel`. PyTorch conv weights [out, in, kh, kw] become
Flax HWIO kernels [kh, kw, in, out]; GroupNorm `weight` becomes `scale`. The architecture (channels, levels,
blocks per level, attention levels, bits) is read off the key names and shapes, so the same code loads the
released 13-bit model and the tiny parity model. The two LFQ buffers (`quantize.embedding` [2^K, K] float32,
`quantize.power_vals` [K] int64) carry no information (they are fixed functions of K): they may be absent on
import, must hold the standard values if present, and are always written on export.
"""

import functools
import math
import re

import flax
import jax.numpy as jnp
import ml_collections
import numpy as np

from showo_jax.config import base as config_base
from showo_jax.interop import reader
from showo_jax.tokenizer import config as tokenizer_config
from showo_jax.tokenizer import lfq
from showo_jax.tokenizer import magvit

CheckpointError = reader.CheckpointError
BUFFER_KEYS = ("quantize.embedding", "quantize.power_vals")
# Released tokenizer: 16×16 latent grid at 256 px. Used to pick `resolution` for architectures that match no
# preset; it only matters for models with attention inside the levels.
_LATENT_GRID = 16


###########################  Key layout  ###########################

def _conv(out, key, path, c_in, c_out, kernel):
  out.append((f"{key}.weight", path + ("kernel",), (c_out, c_in, kernel, kernel), True))
  out.append((f"{key}.bias", path + ("bias",), (c_out,), False))


def _norm(out, key, path, c):
  out.append((f"{key}.weight", path + ("scale",), (c,), False))
  out.append((f"{key}.bias", path + ("bias",), (c,), False))


def _resblock(out, key, path, c_in, c_out):
  _norm(out, f"{key}.norm1", path + ("norm1",), c_in)
  _conv(out, f"{key}.conv1", path + ("conv1",), c_in, c_out, 3)
  _norm(out, f"{key}.norm2", path + ("norm2",), c_out)
  _conv(out, f"{key}.conv2", path + ("conv2",), c_out, c_out, 3)
  if c_in != c_out:
    _conv(out, f"{key}.nin_shortcut", path + ("nin_shortcut",), c_in, c_out, 1)


def _attn(out, key, path, c):
  _norm(out, f"{key}.norm", path + ("norm",), c)
  for name in ("q", "k", "v", "proj_out"):
    _conv(out, f"{key}.{name}", path + (name,), c, c, 1)


def _mid(out, tower, c):
  _resblock(out, f"{tower}.mid.block_1", (tower, "mid_block_1"), c, c)
  _attn(out, f"{tower}.mid.attn_1", (tower, "mid_attn_1"), c)
  _resblock(out, f"{tower}.mid.block_2", (tower, "mid_block_2"), c, c)


def _level(out, tower, group, level, resample_name):
  """Official registration order within a level: all blocks, then all attentions, then the resampler."""
  for b in range(level.num_blocks):
    c_in = level.channels_in if b == 0 else level.channels_out
    _resblock(out, f"{tower}.{group}.{level.index}.block.{b}", (tower, f"{group}_{level.index}_block_{b}"),
              c_in, level.channels_out)
  for b in range(level.num_blocks if level.attention else 0):
    _attn(out, f"{tower}.{group}.{level.index}.attn.{b}", (tower, f"{group}_{level.index}_attn_{b}"),
          level.channels_out)
  if level.resample:
    c = level.channels_out
    _conv(out, f"{tower}.{group}.{level.index}.{resample_name}.conv",
          (tower, f"{group}_{level.index}_{resample_name}"), c, c, 3)


def _levels(config, tower):
  t = config[tower]
  fn = magvit.encoder_levels if tower == "encoder" else magvit.decoder_levels
  return fn(t.ch, list(t.ch_mult), list(t.num_res_blocks), list(t.attn_resolutions), config.resolution)


def official_layout(config) -> list[tuple[str, tuple[str, ...], tuple[int, ...], bool]]:
  """(official key, Flax param path, official shape, is_conv_weight) for every parameter, in official order."""
  out, bits = [], config.codebook_bits
  enc = _levels(config, "encoder")
  _conv(out, "encoder.conv_in", ("encoder", "conv_in"), config.in_channels, config.encoder.ch, 3)
  for level in enc:
    _level(out, "encoder", "down", level, "downsample")
  c = enc[-1].channels_out
  _mid(out, "encoder", c)
  _norm(out, "encoder.norm_out", ("encoder", "norm_out"), c)
  _conv(out, "encoder.conv_out", ("encoder", "conv_out"), c, bits, 3)
  _conv(out, "encoder.quant_conv", ("encoder", "quant_conv"), bits, bits, 1)
  dec = _levels(config, "decoder")  # coarsest first; the state dict lists `up.{l}` by ascending l
  c = dec[0].channels_in
  _conv(out, "decoder.conv_in", ("decoder", "conv_in"), bits, c, 3)
  _mid(out, "decoder", c)
  for level in sorted(dec, key=lambda lv: lv.index):
    _level(out, "decoder", "up", level, "upsample")
  c = dec[-1].channels_out
  _norm(out, "decoder.norm_out", ("decoder", "norm_out"), c)
  _conv(out, "decoder.conv_out", ("decoder", "conv_out"), c, config.out_channels, 3)
  _conv(out, "decoder.post_quant_conv", ("decoder", "post_quant_conv"), bits, bits, 1)
  return out


###########################  Architecture inference  ###########################

def _dim(sd, candidates, axis=0):
  """Size of `axis` of the first present key, or None."""
  for key in candidates:
    if key in sd and np.ndim(sd[key]) > axis:
      return int(np.shape(sd[key])[axis])
  return None


def _tower_shape(sd, tower, group):
  """(per-level channels, blocks per level, levels with attention) of `encoder.down` / `decoder.up`."""
  level_re = re.compile(rf"^{tower}\.{group}\.(\d+)\.")
  block_re = re.compile(rf"^{tower}\.{group}\.(\d+)\.block\.(\d+)\.")
  attn_re = re.compile(rf"^{tower}\.{group}\.(\d+)\.attn\.")
  num_levels = 1 + max((int(m.group(1)) for m in map(level_re.match, sd) if m), default=-1)
  if num_levels == 0:
    raise CheckpointError(f"MAGVIT state dict: no {tower}.{group}.0.* keys (is this a MAGVITv2 checkpoint?)")
  blocks = [0] * num_levels
  for m in filter(None, map(block_re.match, sd)):
    blocks[int(m.group(1))] = max(blocks[int(m.group(1))], int(m.group(2)) + 1)
  attention = {int(m.group(1)) for m in map(attn_re.match, sd) if m}
  channels = []
  for l, n in enumerate(blocks):
    names = [f"{tower}.{group}.{l}.block.{b}.{p}" for b in reversed(range(n))
             for p in ("conv2.weight", "conv2.bias", "norm2.weight", "norm2.bias", "conv1.weight", "conv1.bias")]
    c = _dim(sd, names)
    if c is None:
      raise CheckpointError(f"MAGVIT state dict: missing key {tower}.{group}.{l}.block.0.conv1.weight")
    channels.append(c)
  return channels, blocks, attention


def _tower_config(sd, tower, group, ch):
  channels, blocks, attention = _tower_shape(sd, tower, group)
  if ch is None:  # decoder: only the products ch * mult are stored; the official factorisation is the gcd
    ch = functools.reduce(math.gcd, channels)
  mult = []
  for l, c in enumerate(channels):
    if c % ch:
      raise CheckpointError(f"MAGVIT state dict: {tower}.{group}.{l}.block.0.conv1.weight has {c} output "
                            f"channels, not a multiple of {tower}.conv_in's {ch}")
    mult.append(c // ch)
  return ml_collections.ConfigDict(dict(ch=ch, ch_mult=mult, num_res_blocks=blocks, attn_resolutions=[5])), \
      attention


def config_from_state_dict(sd) -> ml_collections.ConfigDict:
  """The tokenizer config that the key names and shapes of a state dict describe.

  Args:
    sd: {official key: array}; only `.shape` is read, so `jax.ShapeDtypeStruct`s work too.

  Returns:
    A validated config; a preset's exact config (resolution included) when the architecture is a preset's.
  """
  bits = _dim(sd, ["encoder.quant_conv.weight", "encoder.quant_conv.bias", "decoder.post_quant_conv.weight",
                   "decoder.post_quant_conv.bias", "encoder.conv_out.weight", "quantize.power_vals"])
  bits = bits or _dim(sd, ["decoder.conv_in.weight"], axis=1)
  if bits is None:
    raise CheckpointError("MAGVIT state dict: missing key encoder.quant_conv.weight")
  enc_ch = _dim(sd, ["encoder.conv_in.weight", "encoder.conv_in.bias", "encoder.down.0.block.0.norm1.weight"])
  if enc_ch is None:
    raise CheckpointError("MAGVIT state dict: missing key encoder.conv_in.weight")
  config = tokenizer_config.magvit_config("official")
  config.encoder, enc_attn = _tower_config(sd, "encoder", "down", enc_ch)
  config.decoder, dec_attn = _tower_config(sd, "decoder", "up", None)
  config.codebook_bits = bits
  config.in_channels = _dim(sd, ["encoder.conv_in.weight"], axis=1) or 3
  config.out_channels = _dim(sd, ["decoder.conv_out.weight", "decoder.conv_out.bias"]) or 3
  arch = lambda c: (c.encoder.to_dict(), c.decoder.to_dict(), c.codebook_bits)  # pylint: disable=g-long-lambda
  presets = [tokenizer_config.magvit_config(s) for s in tokenizer_config.MAGVIT_PRESETS]
  match = [p for p in presets if arch(p) == arch(config)]
  if match and not enc_attn and not dec_attn:
    config.resolution = match[0].resolution
  else:
    config.resolution = _LATENT_GRID * tokenizer_config.downsample_factor(config)
  # Level l of either tower runs at resolution / 2**l: name those resolutions to put attention there.
  if enc_attn:
    config.encoder.attn_resolutions = sorted(config.resolution // 2 ** l for l in enc_attn)
  if dec_attn:
    config.decoder.attn_resolutions = sorted(config.resolution // 2 ** l for l in dec_attn)
  try:
    return tokenizer_config.validate_magvit(config)
  except config_base.ConfigError as e:
    raise CheckpointError(f"MAGVIT state dict describes an invalid tokenizer: {e}") from None


def _check_buffers(sd, bits):
  expected = {"quantize.embedding": np.asarray(lfq.codebook(bits)), "quantize.power_vals": lfq.power_vals(bits)}
  for key, want in expected.items():
    if key in sd and (np.shape(sd[key]) != want.shape or not np.array_equal(np.asarray(sd[key]), want)):
      raise CheckpointError(f"MAGVIT state dict: {key} (shape {tuple(np.shape(sd[key]))}) is not the standard "
                            f"LFQ buffer for {bits} bits (shape {want.shape})")


def _one_line(kind, keys):
  more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
  return f"{kind} key {keys[0]}{more}"


###########################  Conversion  ###########################

def params_from_official(state_dict) -> tuple[dict, ml_collections.ConfigDict]:
  """Official {key: array} → (Flax params tree for `MagvitV2` (no "params" wrapper), its config)."""
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  config = config_from_state_dict(sd)
  layout = official_layout(config)
  known = {key for key, *_ in layout}
  missing = [key for key, *_ in layout if key not in sd]
  unexpected = [key for key in sd if key not in known and key not in BUFFER_KEYS]
  if missing or unexpected:
    problems = ([_one_line("missing", missing)] if missing else []) + (
        [_one_line("unexpected", unexpected)] if unexpected else [])
    raise CheckpointError(f"MAGVIT state dict: {'; '.join(problems)}")
  flat = {}
  dtype = jnp.dtype(config.param_dtype)
  for key, path, shape, is_conv in layout:
    value = sd[key]
    if value.shape != shape:
      raise CheckpointError(f"MAGVIT state dict: {key} has shape {value.shape}, expected {shape}")
    if is_conv:
      value = value.transpose(2, 3, 1, 0)  # [out, in, kh, kw] → HWIO
    flat[path] = jnp.asarray(value, dtype=dtype)
  _check_buffers(sd, config.codebook_bits)
  return flax.traverse_util.unflatten_dict(flat), config


def _unwrap(params):
  return params["params"] if set(params) == {"params"} else params


def params_to_official(params, config) -> dict[str, np.ndarray]:
  """Flax params (bare or {"params": …}) → official state dict (float32 weights + the two LFQ buffers)."""
  flat = flax.traverse_util.flatten_dict(_unwrap(params))
  layout = official_layout(config)
  extra = sorted(set(flat) - {path for _, path, _, _ in layout})
  if extra:
    raise CheckpointError(f"MAGVIT params: unexpected entry {'/'.join(extra[0])} for this config")
  out = {}
  for key, path, shape, is_conv in layout:
    if path not in flat:
      raise CheckpointError(f"MAGVIT params: missing entry {'/'.join(path)} (official {key})")
    value = np.asarray(flat[path], dtype=np.float32)
    value = np.ascontiguousarray(value.transpose(3, 2, 0, 1)) if is_conv else value  # HWIO → [out, in, kh, kw]
    if value.shape != shape:
      raise CheckpointError(f"MAGVIT params: {'/'.join(path)} gives {key} shape {value.shape}, expected {shape}")
    out[key] = value
  out["quantize.embedding"] = np.asarray(lfq.codebook(config.codebook_bits), dtype=np.float32)
  out["quantize.power_vals"] = lfq.power_vals(config.codebook_bits)
  return out



def load_official_magvit(source) -> tuple[dict, ml_collections.ConfigDict]:
  """Loads an official MAGVITv2 checkpoint (anything `reader.read_state_dict` takes) → (params, config).

  The config's `precision` is "highest": float32 convs and products on accelerators too, the float32 numerics
  the official parity data records (params_from_official keeps the preset's "default", so that converted
  checkpoints train at full speed).
  """
  params, config = params_from_official(reader.read_state_dict(source))
  config.precision = "highest"
  return params, config
