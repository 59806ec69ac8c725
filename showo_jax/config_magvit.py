"""Configs of the MAGVIT-v2 image tokenizer (encoder/decoder + lookup-free quantizer), and their validation.

`magvit_config("official")` is the architecture hard-coded in the official `MAGVITv2` class (SPEC §8);
`magvit_config("tiny")` is the parity model A (`/work/shared/parity/parity_A.json["tiny_magvit"]`).
Field names follow the official constructor arguments where one exists (`ch`, `ch_mult`, `num_res_blocks`,
`attn_resolutions`, `resolution`); `codebook_bits` is the official `z_channels` = `codebook_dim`.
"""

import ml_collections

from showo_jax import config_lib

ConfigDict = ml_collections.ConfigDict

# The exact-entropy penalty materialises [positions, 2**bits] probabilities; past this it cannot fit in memory.
MAX_EXACT_ENTROPY_BITS = 20
# Indices are int32 in JAX (x64 off): channel 0 carries weight 2**(bits-1), which must stay positive.
MAX_BITS = 30
ENTROPY_FORMS = ("factorized", "exact")
PRECISIONS = ("default", "high", "highest")

MAGVIT_PRESETS = {
    "official": dict(
        encoder=dict(ch=128, ch_mult=[1, 2, 2, 4, 4], num_res_blocks=[4, 3, 4, 3, 4]),
        decoder=dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=[4, 4, 3, 4, 3]),
        codebook_bits=13, resolution=256),
    "tiny": dict(
        encoder=dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=[2, 1, 2]),
        decoder=dict(ch=32, ch_mult=[1, 1, 2], num_res_blocks=[2, 2, 1]),
        codebook_bits=6, resolution=32),
}


def magvit_config(size: str = "tiny") -> ConfigDict:
  """Returns the tokenizer config of a preset (`official` or `tiny`)."""
  if size not in MAGVIT_PRESETS:
    raise config_lib.ConfigError(f"unknown magvit size {size!r}; known: {', '.join(MAGVIT_PRESETS)}")
  preset = MAGVIT_PRESETS[size]

  def tower(spec):
    # [5] never equals a power-of-two resolution: like the official model, attention only in the mid block.
    return ConfigDict(dict(ch=spec["ch"], ch_mult=list(spec["ch_mult"]),
                           num_res_blocks=list(spec["num_res_blocks"]), attn_resolutions=[5]))

  c = ConfigDict()
  c.encoder = tower(preset["encoder"])
  c.decoder = tower(preset["decoder"])
  c.codebook_bits = preset["codebook_bits"]  # official z_channels = LFQ codebook_dim; 2**bits codes
  c.resolution = preset["resolution"]  # only decides which levels get attention (attn_resolutions)
  c.in_channels = 3
  c.out_channels = 3
  c.norm_groups = 32  # official Normalize = GroupNorm(32 groups, eps 1e-6)
  c.norm_eps = 1e-6
  c.lfq = ConfigDict(dict(
      beta=0.25,  # weight of the (codes - sg(z))**2 term of the commitment loss
      commit_loss_multiplier=0.1,
      entropy_multiplier=0.1,
      # "factorized": official per-bit binary entropies; "exact": entropies over all 2**bits codes
      # (divided by bits, so both are in nats per bit; see models/lfq.py).
      entropy_form="factorized",
      entropy_temperature=1.0,  # logits are -distance**2 / temperature; the official code uses 1
  ))
  c.dtype = "float32"  # activations
  c.param_dtype = "float32"
  # Matmul/conv precision: "default" lets accelerators use TF32/bf16 passes (as PyTorch's cuDNN TF32 does);
  # "highest" gives full float32.
  c.precision = "default"
  return c


def codebook_size(config) -> int:
  return 2 ** int(config.codebook_bits)


def downsample_factor(config) -> int:
  return 2 ** (len(config.encoder.ch_mult) - 1)


def _check(cond: bool, message: str):
  if not cond:
    raise config_lib.ConfigError(message)


