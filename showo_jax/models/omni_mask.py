"""Omni-attention masks built from token ids (SPEC §4), in jax.numpy so they trace under `jax.jit`.

Every builder returns a boolean [B, L, L] "allowed" mask: True = the query (row) may attend to the key
(column). `additive_mask` turns it into the form added to attention scores; `to_allowed` converts any of the
official forms back. Inputs may be numpy or jax arrays; callers that want numpy use `np.asarray(result)`.

Rules per task (one row of the batch = one sample):
  t2i    `predict_next_mask(remove_pad=True)`: text causal over non-pad text; <|soi|>…<|eoi|> rows see the
         whole non-pad sequence (text and the image block, bidirectionally).
  lm     plain causal (what `predict_next_mask(remove_pad=False)` gives a text-only row; here also for rows
         that happen to hold <|soi|>/<|eoi|> ids, which the official lm batch never has).
  mmu    `mmu_mask`: causal, plus every row sees columns 0 … first <|eoi|> (bidirectional prefix).
  mixed  `mixed_mask`: causal, plus bidirectional inside each <|soi|>…<|eoi|> block; non-pad rows never see
         pad columns and pad rows see only themselves.
No row is ever fully blocked (each query sees at least itself).

Every one of these masks is also a `Spans`: per query row a key range [start, end] and whether the row skips
pad keys, plus per key whether it is a pad. `omni_spans` / `t2i_spans` build that O(L) form, which fused
attention kernels read instead of an [L, L] array (models/flash_attention.py); `expand` turns it back into
the boolean mask. The dense builders do not use the spans: both forms are checked against a reference written
position by position from SPEC (tests/numpy_reference.py `omni_allowed`) in tests/models/test_omni_mask.py.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.models import vocab as vocab_lib

TASK_T2I, TASK_LM, TASK_MMU, TASK_MIXED = 0, 1, 2, 3
TASKS = {"t2i": TASK_T2I, "lm": TASK_LM, "mmu": TASK_MMU, "mixed": TASK_MIXED}

Layout = vocab_lib.VocabLayout


def _ids(ids) -> jax.Array:
  ids = jnp.asarray(ids)
  if ids.ndim != 2:
    raise ValueError(f"token ids must be [B, L], got shape {ids.shape}")
  return ids


def _causal(length: int) -> jax.Array:
  return jnp.tril(jnp.ones((length, length), bool))  # [L, L]


def _in_image(ids: jax.Array, layout: Layout) -> jax.Array:
  """bool [B, L]: inside a <|soi|>…<|eoi|> block, both ends included (the official cumsum rule)."""
  soi = ids == layout.soi_id
  eoi = ids == layout.eoi_id
  opened = jnp.cumsum(soi, axis=1) > jnp.cumsum(eoi, axis=1)
  return opened | soi | eoi


def predict_next_mask(ids, layout: Layout, remove_pad: bool = True) -> jax.Array:
  """`create_attention_mask_predict_next` (SPEC §4.1): t2i (remove_pad=True) and lm (False) rows.

  Args:
    ids: [B, L] token ids.
    layout: the vocabulary.
    remove_pad: with pe = index of the last [PAD] of the row, text rows after pe lose columns 0…pe and image
      rows (<|soi|>…<|eoi|>) lose every pad column; pad rows stay causal.

  Returns:
    bool [B, L, L].
  """
  return _predict_next(_ids(ids), layout, remove_pad)


# Jitted cores: one compiled program per shape instead of one per eager op (layout is a frozen dataclass).
@functools.partial(jax.jit, static_argnums=(1, 2))
def _predict_next(ids: jax.Array, layout: Layout, remove_pad: bool) -> jax.Array:
  _, length = ids.shape
  pos = jnp.arange(length)
  in_image = _in_image(ids, layout)  # [B, L]
  text_rows = jnp.broadcast_to(_causal(length), (ids.shape[0], length, length))  # [B, L, L]
  image_rows = jnp.ones_like(text_rows)
  if remove_pad:
    is_pad = ids == layout.pad_id  # [B, L]
    last_pad = jnp.max(jnp.where(is_pad, pos, -1), axis=1)  # [B], -1 = no pad
    before = pos[None, :] <= last_pad[:, None]  # [B, L] columns 0…pe
    after = pos[None, :] > last_pad[:, None]  # [B, L] rows after pe
    text_rows = text_rows & ~(after[:, :, None] & before[:, None, :])
    image_rows = image_rows & ~is_pad[:, None, :]
  return jnp.where(in_image[:, :, None], image_rows, text_rows)


def mmu_mask(ids, layout: Layout) -> jax.Array:
  """`create_attention_mask_for_mmu` (SPEC §4.2), per sample: bool [B, L, L].

  Causal, plus columns 0…e allowed for every row, where e is the row's own first <|eoi|> (the official code
  uses sample 0's for the whole batch; the same thing for a uniform batch). Without <|eoi|> the row is causal.
  """
  return _mmu(_ids(ids), layout)


@functools.partial(jax.jit, static_argnums=1)
def _mmu(ids: jax.Array, layout: Layout) -> jax.Array:
  _, length = ids.shape
  pos = jnp.arange(length)
  is_eoi = ids == layout.eoi_id
  first_eoi = jnp.where(jnp.any(is_eoi, axis=1), jnp.argmax(is_eoi, axis=1), -1)  # [B]
  prefix = pos[None, :] <= first_eoi[:, None]  # [B, L] columns 0…e
  return _causal(length)[None] | prefix[:, None, :]


def mixed_mask(ids, layout: Layout) -> jax.Array:
  """Interleaved text/images: bool [B, L, L].

  Causal everywhere; inside each <|soi|>…<|eoi|> block all tokens see each other (and, causally, everything
  before the block): a row inside a block sees up to the first <|eoi|> at or after it. Non-pad rows never
  see pad columns; pad rows see only themselves, so padding placed anywhere changes nothing for real tokens.
  """
  return _mixed(_ids(ids), layout)


@functools.partial(jax.jit, static_argnums=1)
def _mixed(ids: jax.Array, layout: Layout) -> jax.Array:
  length = ids.shape[1]
  is_pad = ids == layout.pad_id
  is_eoi = (ids == layout.eoi_id).astype(jnp.int32)
  # A block row i sees a later key j iff no <|eoi|> lies in [i, j): the <|eoi|> counts before i and j agree.
  eoi_before = jnp.cumsum(is_eoi, axis=1) - is_eoi  # [B, L]
  same_block = eoi_before[:, :, None] == eoi_before[:, None, :]
  real_rows = (_causal(length)[None] | (_in_image(ids, layout)[:, :, None] & same_block)) & ~is_pad[:, None, :]
  return jnp.where(is_pad[:, :, None], jnp.eye(length, dtype=bool)[None], real_rows)


def omni_attention_mask(ids, task_ids, layout: Layout) -> jax.Array:
  """One mask for a batch whose rows have different tasks: bool [B, L, L].

  Args:
    ids: [B, L] token ids.
    task_ids: int [B] of TASK_T2I / TASK_LM / TASK_MMU / TASK_MIXED.
    layout: the vocabulary.
  """
  ids = _ids(ids)
  return _omni(ids, _task_ids(task_ids, ids), layout)


def _task_ids(task_ids, ids: jax.Array) -> jax.Array:
  """task_ids as int [B], refused if it does not have one known task per row of `ids`."""
  task_ids = jnp.asarray(task_ids).reshape(-1)
  if task_ids.shape[0] != ids.shape[0]:
    raise ValueError(f"task_ids has {task_ids.shape[0]} entries for {ids.shape[0]} sequences")
  if not isinstance(task_ids, jax.core.Tracer):  # values are only checkable outside jit
    bad = ~np.isin(np.asarray(task_ids), list(TASKS.values()))
    if bad.any():
      raise ValueError(f"task_ids[{int(np.argmax(bad))}] = {int(np.asarray(task_ids)[bad][0])} is not one of "
                       f"{TASKS}")
  return task_ids


@functools.partial(jax.jit, static_argnums=2)
def _omni(ids: jax.Array, task_ids: jax.Array, layout: Layout) -> jax.Array:
  task = task_ids[:, None, None]  # [B, 1, 1]
  out = _mixed(ids, layout)
  out = jnp.where(task == TASK_MMU, _mmu(ids, layout), out)
  out = jnp.where(task == TASK_LM, _causal(ids.shape[1])[None], out)
  return jnp.where(task == TASK_T2I, _predict_next(ids, layout, True), out)


# The float32 score of a blocked key in the attention kernels (models/attention.py, models/flash_attention.py):
# exp underflows to exactly 0 there, and a finite value (not -inf) keeps a fully blocked row, which the
# builders above never produce, free of NaNs.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def additive_mask(allowed, dtype=jnp.float32) -> jax.Array:
  """0 where allowed, -0.7·finfo(dtype).max where blocked; same shape as `allowed`.

  A large finite value (not -inf) keeps softmax free of NaNs and leaves room for adding other biases.
  """
  dtype = jnp.dtype(dtype)
  blocked = jnp.asarray(-0.7 * float(jnp.finfo(dtype).max), dtype)
  return jnp.where(jnp.asarray(allowed, bool), jnp.zeros((), dtype), blocked)


def to_allowed(mask) -> jax.Array:
  """bool [B, L, L] from a bool [B, L, L] / [B, 1, L, L] mask or an official additive float mask.

  Additive masks: 0 = attend, very negative (-9.2e18, -inf, or `additive_mask`'s value) = blocked.
  """
  mask = jnp.asarray(mask)
  if mask.ndim == 4:
    if mask.shape[1] != 1:
      raise ValueError(f"4-D attention mask must be [B, 1, L, L], got shape {mask.shape}")
    mask = mask[:, 0]
  if mask.ndim != 3 or mask.shape[1] != mask.shape[2]:
    raise ValueError(f"attention mask must be [B, L, L] or [B, 1, L, L], got shape {mask.shape}")
  if mask.dtype == jnp.bool_:
    return mask
  if jnp.issubdtype(mask.dtype, jnp.floating):
    return mask > -1.0  # blocked entries are huge negatives; allowed ones exactly 0
  raise ValueError(f"attention mask dtype {mask.dtype} is ambiguous: pass bool (True = attend) or additive float")


# ------------------------------------------------------------------------------------------ the compact form


class Spans(NamedTuple):
  """An attention mask in O(L): row i may attend to key j iff start[i] <= j <= end[i] and not
  (skip_pad[i] and key_pad[j]). Rows index queries [B, Lq], key_pad indexes keys [B, Lk]."""
  start: jax.Array  # int32 [B, Lq]
  end: jax.Array  # int32 [B, Lq], inclusive
  skip_pad: jax.Array  # bool [B, Lq]
  key_pad: jax.Array  # bool [B, Lk]

  def rows(self, lo: int, hi: int) -> "Spans":
    """The spans of query rows [lo, hi) (keys unchanged)."""
    return Spans(self.start[:, lo:hi], self.end[:, lo:hi], self.skip_pad[:, lo:hi], self.key_pad)


def expand(spans: Spans) -> jax.Array:
  """The boolean mask bool [B, Lq, Lk] of `spans`."""
  return _expand(*spans)


@jax.jit
def _expand(start, end, skip_pad, key_pad) -> jax.Array:
  cols = jnp.arange(key_pad.shape[1])[None, None, :]
  inside = (cols >= start[:, :, None]) & (cols <= end[:, :, None])
  return inside & ~(skip_pad[:, :, None] & key_pad[:, None, :])


def causal_spans(batch: int, length: int) -> Spans:
  """Plain causal attention over `length` tokens (what model init needs: shapes, any kernel)."""
  pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  no = jnp.zeros((batch, length), bool)
  return Spans(jnp.zeros_like(pos), pos, no, no)


def _row_spans(ids, start, end, skip_pad, layout: Layout) -> Spans:
  shape = ids.shape
  return Spans(jnp.broadcast_to(start, shape).astype(jnp.int32), jnp.broadcast_to(end, shape).astype(jnp.int32),
               jnp.broadcast_to(skip_pad, shape), ids == layout.pad_id)


def _t2i_spans(ids, layout: Layout) -> Spans:
  """`predict_next_mask(remove_pad=True)`: text rows after the last pad see (last pad, i], other text rows
  [0, i]; image rows every non-pad key."""
  length = ids.shape[1]
  pos = jnp.arange(length)[None, :]
  last_pad = jnp.max(jnp.where(ids == layout.pad_id, pos, -1), axis=1, keepdims=True)  # [B, 1]
  in_image = _in_image(ids, layout)
  start = jnp.where(in_image | (pos <= last_pad), 0, last_pad + 1)
  return _row_spans(ids, start, jnp.where(in_image, length - 1, pos), in_image, layout)


def _lm_spans(ids, layout: Layout) -> Spans:
  pos = jnp.arange(ids.shape[1])[None, :]
  return _row_spans(ids, 0, pos, False, layout)


def _mmu_spans(ids, layout: Layout) -> Spans:
  """`mmu_mask`: causal, plus keys 0…first <|eoi|> for every row."""
  pos = jnp.arange(ids.shape[1])[None, :]
  is_eoi = ids == layout.eoi_id
  first_eoi = jnp.where(jnp.any(is_eoi, axis=1), jnp.argmax(is_eoi, axis=1), -1)[:, None]  # [B, 1]
  return _row_spans(ids, 0, jnp.maximum(pos, first_eoi), False, layout)


def _mixed_spans(ids, layout: Layout) -> Spans:
  """`mixed_mask`: real rows skip pads and see [0, i], or inside a block [0, the next <|eoi|>]; pad rows
  see themselves."""
  length = ids.shape[1]
  pos = jnp.broadcast_to(jnp.arange(length)[None, :], ids.shape)
  eoi_at = jnp.where(ids == layout.eoi_id, pos, length - 1)
  next_eoi = jax.lax.cummin(eoi_at, axis=1, reverse=True)  # the first <|eoi|> at or after each position
  is_pad = ids == layout.pad_id
  end = jnp.where(_in_image(ids, layout) & ~is_pad, next_eoi, pos)
  return _row_spans(ids, jnp.where(is_pad, pos, 0), end, ~is_pad, layout)


def t2i_spans(ids, layout: Layout) -> Spans:
  """The compact form of `predict_next_mask(ids, layout, remove_pad=True)`."""
  return _t2i_spans_jit(_ids(ids), layout)


_t2i_spans_jit = jax.jit(_t2i_spans, static_argnums=1)


def omni_spans(ids, task_ids, layout: Layout) -> Spans:
  """The compact form of `omni_attention_mask(ids, task_ids, layout)` (same arguments and checks)."""
  ids = _ids(ids)
  return _omni_spans(ids, _task_ids(task_ids, ids), layout)


@functools.partial(jax.jit, static_argnums=2)
def _omni_spans(ids, task_ids, layout: Layout) -> Spans:
  task = task_ids[:, None]
  parts = {TASK_T2I: _t2i_spans, TASK_LM: _lm_spans, TASK_MMU: _mmu_spans}
  out = _mixed_spans(ids, layout)
  for task_id, build in parts.items():
    rows = build(ids, layout)
    out = Spans(*(jnp.where(task == task_id, new, old) for new, old in zip(rows[:3], out[:3])), out.key_pad)
  return out
