"""Configs of the MAGVIT-v2 image tokenizer (encoder/decoder + lookup-free quantizer), and their validation.

`magvit_config("official")` is the architecture hard-coded in the official `MAGVITv2` class (SPEC §8);
`magvit_config("tiny")` is the parity model A (`/work/shared/parity/parity_A.json["tiny_magvit"]`).
Field names follow the official constructor arguments where one exists (`ch`, `ch_mult`, `num_res_blocks`,
`attn_resolutions`, `resolution`); `codebook_bits` is the official `z_channels` = `codebook_dim`.
Training blocks (`data`, `train`, `optimizer`, `loss`, `disc`, `mesh`; tokenizer/trainer.py) hold the
embedded-MNIST CPU setup for every preset; `training_config("official")` scales them to the released model.
`validate_training` checks them on top of `validate_magvit`.
"""

import jax.numpy as jnp
import ml_collections

from showo_jax.config import base as config_base
from showo_jax.tokenizer import discriminator
from showo_jax.tokenizer import magvit

ConfigDict = ml_collections.ConfigDict
_check = config_base.check

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
    raise config_base.ConfigError(f"unknown magvit size {size!r}; known: {', '.join(MAGVIT_PRESETS)}")
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
      # (divided by bits, so both are in nats per bit; see tokenizer/lfq.py).
      entropy_form="factorized",
      entropy_temperature=1.0,  # logits are -distance**2 / temperature; the official code uses 1
  ))
  c.dtype = "float32"  # activations
  c.param_dtype = "float32"
  # Matmul/conv precision: "default" lets accelerators use TF32/bf16 passes (as PyTorch's cuDNN TF32 does);
  # "highest" gives full float32. The backbone's config.model.matmul_precision is the same setting (same values);
  # this keeps its name because checkpoints store it. interop's load_official_magvit sets "highest".
  c.precision = "default"
  add_training_fields(c)
  return c


def add_training_fields(c: ConfigDict) -> ConfigDict:
  """The training blocks (tokenizer/trainer.py): the embedded-MNIST CPU setup, for every size.

  They are the same for every preset so that a config inferred from weights (interop/magvit_keys.py) equals
  its preset; `configs/magvit2.py:size=official` then scales them up (`OFFICIAL_TRAINING`).
  """
  c.data = ConfigDict(dict(
      # "embedded:train|validation|test" | an image folder | "records:FOLDER" | "tfds:NAME[:SPLIT]@DATA_DIR"
      source="embedded:train",
      eval_source="embedded:validation",  # PSNR / codebook usage / sample grids during training; "" = none
      resolution=32,  # shorter side resized (bicubic) to this, then center-cropped (official image_transform)
      resize=True,  # False: refuse images whose size is not `resolution` (never resample)
      image_field="image",  # field holding the image in record / tfds sources (uint8 array or encoded bytes)
      eval_images=0,  # evaluate on at most this many images of eval_source; 0 = all
  ))
  c.train = ConfigDict(dict(
      # ~1 epoch of the 4,500 training digits (small batches learn more per image). The whole run takes
      # ~245 s of CPU time on a 2-core x86 (600 steps × ~0.31 s + compile/eval), ~4 min wall or less, and
      # reaches ~22.9 dB PSNR on the test split.
      steps=600, batch_size=8, seed=0,
      ema_decay=0.99,  # ema ← decay·ema + (1 − decay)·params after every step; 0 = no EMA
      log_every=50, checkpoint_every=300, keep_checkpoints=2,
      sample_every=300,  # PNG grids of originals | reconstructions in WORKDIR/samples/; 0 = only at the end
      eval_every=0,  # test-split metrics during training; 0 = only at the end
      num_samples=16,  # image pairs per grid
      distributed=False,  # jax.distributed.initialize() (multi-host)
  ))
  c.optimizer = ConfigDict(dict(
      lr=2e-3, warmup_steps=40, final_lr_fraction=0.05, b1=0.9, b2=0.99, eps=1e-8,
      weight_decay=1e-4, weight_decay_mask="clean", grad_clip_norm=1.0,
  ))
  c.loss = ConfigDict(dict(
      l1_weight=1.0, l2_weight=1.0,  # reconstruction: l1·|x − x̂| + l2·(x − x̂)², means over pixels
      perceptual_weight=0.0,  # > 0 needs perceptual_weights (none ship; see tokenizer/losses.py)
      perceptual_weights="",  # .npz of a VGG-style feature network
  ))
  c.disc = ConfigDict(dict(
      enabled=False,  # PatchGAN (tokenizer/discriminator.py); off by default: ~6× the tiny CPU step time
      start_step=0,  # the adversarial terms (and discriminator updates) start at this step
      ch=64, num_layers=3, norm="group",
      loss="hinge",  # "hinge" | "non_saturating"
      weight=0.1,  # × the adaptive weight ‖∇_L rec‖ / ‖∇_L adv‖ at the decoder's last layer L (taming)
      adaptive_weight_max=1e4,  # the ratio is clipped to [0, this]
      lecam_weight=0.001,  # LeCAM regularisation of the discriminator; 0 = off
      lecam_ema_decay=0.999,  # EMAs of the mean real / fake logits that LeCAM anchors to
      lr=2e-4,  # the discriminator's AdamW uses config.optimizer but this peak learning rate
  ))
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # params replicated; batch over data × fsdp
  return c


# `configs/magvit2.py:size=official`: the released model's scale (SPEC §8); the data must be given.
OFFICIAL_TRAINING = {
    "data.source": "", "data.eval_source": "", "data.resolution": 256,
    "train.steps": 500_000, "train.batch_size": 256, "train.ema_decay": 0.999, "train.log_every": 100,
    "train.checkpoint_every": 5_000, "train.sample_every": 5_000, "train.eval_every": 0,
    "optimizer.lr": 1e-4, "optimizer.warmup_steps": 5_000, "optimizer.final_lr_fraction": 0.0,
    "disc.enabled": True, "disc.start_step": 20_000,
}


