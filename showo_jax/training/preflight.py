"""Checks that need no data, run before any data preparation or training: a bad mesh, batch, path or tokenizer is
reported in one line within seconds, not after minutes of tokenizer training and pre-tokenizing.

The mesh, the batch divisibility and the parameter shardings are checked by building the `Run` (trainer.py);
this module adds what lies outside the model: the tokenizer trainer's own mesh and batch (embedded default),
the files and folders the config names, and whether pre-tokenized records and an image tokenizer fit the
model's vocabulary and image-token count.
"""

import math

import jax
import ml_collections
import numpy as np

from showo_jax.common import checkpointing
from showo_jax.common import paths
from showo_jax.common import sharding
from showo_jax.config import base as config_base
from showo_jax.config import showo as showo_config
from showo_jax.data import records
from showo_jax.models import transformer
from showo_jax.tokenizer import config as tokenizer_config
from showo_jax.tokenizer import trainer as tokenizer_trainer
from showo_jax.training import train_step
from showo_jax.training import trainable


def _require(path: str, field: str):
  if path and not paths.exists(path):
    raise FileNotFoundError(f"{field}={path}: no such file or folder")


def _check_records(spec: str, field: str, config, kind: str = "image"):
  """A record folder (not a tfds spec) must be complete and non-empty, hold the kind of record the task reads
  (`image`: image tokens, `captioned`: image tokens and a caption on every record, `text`: a text field) and,
  for images, the model's code count, token count and code range (read from meta.json and the first record)."""
  if spec.startswith("tfds:"):
    return
  _require(spec, field)
  meta = records.read_meta(spec)
  if not int(meta.get("num_records", 0)):
    raise config_base.ConfigError(f"{field}={spec} holds no records")
  first = records.open_source(spec)[0]
  if first is None:
    raise config_base.ConfigError(f"{field}={spec}: its first record is unreadable (corrupt folder?)")
  counts = meta.get("field_counts", {})
  if kind == "captioned" and counts and counts.get("caption", 0) < int(meta["num_records"]):
    raise config_base.ConfigError(
        f"{field}={spec}: {int(meta['num_records']) - counts.get('caption', 0)} of its {meta['num_records']} "
        "records have no caption, which text-to-image needs (build the caption lines into a folder of their own)")
  if kind == "text":
    if "text" not in first:
      raise config_base.ConfigError(f"{field}={spec} holds records of fields {sorted(first)}, not text records "
                                    "(a 'text' field)")
    return
  if "image_tokens" not in first:
    raise config_base.ConfigError(f"{field}={spec} holds records of fields {sorted(first)}, not image-token "
                                  "records (an 'image_tokens' field; text records go in config.data.lm_records)")
  bits, grid = meta.get("codebook_bits"), meta.get("token_grid")
  codes = config.model.vocab.codebook_size
  if bits is not None and 2 ** int(bits) != codes:
    raise config_base.ConfigError(f"{field}={spec} holds {2 ** int(bits)}-code image tokens but "
                                  f"config.model.vocab.codebook_size = {codes}")
  tokens = np.asarray(first["image_tokens"])
  count = math.prod(grid) if grid else tokens.size
  shown = f"{grid[0]}x{grid[1]} = {count}" if grid else str(count)
  if count != config.data.num_image_tokens:
    raise config_base.ConfigError(f"{field}={spec} holds {shown} image tokens per image but "
                                  f"config.data.num_image_tokens = {config.data.num_image_tokens} "
                                  "(built at another resolution?)")
  if tokens.size and (tokens.min() < 0 or tokens.max() >= codes):
    raise config_base.ConfigError(f"{field}={spec} holds image codes in [{tokens.min()}, {tokens.max()}], outside "
                                  f"the model's codebook [0, {codes})")


def _check_tokenizer_checkpoint(path: str, config):
  """One of our tokenizer checkpoints: its codes and tokens per image must match the model (official weights are
  checked when they load)."""
  folder = tokenizer_trainer.checkpoint_folder(path) if paths.exists(path) else None
  if folder is None:
    return
  ckpt = checkpointing.Checkpointer(folder, async_save=False)
  try:
    _, saved = ckpt.restore_newest_intact(lambda step: ml_collections.ConfigDict(ckpt.saved_config(step)))
  finally:
    ckpt.close()
  if saved is None:
    return
  codes, codes_wanted = 2 ** int(saved.codebook_bits), config.model.vocab.codebook_size
  if codes != codes_wanted:
    raise config_base.ConfigError(f"config.tokenizer.checkpoint={path} has {codes} codes but "
                                  f"config.model.vocab.codebook_size = {codes_wanted}")
  factor = tokenizer_config.downsample_factor(saved)
  tokens = (config.data.resolution // factor) ** 2
  if tokens != config.data.num_image_tokens:
    raise config_base.ConfigError(
        f"config.tokenizer.checkpoint={path} makes {tokens} tokens of a {config.data.resolution} px image "
        f"(downsampling {factor}) but config.data.num_image_tokens = {config.data.num_image_tokens}")


def _check_trainable(config):
  """config.train.trainable against the parameter paths (shapes only, no compute)."""
  spec = str(config.train.get("trainable", "all"))
  if spec.strip() in ("", "all"):
    return
  model = transformer.Transformer(showo_config.transformer_config(config))
  shapes = jax.eval_shape(lambda: train_step.init_params(jax.random.key(0), model, seq_len=8))
  trainable.trainable_paths(shapes, spec)  # raises ValueError naming the pattern


def check_before_work(config):
  """Raises (ConfigError, MeshError, FileNotFoundError) naming the first problem; returns None when all is well."""
  d = config.data
  _check_trainable(config)
  _require(config.train.get("init_from", ""), "config.train.init_from")
  _require(config.text_tokenizer.get("path", ""), "config.text_tokenizer.path")
  checkpoint = config.tokenizer.get("checkpoint", "")
  _require(checkpoint, "config.tokenizer.checkpoint")
  if checkpoint:
    _check_tokenizer_checkpoint(checkpoint, config)
  if d.source == "records":
    for task in ("t2i", "mmu", "lm"):
      for spec in filter(None, str(d.get(f"{task}_records", "")).split(",")):
        kind = {"lm": "text", "t2i": "captioned"}.get(task, "image")
        _check_records(spec, f"config.data.{task}_records", config, kind)
  elif d.source == "embedded" and not checkpoint:
    magvit = config.tokenizer.magvit
    tokenizer_config.validate_training(magvit)
    mesh = sharding.make_mesh(magvit.mesh)
    sharding.check_batch(magvit.train.batch_size, mesh, "config.tokenizer.magvit.train.batch_size")
