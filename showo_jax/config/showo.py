"""Show-o's config: ml_collections ConfigDicts built from size presets, `validate`, and the conversions from a
ConfigDict to the dataclasses the models take (`vocab_layout`, `transformer_config`, `loss_settings`).

`configs/*.py` files are thin `get_config(arg)` wrappers over `showo_config` here, so that library code
(checkpoint import, tests) can build the same configs without the top-level `configs/` folder.
Command-line overrides come from absl's `config_flags` (`--config configs/showo.py:size=tiny
--config.model.num_layers=4`), see config/base.py `define_config_flag`.
"""

import math

import jax
import ml_collections

from showo_jax.common import axes
from showo_jax.config import base as config_base
from showo_jax.models import attention
from showo_jax.models import layers
from showo_jax.models import mask_schedule
from showo_jax.models import transformer
from showo_jax.models import vocab as vocab_lib

ConfigDict = ml_collections.ConfigDict
_check = config_base.check

# Backbone shapes. `phi-1.5` is what the official checkpoints use (SPEC §1.1); `tiny`/`tiny-llama` are for CPU.
MODEL_PRESETS = {
    "tiny": dict(family="phi", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=128,
                 rotary_fraction=0.5),
    "tiny-llama": dict(family="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=160, rotary_fraction=1.0, norm_eps=1e-6, rope_theta=500000.0),
    "phi-1.5": dict(family="phi", hidden_size=2048, num_layers=24, num_heads=32, num_kv_heads=32,
                    intermediate_size=8192, rotary_fraction=0.5),
}

# Text/image vocabulary per preset: the tiny ones mirror the parity models' layout (SPEC §2).
VOCAB_PRESETS = {
    "tiny": dict(llm_vocab_size=100, codebook_size=64, bos_id=99, eos_id=99),
    "tiny-llama": dict(llm_vocab_size=100, codebook_size=64, bos_id=99, eos_id=99),
    "phi-1.5": dict(llm_vocab_size=50295, codebook_size=8192, bos_id=50256, eos_id=50256),
}

FAMILIES = ("phi", "llama")
MATMUL_PRECISIONS = tuple(layers.MATMUL_PRECISIONS)  # ("default", "high", "highest")
REMAT_POLICIES = ("none", "full", "save_dots", "save_qkv_proj")
ATTENTION_IMPLS = attention.IMPLEMENTATIONS  # ("xla", "flash", "cudnn")


def model_config(size: str) -> ConfigDict:
  """The `model` block of a preset: backbone shapes, vocabulary, numerics and memory options."""
  if size not in MODEL_PRESETS:
    raise config_base.ConfigError(f"unknown model size {size!r}; known: {', '.join(MODEL_PRESETS)}")
  m = ConfigDict(dict(
      family="phi",
      hidden_size=0, num_layers=0, num_heads=0, num_kv_heads=0, intermediate_size=0,
      head_dim=0,  # 0 = hidden_size // num_heads
      rotary_fraction=0.5,  # phi: partial_rotary_factor; rotary_dim = int(fraction * head_dim)
      rope_theta=10000.0,
      norm_eps=1e-5,
      qk_norm=True,  # forced on by the official code (SPEC §1.2)
      vocab_size=0,  # embedding/head rows; 0 = exactly the vocabulary layout's size
      init_std=0.02,
      dropout_rate=0.0,  # training only: on the embeddings and on each residual branch (phi's embd/resid_pdrop)
      image_embedding_init="normal",  # or "codebook_bits": image-code rows of the embedding and the head
      # start linear in the code's LFQ bits (models/vocab.py codebook_bit_rows); scratch training only
      # 0 (official) or an odd k: a k×k convolution over each image block's token grid (square, of
      # data.num_image_tokens tokens) added to its embeddings (models/transformer.py ImageConv), a locality
      # prior for small data. Not in the official model, so such checkpoints do not export.
      image_conv=0,
      dtype="float32",  # of every matmul operand (weights and activations); products accumulate in float32
      param_dtype="float32",
      # The residual stream and the projections' outputs: "auto" = `dtype` on GPU/TPU, float32 on CPU (bf16
      # elementwise work is slower there, measured in docs/benchmarks.md). Norm statistics, softmax, logits, losses
      # are float32 whatever this says.
      activation_dtype="auto",
      # "xla" (reference; dense [B, L, L] mask), "flash" (Pallas kernel over the compact mask, GPU/TPU; on CPU
      # it runs in Pallas' interpreter, for tests), "blockwise" (the same algorithm in XLA, any backend),
      # "cudnn" (GPU, bf16/fp16: jax.nn.dot_product_attention).
      attention_impl="xla",
      attention_block=128,  # flash / blockwise: query/key tile
      # Precision of every backbone product, forward and backward (the tokenizer's `precision` is the same
      # setting): "default" lets GPUs use TF32 and TPUs one bf16 pass; "highest" is full float32, as the official
      # float32 PyTorch inference. No effect on CPU. The interop API (load_official_showo) uses "highest".
      matmul_precision="default",
      scan_layers=False,
      remat_policy="none",
      # The longest sequence generation may build (prompt + new tokens): the LLM's context, 2048 for Phi-1.5.
      # Only `sample` reads it (RoPE has no position table to outgrow).
      max_position_embeddings=2048,
      # LoRA adapters (models/lora.py): rank 0 = none; the update is (alpha / rank) · A · B on each target
      # projection: q, k, v, o and the MLP's (phi: fc1, fc2; llama: gate, up, down), comma-separated.
      lora=ConfigDict(dict(rank=0, alpha=16.0, dropout=0.0, targets="q,k,v,o")),
  ))
  m.update(MODEL_PRESETS[size])
  m.vocab = ConfigDict(VOCAB_PRESETS[size])
  m.vocab_size = vocab_lib.VocabLayout(**m.vocab).vocab_size
  return m


def showo_config(size: str = "tiny", res: int = 256) -> ConfigDict:
  """A complete Show-o config for a model preset and image resolution."""
  c = ConfigDict()
  c.model = model_config(size)
  tiny = size.startswith("tiny")
  c.data = ConfigDict(dict(
      resolution=32 if tiny else res,
      downsample=4 if tiny else 16,  # image tokenizer's downsampling factor
      num_image_tokens=64 if tiny else (res // 16) ** 2,  # N: 256 @256px, 1024 @512px
      max_text_len=16 if tiny else 128,  # T: text budget (dataset.preprocessing.max_seq_length)
      source="records",  # "records" (the *_records below) or "embedded" (bundled MNIST + text)
      t2i_records="", mmu_records="", lm_records="",  # record folders or tfds:NAME:SPLIT@DIR specs, comma-separated
      t2i_weights="", mmu_weights="", lm_weights="",  # mixture weights of those sources (default equal)
      lm_window_chars=8000,  # official: a random 8000-character window of each document
      embedded_mmu_copies=1,  # embedded source: MMU trains on the digits plus K - 1 randomly distorted copies
      # embedded source: "" = the default tasks; "sideways" = the fine-tuning demo's new task (digits turned 90°,
      # "… on its side", "Is this digit on its side?") mixed with the default tasks (configs/tiny_finetune.py)
      embedded_task="",
      mmu_image_token_noise=0.0,  # MMU inputs: share of image tokens replaced by random codes (regularisation)
  ))
  c.text_tokenizer = ConfigDict(dict(path=""))  # local tokenizer.json (never a hub download)
  c.tokenizer = ConfigDict(dict(checkpoint=""))  # the image tokenizer (MAGVIT-v2) checkpoint folder
  c.loss = ConfigDict(dict(
      t2i_coeff=1.0, lm_coeff=0.1, mmu_coeff=1.0,
      mask_schedule="cosine",  # cosine | linear | pow<k> | sigmoid
      min_masking_rate=0.0,
      cond_dropout_prob=0.1,
      # Official quirk (SPEC §0.4): <|soi|>/<|eoi|> are their own t2i targets. False = masked image tokens only.
      t2i_boundary_targets=True,
  ))
  c.train = ConfigDict(dict(
      steps=1000, seed=0,
      batch_t2i=4, batch_lm=2, batch_mmu=2,  # global rows of each task per step
      grad_accum_steps=1,
      log_every=10, checkpoint_every=500, keep_checkpoints=3, sample_every=0,  # 0 = never
      # How this model is sampled: in-training samples, and the defaults of `sample` and `evaluate` (flags
      # override): MaskGIT steps, CFG weight, Gumbel temperature of the confidences, the inference mask schedule.
      sample_steps=12, sample_guidance=0.0, sample_temperature=1.0, sample_schedule="cosine",
      ema_decay=0.0,  # >0: keep ema ← d·ema + (1 − d)·params (d warms up as (1+t)/(10+t)); samples, evaluation
      # and init_from/export of the checkpoint use the EMA params. 0 = none
      stop_after=0,  # >0: stop (with a checkpoint) after this many steps in this process; rerun to continue
      init_from="",  # params only: a Show-o checkpoint (ours or official) to start from
      # What trains: "all", "lora" (the adapters of config.model.lora), or comma-separated path patterns, e.g.
      # "lora,embed" (training/trainable.py); the rest is frozen (no gradient, no optimizer state).
      trainable="all",
      peak_tflops_per_device=0.0,  # per chip, for MFU; 0 = common/peak.py's (datasheet on known GPUs, else measured)
      distributed=False,  # jax.distributed.initialize() (multi-host)
  ))
  c.optimizer = ConfigDict(dict(
      lr=1e-4, warmup_steps=100, final_lr_fraction=0.0, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.01, weight_decay_mask="clean",  # "official": decay everything but biases (SPEC §0.11)
      grad_clip_norm=1.0,
  ))
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.logical_axis_rules = [[name, list(m) if isinstance(m, tuple) else m] for name, m in axes.DEFAULT_RULES]
  return c


def seq_len(config) -> int:
  """Length of every t2i / mmu / lm training sequence: T + N + 3 (SPEC §3)."""
  return config.data.max_text_len + config.data.num_image_tokens + 3


def head_dim(model) -> int:
  return model.head_dim or model.hidden_size // max(model.num_heads, 1)


def rotary_dim(model) -> int:
  return int(model.rotary_fraction * head_dim(model))


def validate(config) -> ConfigDict:
  """Checks every cross-field constraint once, before any device work. Raises ConfigError naming the field."""
  m = config.model
  _check(m.family in FAMILIES, f"config.model.family={m.family!r} is not one of {FAMILIES}")
  for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
    _check(int(m[name]) > 0, f"config.model.{name}={m[name]} must be positive")
  _check(m.head_dim > 0 or m.hidden_size % m.num_heads == 0,
         f"config.model.num_heads={m.num_heads} does not divide config.model.hidden_size={m.hidden_size}")
  _check(m.num_heads % m.num_kv_heads == 0,
         f"config.model.num_kv_heads={m.num_kv_heads} does not divide config.model.num_heads={m.num_heads}")
  rd = rotary_dim(m)
  _check(0 < rd <= head_dim(m) and rd % 2 == 0,
         f"config.model.rotary_fraction={m.rotary_fraction} gives rotary_dim={rd}: must be even, in (0, head_dim]")
  for name in ("dtype", "param_dtype"):
    _check(m[name] in config_base.DTYPES, f"config.model.{name}={m[name]!r} is not one of {config_base.DTYPES}")
  _check(m.get("image_embedding_init", "normal") in ("normal", "codebook_bits"),
         f"config.model.image_embedding_init={m.get('image_embedding_init')!r} is not 'normal' or 'codebook_bits'")
  conv = m.get("image_conv", 0)
  _check(isinstance(conv, int) and conv >= 0 and (conv == 0 or conv % 2 == 1),
         f"config.model.image_conv={conv!r} must be 0 (off) or an odd kernel size")
  if conv:
    side = math.isqrt(int(config.data.num_image_tokens))
    _check(side * side == int(config.data.num_image_tokens),
           f"config.model.image_conv={conv} needs a square token grid; config.data.num_image_tokens="
           f"{config.data.num_image_tokens} is not a square")
  _check(0 <= m.get("dropout_rate", 0.0) < 1, f"config.model.dropout_rate={m.get('dropout_rate')} must be in [0, 1)")
  _check(m.get("matmul_precision", "default") in MATMUL_PRECISIONS,
         f"config.model.matmul_precision={m.get('matmul_precision')!r} is not one of {MATMUL_PRECISIONS}")
  _check(m.remat_policy in REMAT_POLICIES,
         f"config.model.remat_policy={m.remat_policy!r} is not one of {REMAT_POLICIES}")
  _check(m.get("activation_dtype", "auto") in ("auto",) + config_base.DTYPES,
         f"config.model.activation_dtype={m.get('activation_dtype')!r} is not 'auto' or one of {config_base.DTYPES}")
  impl = m.get("attention_impl", "xla")
  _check(impl != "splash", "config.model.attention_impl='splash': TPU splash attention takes fixed (numpy) masks "
                           "and intersecting segment ids, which cannot express a per-batch omni-attention mask; "
                           "use 'flash' (the Pallas kernel, TPU and GPU)")
  _check(impl in ATTENTION_IMPLS, f"config.model.attention_impl={impl!r} is not one of {ATTENTION_IMPLS}")
  _check(impl != "cudnn" or m.dtype in ("bfloat16", "float16"),
         f"config.model.attention_impl='cudnn' needs config.model.dtype bfloat16 or float16, got {m.dtype!r}")
  lora_cfg = m.get("lora", None)
  if lora_cfg is not None and int(lora_cfg.rank) != 0:
    _check(int(lora_cfg.rank) > 0, f"config.model.lora.rank={lora_cfg.rank} must be >= 0 (0 = no adapters)")
    known = transformer.LORA_TARGETS.get(m.family, {})
    targets = lora_targets(m)
    bad = [t for t in targets if t not in known]
    _check(targets and not bad, f"config.model.lora.targets={lora_cfg.targets!r}: {', '.join(bad) or 'empty'} "
                                f"not a projection of the {m.family} family; use any of {', '.join(known)}")
    _check(0 <= float(lora_cfg.dropout) < 1, f"config.model.lora.dropout={lora_cfg.dropout} must be in [0, 1)")
    _check(float(lora_cfg.alpha) > 0, f"config.model.lora.alpha={lora_cfg.alpha} must be positive")
  block = int(m.get("attention_block", 128))
  _check(block >= 8 and block % 8 == 0, f"config.model.attention_block={block} must be a positive multiple of 8")
  try:
    layout = vocab_layout(config)
  except ValueError as e:
    raise config_base.ConfigError(f"config.model.vocab: {e}") from None
  _check(m.vocab_size >= layout.vocab_size,
         f"config.model.vocab_size={m.vocab_size} is smaller than the vocabulary layout ({layout.vocab_size} = "
         f"{layout.llm_vocab_size} text + 10 special + {layout.codebook_size} image + [MASK])")
  d = config.data
  for name in ("num_image_tokens", "max_text_len"):
    _check(d[name] > 0, f"config.data.{name}={d[name]} must be positive")
  _check(d.max_text_len >= 3, f"config.data.max_text_len={d.max_text_len} must leave room for BOS, text and EOS")
  _check(d.get("embedded_task", "") in ("", "sideways"),
         f"config.data.embedded_task={d.get('embedded_task')!r} is not one of '', 'sideways'")
  loss = config.loss
  for name in ("t2i_coeff", "lm_coeff", "mmu_coeff", "min_masking_rate", "cond_dropout_prob"):
    _check(loss[name] >= 0, f"config.loss.{name}={loss[name]} must be >= 0")
  _check(loss.cond_dropout_prob <= 1 and loss.min_masking_rate <= 1,
         "config.loss.cond_dropout_prob and config.loss.min_masking_rate must be <= 1")
  if "train" in config:
    t = config.train
    for name in ("steps", "grad_accum_steps", "log_every"):
      _check(t[name] > 0, f"config.train.{name}={t[name]} must be positive")
    _check(t.keep_checkpoints >= 1, f"config.train.keep_checkpoints={t.keep_checkpoints} must be >= 1 (0 would "
                                    "delete every checkpoint, the previous run's included)")
    for name in ("batch_t2i", "batch_lm", "batch_mmu", "checkpoint_every", "sample_every"):
      _check(t[name] >= 0, f"config.train.{name}={t[name]} must be >= 0")
    _check(0 <= t.get("ema_decay", 0.0) < 1, f"config.train.ema_decay={t.get('ema_decay')} must be in [0, 1)")
    _check(t.batch_t2i + t.batch_lm + t.batch_mmu > 0, "config.train: all task batch sizes are 0")
    for name in ("batch_t2i", "batch_lm", "batch_mmu"):
      _check(t[name] % t.grad_accum_steps == 0,
             f"config.train.{name}={t[name]} is not divisible by config.train.grad_accum_steps={t.grad_accum_steps}")
    _check(config.optimizer.weight_decay_mask in ("clean", "official"),
           f"config.optimizer.weight_decay_mask={config.optimizer.weight_decay_mask!r} is not 'clean' or 'official'")
    _check(config.optimizer.lr > 0, f"config.optimizer.lr={config.optimizer.lr} must be positive")
  for field, name in (("loss.mask_schedule", loss.mask_schedule),
                      ("train.sample_schedule", config.train.get("sample_schedule", "cosine"))):
    try:
      mask_schedule.get(str(name))
    except ValueError as e:
      raise config_base.ConfigError(f"config.{field}: {e}") from None
  t = config.train
  _check(int(t.get("sample_steps", 12)) >= 1, f"config.train.sample_steps={t.get('sample_steps')} must be >= 1")
  _check(float(t.get("sample_guidance", 0.0)) >= 0,
         f"config.train.sample_guidance={t.get('sample_guidance')} must be >= 0")
  _check(float(t.get("sample_temperature", 1.0)) >= 0,
         f"config.train.sample_temperature={t.get('sample_temperature')} must be >= 0")
  return config


# -- ConfigDict → the hyperparameter dataclasses the models take ------------------------------------------

def vocab_layout(config) -> vocab_lib.VocabLayout:
  """The token-id layout of `config.model.vocab`."""
  v = config.model.vocab
  return vocab_lib.VocabLayout(llm_vocab_size=v.llm_vocab_size, codebook_size=v.codebook_size, bos_id=v.bos_id,
                               eos_id=v.eos_id)


def transformer_config(config) -> transformer.TransformerConfig:
  """The backbone hyperparameters of `config.model`."""
  m = config.model
  return transformer.TransformerConfig(
      family=m.family, vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
      num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=head_dim(m),
      intermediate_size=m.intermediate_size, rotary_dim=rotary_dim(m), rope_theta=float(m.rope_theta),
      norm_eps=float(m.norm_eps), qk_norm=bool(m.qk_norm), init_std=float(m.init_std), dtype=m.dtype,
      param_dtype=m.param_dtype, scan_layers=bool(m.scan_layers), remat_policy=m.remat_policy,
      dropout_rate=float(m.get("dropout_rate", 0.0)),
      # Configs saved before the field existed ran at jax's default.
      matmul_precision=str(m.get("matmul_precision", "default")),
      activations=activation_dtype(m), attention_impl=str(m.get("attention_impl", "xla")),
      attention_block=int(m.get("attention_block", 128)), **_lora_fields(m), **_image_grid_fields(config))


def _image_grid_fields(config) -> dict:
  conv = int(config.model.get("image_conv", 0))  # configs saved before the field existed: none
  if not conv:
    return {}
  layout = vocab_layout(config)
  return dict(image_conv=conv, image_grid=math.isqrt(int(config.data.num_image_tokens)), soi_id=layout.soi_id,
              eoi_id=layout.eoi_id)


def lora_targets(model) -> tuple:
  """`model.lora.targets` as a tuple of short names (q, k, v, o, fc1, ...)."""
  return tuple(t.strip() for t in str(model.lora.targets).split(",") if t.strip())


def _lora_fields(model) -> dict:
  lora_cfg = model.get("lora", None)  # configs saved before LoRA existed have no adapters
  if lora_cfg is None or int(lora_cfg.rank) == 0:
    return {}
  return dict(lora_rank=int(lora_cfg.rank), lora_alpha=float(lora_cfg.alpha), lora_dropout=float(lora_cfg.dropout),
              lora_targets=lora_targets(model))


def activation_dtype(model) -> str:
  """`model.activation_dtype` with "auto" resolved for the default backend (configs saved before the field
  existed kept float32 activations)."""
  name = str(model.get("activation_dtype", "float32"))
  if name != "auto":
    return name
  return "float32" if jax.default_backend() == "cpu" else model.dtype


def loss_settings(config) -> dict:
  """Keyword arguments of `models.losses.showo_loss` from `config.loss` and the vocabulary."""
  layout = vocab_layout(config)
  c = config.loss
  return dict(soi_id=layout.soi_id, eoi_id=layout.eoi_id, t2i_coeff=c.t2i_coeff, lm_coeff=c.lm_coeff,
              mmu_coeff=c.mmu_coeff, boundary_targets=c.t2i_boundary_targets)
