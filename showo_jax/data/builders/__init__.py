"""Dataset builders: each source the paper's recipe trains on → an ArrayRecord folder the pipelines read.

  text      RefinedWeb-style parquet / JSONL          → lm records  {"text"}
  imagenet  tfds imagenet2012 manual layout or tree   → t2i records {"image_tokens", "caption", "label"}
  pairs     webdataset tars, JSONL manifest, folder   → t2i / mmu records {"image_tokens", "caption"}
  llava     LLaVA-Pretrain / v1.5-mix conversations   → mmu records {"image_tokens", "conversation", "id"}
  jsonl     your own images: caption and/or LLaVA-style conversation lines → {"image_tokens", "caption" and/or
            "conversation", "id"} (fine-tuning)

One module per source defines a `Source` (random access: `len`, `load(i)` → (uint8 image or None, fields),
raising `records.SkipExample` for bad input) and its `plan()`; `build` runs it through an image encoder (the
pre-tokenizer's `Encoder`, tokenizer/pretokenize.py, passed in) and the resumable, per-process sharded writer
(data/sharded_writer.py). The CLI is `python -m showo_jax.build_dataset`.
"""

import importlib

from showo_jax.data import sharded_writer

KINDS = ("text", "imagenet", "pairs", "llava", "jsonl")


def source_module(kind: str):
  if kind not in KINDS:
    raise ValueError(f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")
  return importlib.import_module(f"showo_jax.data.builders.{kind}")


def build(kind: str, inputs, output: str, *, encoder=None, checkpoint: str = "", records_per_shard: int = 10_000,
          process_index: int = None, process_count: int = None, **options) -> dict:
  """Builds `output` from `inputs` (a list of paths); returns the writer's stats (sharded_writer.write_sharded).

  Args:
    kind: one of KINDS.
    inputs: the source's files / folders (see its module).
    output: the record folder.
    encoder: the image tokenizer's batched encoder (tokenizer/pretokenize.py `Encoder`: images of its
      `resolution` → codes); needed by every kind but text.
    checkpoint: where the encoder's weights came from, recorded in the folder's plan.
    records_per_shard: inputs per shard (the unit of resumption and of the split over processes).
    process_index, process_count: this process's share; default jax's.
    **options: the source's own options (class_names, split, image_root, field).
  """
  module = source_module(kind)
  meta, given = {}, encoder is not None
  if module.Source.needs_images:
    if encoder is None:
      raise ValueError(f"{kind}: images are pre-tokenized: give the image tokenizer (--tokenizer-checkpoint)")
    grid = encoder.resolution // encoder.factor
    meta = dict(codebook_bits=encoder.codebook_bits, token_grid=[grid, grid],
                token_dtype=encoder.token_dtype.__name__)
    source = module.Source(list(inputs), encoder.resolution, **options)
  else:
    encoder = None
    source = module.Source(list(inputs), **options)
  plan = dict(source.plan(), checkpoint=checkpoint or ("<in memory>" if given else ""))
  return sharded_writer.write_sharded(source, output, plan, encoder=encoder, records_per_shard=records_per_shard,
                                      meta=meta, process_index=process_index, process_count=process_count,
                                      desc=f"build {kind}")