def _validate_tower(config, name: str):
  tower = config[name]
  prefix = f"config.{name}"
  _check(int(tower.ch) > 0, f"{prefix}.ch={tower.ch} must be positive")
  _check(len(tower.ch_mult) > 0, f"{prefix}.ch_mult is empty")
  _check(len(tower.ch_mult) == len(tower.num_res_blocks),
         f"{prefix}.num_res_blocks has {len(tower.num_res_blocks)} entries but {prefix}.ch_mult has "
         f"{len(tower.ch_mult)}: one per level")
  for i, mult in enumerate(tower.ch_mult):
    _check(isinstance(mult, int) and mult > 0, f"{prefix}.ch_mult[{i}]={mult} must be a positive integer")
    channels = tower.ch * mult
    _check(channels % config.norm_groups == 0,
           f"{prefix}.ch * {prefix}.ch_mult[{i}] = {channels} channels is not a multiple of "
           f"config.norm_groups={config.norm_groups} (GroupNorm)")
  for i, blocks in enumerate(tower.num_res_blocks):
    _check(isinstance(blocks, int) and blocks > 0,
           f"{prefix}.num_res_blocks[{i}]={blocks} must be a positive integer")
  if name == "encoder":  # conv_in gives the first level ch channels, normalised by level 0's first block.
    _check(tower.ch % config.norm_groups == 0,
           f"{prefix}.ch={tower.ch} is not a multiple of config.norm_groups={config.norm_groups} (GroupNorm)")


def validate_magvit(config) -> ConfigDict:
  """Checks every cross-field constraint of a tokenizer config; raises ConfigError naming the field."""
  _check(int(config.norm_groups) > 0, f"config.norm_groups={config.norm_groups} must be positive")
  _check(config.norm_eps > 0, f"config.norm_eps={config.norm_eps} must be positive")
  for name in ("encoder", "decoder"):
    _validate_tower(config, name)
  _check(len(config.encoder.ch_mult) == len(config.decoder.ch_mult),
         f"config.decoder.ch_mult has {len(config.decoder.ch_mult)} levels but config.encoder.ch_mult has "
         f"{len(config.encoder.ch_mult)}: the decoder must upsample as much as the encoder downsamples")
  bits = int(config.codebook_bits)
  _check(1 <= bits <= MAX_BITS, f"config.codebook_bits={bits} must be in [1, {MAX_BITS}] (int32 indices)")
  for name in ("in_channels", "out_channels"):
    _check(int(config[name]) > 0, f"config.{name}={config[name]} must be positive")
  factor = downsample_factor(config)
  _check(config.resolution > 0 and config.resolution % factor == 0,
         f"config.resolution={config.resolution} must be a positive multiple of the downsampling factor {factor}")
  lfq = config.lfq
  for name in ("beta", "commit_loss_multiplier", "entropy_multiplier"):
    _check(lfq[name] >= 0, f"config.lfq.{name}={lfq[name]} must be >= 0")
  _check(lfq.entropy_temperature > 0, f"config.lfq.entropy_temperature={lfq.entropy_temperature} must be > 0")
  _check(lfq.entropy_form in ENTROPY_FORMS,
         f"config.lfq.entropy_form={lfq.entropy_form!r} is not one of {ENTROPY_FORMS}")
  _check(lfq.entropy_form != "exact" or bits <= MAX_EXACT_ENTROPY_BITS,
         f"config.codebook_bits={bits} is too many for config.lfq.entropy_form='exact' (it materialises all "
         f"2**bits codes; at most {MAX_EXACT_ENTROPY_BITS} bits): use 'factorized'")
  for name in ("dtype", "param_dtype"):
    _check(config[name] in config_lib.DTYPES, f"config.{name}={config[name]!r} is not one of {config_lib.DTYPES}")
  _check(config.precision in PRECISIONS, f"config.precision={config.precision!r} is not one of {PRECISIONS}")
  return config
