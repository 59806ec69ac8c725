"""Analytic FLOP count of a Show-o train step: the MFU numerator (the denominator is common/peak.py).

Matmul FLOPs, 2 per multiply-add; a train step is forward + backward ≈ 3 × forward (recomputation, by remat or
by an attention kernel's backward pass, is not counted). Attention counts the (query, key) score pairs that the
configured kernel computes, per head of one forward pass (`score_pairs`):
  xla, cudnn  every pair, L²: the mask is applied to dense scores.
  blockwise   every key for every query block, L' × L (L' the length padded to the block): it skips nothing.
  flash       exact block counting: each query block computes whole key blocks, from the block of its rows'
              lowest `start` to that of their highest `end` (flash_attention._key_blocks), at the model's
              `attention_block` cut to the sequence, over the padded length. Counted on one row of each task's
              mask (omni_mask.omni_spans): lm and mmu spans do not depend on pads, so those are exact; the t2i row
              has no pads, the most its text rows can reach (pads only move their `start` later).
"""

import numpy as np

from showo_jax.config import showo as showo_config
from showo_jax.models import omni_mask

_TASK_ROWS = (("t2i", omni_mask.TASK_T2I, "batch_t2i"), ("lm", omni_mask.TASK_LM, "batch_lm"),
              ("mmu", omni_mask.TASK_MMU, "batch_mmu"))


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def flash_score_pairs(spans: omni_mask.Spans, block: int) -> np.ndarray:
  """int [B]: the (query, key) pairs the flash kernel computes for each row of the batch, per head: the whole
  key blocks each query block visits, padded rows included (as models/flash_attention.py pads and tiles)."""
  start, end = np.asarray(spans.start, np.int64), np.asarray(spans.end, np.int64)
  b, lq = start.shape
  lk = spans.key_pad.shape[1]
  bq, bk = min(block, _round_up(lq, 8)), min(block, _round_up(lk, 8))
  lq_pad, lk_pad = _round_up(lq, bq), _round_up(lk, bk)
  own = np.broadcast_to(np.minimum(np.arange(lq, lq_pad), lk_pad - 1), (b, lq_pad - lq))  # a padded row: itself
  start, end = np.concatenate([start, own], axis=1), np.concatenate([end, own], axis=1)
  lo = start.reshape(b, -1, bq).min(axis=2) // bk
  hi = end.reshape(b, -1, bq).max(axis=2) // bk + 1
  return (hi - lo).sum(axis=1) * bq * bk


def task_ids(config) -> dict:
  """{task name: int [1, L] ids}: one unpadded training row of each task, laid out as data/prompting.py does
  (t2i: <|t2i|>, T text, <|soi|>, N image, <|eoi|>; mmu: <|mmu|>, <|soi|>, N image, <|eoi|>, T text; lm: L text)."""
  layout = showo_config.vocab_layout(config)
  t, n = config.data.max_text_len, config.data.num_image_tokens
  text, image = [layout.bos_id], [layout.image_offset]
  image_block = [layout.soi_id] + image * n + [layout.eoi_id]
  rows = {"t2i": [layout.t2i_id] + text * t + image_block, "mmu": [layout.mmu_id] + image_block + text * t,
          "lm": text * showo_config.seq_len(config)}
  return {name: np.array([ids], np.int32) for name, ids in rows.items()}


def score_pairs(config) -> dict:
  """{task name: (query, key) score pairs per head of one forward over one row}, as the module docstring says."""
  m = config.model
  length = showo_config.seq_len(config)
  impl, block = m.get("attention_impl", "xla"), int(m.get("attention_block", 128))
  if impl == "blockwise":
    return {name: _round_up(length, min(block, _round_up(length, 8))) * length for name, _, _ in _TASK_ROWS}
  if impl != "flash":
    return {name: length * length for name, _, _ in _TASK_ROWS}
  layout = showo_config.vocab_layout(config)
  ids = task_ids(config)
  return {name: int(flash_score_pairs(omni_mask.omni_spans(ids[name], np.array([task]), layout), block)[0])
          for name, task, _ in _TASK_ROWS}


def forward_flops_per_sequence(config, seq_len: int, pairs=None) -> float:
  """Matmul FLOPs of one forward pass over one sequence of `seq_len` tokens whose attention computes `pairs`
  score pairs per head (None: all seq_len², the "xla" kernel)."""
  m = config.model
  e, f, l = m.hidden_size, m.intermediate_size, m.num_layers
  d = showo_config.head_dim(m)
  q_out, kv_out = m.num_heads * d, m.num_kv_heads * d
  mlp = (3 if m.family == "llama" else 2) * e * f
  per_token_params = l * (e * q_out + 2 * e * kv_out + q_out * e + mlp) + e * m.vocab_size  # + lm head
  per_token_params += m.get("image_conv", 0) ** 2 * e * e  # the image-grid conv runs at every position, then masks
  pairs = seq_len * seq_len if pairs is None else pairs
  attention = l * 2 * pairs * q_out  # q·kᵀ and p·v: 2·D multiply-adds per pair and head
  return 2.0 * (seq_len * per_token_params + attention)


def train_flops_per_step(config) -> float:
  """Forward + backward (≈ 3× forward) over the global batch, each task's rows with that task's attention."""
  length = showo_config.seq_len(config)
  pairs = score_pairs(config)
  return 3.0 * sum(config.train[rows] * forward_flops_per_sequence(config, length, pairs[name])
                   for name, _, rows in _TASK_ROWS)