def training_config(size: str = "tiny") -> ConfigDict:
  """`magvit_config(size)` with the training scale of that size (what configs/magvit2.py returns)."""
  c = magvit_config(size)
  if size == "official":
    for dotted, value in OFFICIAL_TRAINING.items():
      parent, leaf = dotted.split(".")
      c[parent][leaf] = value
  return c


def codebook_size(config) -> int:
  return 2 ** int(config.codebook_bits)


def downsample_factor(config) -> int:
  return 2 ** (len(config.encoder.ch_mult) - 1)


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
    _check(config[name] in config_base.DTYPES, f"config.{name}={config[name]!r} is not one of {config_base.DTYPES}")
  _check(config.precision in PRECISIONS, f"config.precision={config.precision!r} is not one of {PRECISIONS}")
  return config


DISC_LOSSES = ("hinge", "non_saturating")
DISC_NORMS = ("group", "none")


def validate_training(config) -> ConfigDict:
  """validate_magvit plus the training blocks; raises ConfigError naming the field."""
  validate_magvit(config)
  for block in ("data", "train", "optimizer", "loss", "disc", "mesh"):
    _check(block in config, f"config.{block} is missing: build the config with magvit_config()")
  t, o, loss, d = config.train, config.optimizer, config.loss, config.disc
  for name in ("steps", "batch_size", "log_every", "num_samples"):
    _check(t[name] > 0, f"config.train.{name}={t[name]} must be positive")
  for name in ("checkpoint_every", "sample_every", "eval_every"):
    _check(t[name] >= 0, f"config.train.{name}={t[name]} must be >= 0")
  _check(t.keep_checkpoints >= 1, f"config.train.keep_checkpoints={t.keep_checkpoints} must be >= 1 (0 would "
                                  "delete every checkpoint, the previous run's included)")
  _check(0 <= t.ema_decay < 1, f"config.train.ema_decay={t.ema_decay} must be in [0, 1)")
  _check(o.lr > 0, f"config.optimizer.lr={o.lr} must be positive")
  _check(o.warmup_steps >= 0, f"config.optimizer.warmup_steps={o.warmup_steps} must be >= 0")
  _check(o.weight_decay_mask in ("clean", "official"),
         f"config.optimizer.weight_decay_mask={o.weight_decay_mask!r} is not 'clean' or 'official'")
  for name in ("l1_weight", "l2_weight", "perceptual_weight"):
    _check(loss[name] >= 0, f"config.loss.{name}={loss[name]} must be >= 0")
  _check(loss.perceptual_weight == 0 or loss.perceptual_weights,
         f"config.loss.perceptual_weight={loss.perceptual_weight} needs config.loss.perceptual_weights (a .npz "
         "of feature-network weights; none ship with showo_jax)")
  _check(d.loss in DISC_LOSSES, f"config.disc.loss={d.loss!r} is not one of {DISC_LOSSES}")
  _check(d.norm in DISC_NORMS, f"config.disc.norm={d.norm!r} is not one of {DISC_NORMS}")
  _check(d.ch > 0 and d.num_layers > 0, f"config.disc.ch={d.ch} and config.disc.num_layers={d.num_layers} "
         "must be positive")
  _check(d.norm != "group" or d.ch % min(config.norm_groups, d.ch) == 0,
         f"config.disc.ch={d.ch} is not a multiple of config.norm_groups={config.norm_groups} (GroupNorm)")
  for name in ("start_step", "weight", "adaptive_weight_max", "lecam_weight", "lr"):
    _check(d[name] >= 0, f"config.disc.{name}={d[name]} must be >= 0")
  _check(0 <= d.lecam_ema_decay < 1, f"config.disc.lecam_ema_decay={d.lecam_ema_decay} must be in [0, 1)")
  factor = downsample_factor(config)
  res = config.data.resolution
  _check(res > 0 and res % factor == 0,
         f"config.data.resolution={res} must be a positive multiple of the downsampling factor {factor}")
  _check(bool(config.data.source), "config.data.source is empty: give an image folder, records:FOLDER, "
         "tfds:NAME[:SPLIT]@DIR or embedded:train")
  return config


# -- ConfigDict → the tokenizer's modules ---------------------------------------------------------------

def magvit_from_config(config) -> magvit.MagvitV2:
  """Builds the model of a `magvit_config` ConfigDict."""
  common = dict(resolution=int(config.resolution), z_channels=int(config.codebook_bits),
                norm_groups=int(config.norm_groups), norm_eps=float(config.norm_eps),
                dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype),
                precision=str(config.precision))

  def tower(cls, cfg, io_channels):
    return cls(ch=int(cfg.ch), ch_mult=tuple(cfg.ch_mult), num_res_blocks=tuple(cfg.num_res_blocks),
               attn_resolutions=tuple(cfg.attn_resolutions), io_channels=int(io_channels), **common)

  return magvit.MagvitV2(encoder=tower(magvit.MagvitEncoder, config.encoder, config.in_channels),
                         decoder=tower(magvit.MagvitDecoder, config.decoder, config.out_channels))


def discriminator_from_config(config) -> discriminator.PatchDiscriminator:
  """The discriminator of a tokenizer config's `disc` block (add_training_fields)."""
  d = config.disc
  return discriminator.PatchDiscriminator(ch=int(d.ch), num_layers=int(d.num_layers), norm=str(d.norm),
                                          norm_groups=int(config.norm_groups), dtype=jnp.dtype(config.dtype),
                                          param_dtype=jnp.dtype(config.param_dtype))
