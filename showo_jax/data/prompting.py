"""Token ids and labels of every Show-o sequence format (SPEC §3), as plain numpy.

All builders take raw text ids (the tokenizer's output, no special tokens), image *token* ids (code + offset, or
[MASK]) and a `VocabLayout`, and return int32 arrays. Labels use IGNORE_ID (-100) for ignored positions.
Every text first gets BOS prepended when its first id is not BOS (an empty text becomes [BOS]); the official
lm/mmu builders prepend EOS instead, which is the same id for phi (BOS = EOS = <|endoftext|>).

Layouts (T = max_text_len, N = image tokens; all training sequences have length T + N + 3):
  t2i      [PAD]*p <|t2i|> BOS text EOS <|soi|> img*N <|eoi|>       (text block left-padded to T + 1)
  mmu      <|mmu|> <|soi|> img*N <|eoi|> BOS text EOS [PAD]*p       (text right-padded to T)
  lm       BOS text EOS [PAD]*p                                     (right-padded to seq_len)
  llava    <|mmu|> <|soi|> img*N <|eoi|> conversation [PAD]*p       (no BOS, right-padded to T)
  mixed    BOS text <|soi|> img <|eoi|> text … EOS [PAD]*p          (right-padded to seq_len)
"""

from typing import Callable, Sequence

import numpy as np

from showo_jax.models import mask_schedule
from showo_jax.models import vocab as vocab_lib

IGNORE_ID = -100

Layout = vocab_lib.VocabLayout
Ids = Sequence[int]


# ---------------------------------------------------------------------------------------------- validation


def _raw_text(ids: Ids, layout: Layout, where: str) -> list[int]:
  """Checks that every id is a text id (< llm_vocab_size); returns a list of python ints."""
  arr = np.asarray(ids, dtype=np.int64).ravel()
  bad = (arr < 0) | (arr >= layout.llm_vocab_size)
  if bad.any():
    pos = int(np.argmax(bad))
    raise ValueError(f"{where}: id {int(arr[pos])} at position {pos} is not a text id "
                     f"(text ids are < llm_vocab_size={layout.llm_vocab_size})")
  return arr.tolist()


def _text(ids: Ids, layout: Layout, where: str) -> list[int]:
  """A validated text with BOS prepended when missing (SPEC §3)."""
  out = _raw_text(ids, layout, where)
  return out if out and out[0] == layout.bos_id else [layout.bos_id] + out


def _image_row(ids, layout: Layout, where: str, allow_mask: bool = True) -> np.ndarray:
  """Checks a [N] (or [B, N]) array of image token ids ([MASK] allowed if `allow_mask`)."""
  arr = np.asarray(ids)
  ok = layout.is_image(arr) | (allow_mask & (arr == layout.mask_id))
  if not ok.all():
    pos = tuple(int(i) for i in np.argwhere(~ok)[0])
    raise ValueError(f"{where}{list(pos)}: id {int(arr[pos])} is not an image token id "
                     f"([{layout.image_offset}, {layout.mask_id}){' or [MASK]' if allow_mask else ''})")
  return arr.astype(np.int32)


def _images(ids, layout: Layout, where: str, batch: int, allow_mask: bool = True) -> np.ndarray:
  arr = np.asarray(ids)
  if arr.ndim != 2 or arr.shape[0] != batch:
    raise ValueError(f"{where} must be [B={batch}, N], got shape {arr.shape}")
  return _image_row(arr, layout, where, allow_mask)


def _image_labels(labels, layout: Layout, batch: int) -> np.ndarray:
  arr = np.asarray(labels)
  if arr.ndim != 2 or arr.shape[0] != batch:
    raise ValueError(f"image_labels must be [B={batch}, N], got shape {arr.shape}")
  ok = layout.is_image(arr) | (arr == IGNORE_ID)
  if not ok.all():
    pos = tuple(int(i) for i in np.argwhere(~ok)[0])
    raise ValueError(f"image_labels{list(pos)}: {int(arr[pos])} is neither an image token id nor {IGNORE_ID}")
  return arr.astype(np.int32)


def _pad_right(seqs: list[list[int]], width: int, value: int) -> np.ndarray:
  return np.array([s + [value] * (width - len(s)) for s in seqs], dtype=np.int32)


def left_pad(seqs: Sequence[Ids], pad_id: int) -> np.ndarray:
  """Stacks sequences of different lengths into [B, max_len], left-padded with `pad_id`."""
  seqs = [list(np.asarray(s).ravel().tolist()) for s in seqs]
  width = max((len(s) for s in seqs), default=0)
  return np.array([[pad_id] * (width - len(s)) + s for s in seqs], dtype=np.int32).reshape(len(seqs), width)


# ---------------------------------------------------------------------------------------------- t2i


def _t2i_text_block(text: list[int], layout: Layout, max_text_len: int, dropped: bool) -> list[int]:
  """`[PAD]*p, <|t2i|>, BOS, text, EOS` of exactly T + 1 tokens (SPEC §3.1)."""
  width = max_text_len + 1
  if dropped:  # the null prompt of classifier-free guidance
    block = [layout.t2i_id, layout.bos_id, layout.eos_id]
  else:
    block = [layout.t2i_id] + text + [layout.eos_id]
  if len(block) > width:
    # Keeps <|t2i|>, BOS and the first T - 2 text ids, then EOS again.
    block = block[:width - 1] + [layout.eos_id]
  return [layout.pad_id] * (width - len(block)) + block


def t2i_prompt(text_ids: Sequence[Ids], image_ids, image_labels, layout: Layout, max_text_len: int,
               cond_drop=None) -> tuple[np.ndarray, np.ndarray]:
  """t2i training sequences and labels (SPEC §3.1).

  Args:
    text_ids: B raw texts.
    image_ids: [B, N] image token ids, [MASK] where masked (see `mask_image_tokens`).
    image_labels: [B, N] original image token ids where masked, IGNORE_ID elsewhere.
    layout: the vocabulary.
    max_text_len: T.
    cond_drop: optional bool [B]; True samples get the null prompt `[<|t2i|>, BOS, EOS]`.

  Returns:
    input_ids [B, T+N+3] and labels [B, T+N+3]. Labels: pads IGNORE_ID; the text block (task token, BOS, text,
    EOS) as itself (the official loss skips it: it starts at position T+1); <|soi|>/<|eoi|> as themselves;
    image positions = `image_labels`.
  """
  b = len(text_ids)
  imgs = _images(image_ids, layout, "image_ids", b)
  labs = _image_labels(image_labels, layout, b)
  if labs.shape != imgs.shape:
    raise ValueError(f"image_labels shape {labs.shape} differs from image_ids shape {imgs.shape}")
  drop = np.zeros(b, bool) if cond_drop is None else np.asarray(cond_drop, bool).reshape(b)
  blocks = [_t2i_text_block(_text(t, layout, f"t2i text {i}"), layout, max_text_len, bool(drop[i]))
            for i, t in enumerate(text_ids)]
  blocks = np.array(blocks, dtype=np.int32).reshape(b, max_text_len + 1)  # [B, T+1]
  soi = np.full((b, 1), layout.soi_id, np.int32)
  eoi = np.full((b, 1), layout.eoi_id, np.int32)
  input_ids = np.concatenate([blocks, soi, imgs, eoi], axis=1)  # [B, T+N+3]
  text_labels = np.where(blocks == layout.pad_id, IGNORE_ID, blocks)
  labels = np.concatenate([text_labels, soi, labs, eoi], axis=1)  # [B, T+N+3]
  return input_ids, labels.astype(np.int32)


def t2i_gen_prompt(text_ids: Sequence[Ids], image_ids, layout: Layout, max_text_len: int) -> np.ndarray:
  """t2i generation / inpainting / extrapolation input ids [B, T+N+3] (SPEC §3.2).

  `image_ids` [B, N] holds [MASK] where tokens are to be generated. The unconditional CFG companion is the same
  call with empty texts (`[[]] * B`).
  """
  b = len(text_ids)
  imgs = _images(image_ids, layout, "image_ids", b)
  blocks = [_t2i_text_block(_text(t, layout, f"t2i text {i}"), layout, max_text_len, False)
            for i, t in enumerate(text_ids)]
  blocks = np.array(blocks, dtype=np.int32).reshape(b, max_text_len + 1)  # [B, T+1]
  soi = np.full((b, 1), layout.soi_id, np.int32)
  eoi = np.full((b, 1), layout.eoi_id, np.int32)
  return np.concatenate([blocks, soi, imgs, eoi], axis=1)


# ---------------------------------------------------------------------------------------------- masking


def num_masked(timesteps, num_tokens: int, schedule: str = "cosine", min_masking_rate: float = 0.0) -> np.ndarray:
  """Tokens to mask per image: max(1, round(N · max(γ(t), min_rate))) in float32, as the official code (§5.2)."""
  t = np.asarray(timesteps, np.float32)
  p = np.asarray(mask_schedule.get(schedule)(t), np.float32)
  p = np.maximum(p, np.float32(min_masking_rate))
  n = np.round(np.float32(num_tokens) * p)  # half-to-even, like torch.round
  return np.maximum(n, 1).astype(np.int32)


def mask_image_tokens_at(image_ids, timesteps, rand, layout: Layout, schedule: str = "cosine",
                         min_masking_rate: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Deterministic training-time masking from given draws (SPEC §5.2).

  Args:
    image_ids: [B, N] unmasked image token ids.
    timesteps: [B] t in [0, 1).
    rand: [B, N] uniform draws; position j is masked when argsort(rand)[j] < n (the official rule).

  Returns:
    masked_ids [B, N] ([MASK] where masked), labels [B, N] (original id where masked, IGNORE_ID elsewhere),
    mask bool [B, N].
  """
  ids = np.asarray(image_ids)
  if ids.ndim != 2:
    raise ValueError(f"image_ids must be [B, N], got shape {ids.shape}")
  ids = _image_row(ids, layout, "image_ids", allow_mask=False)
  rand = np.asarray(rand)
  if rand.shape != ids.shape:
    raise ValueError(f"rand shape {rand.shape} differs from image_ids shape {ids.shape}")
  count = num_masked(timesteps, ids.shape[1], schedule, min_masking_rate).reshape(-1)  # [B]
  perm = np.argsort(rand, axis=-1, kind="stable")  # [B, N]
  mask = perm < count[:, None]  # [B, N], exactly count[b] True per row
  masked = np.where(mask, layout.mask_id, ids).astype(np.int32)
  labels = np.where(mask, ids, IGNORE_ID).astype(np.int32)
  return masked, labels, mask


def mask_image_tokens(image_ids, rng: np.random.Generator, layout: Layout, schedule: str = "cosine",
                      min_masking_rate: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Random training-time masking: t ~ U[0, 1) per image, then a uniform subset of n positions (SPEC §5.2)."""
  b, n = np.shape(image_ids)
  timesteps = rng.random(b, dtype=np.float32)
  rand = rng.random((b, n), dtype=np.float32)
  return mask_image_tokens_at(image_ids, timesteps, rand, layout, schedule, min_masking_rate)


def cond_dropout(rngs: Sequence[np.random.Generator], prob: float) -> np.ndarray:
  """bool [B]: which t2i samples get the null prompt (official: `rand < prob`), one draw from each row's stream."""
  return np.array([rng.random() < prob for rng in rngs], bool)


# ---------------------------------------------------------------------------------------------- mmu


def _mmu_prefix(img: np.ndarray, layout: Layout) -> list[int]:
  return [layout.mmu_id, layout.soi_id] + img.tolist() + [layout.eoi_id]


def mmu_prompt(image_ids, text_ids: Sequence[Ids], layout: Layout,
               max_text_len: int) -> tuple[np.ndarray, np.ndarray]:
  """mmu / captioning training sequences and labels [B, T+N+3] (SPEC §3.3).

  The text part `BOS, text, EOS` is right-padded to exactly T; a longer one keeps its first T - 1 ids
  (BOS included) and gets EOS again. Labels: IGNORE_ID on the N + 3 prefix positions and on pads, the text
  part (BOS, prompt, caption, EOS) as itself.
  """
  b = len(text_ids)
  imgs = _images(image_ids, layout, "image_ids", b)
  ids, labels = [], []
  for i, t in enumerate(text_ids):
    seq = _text(t, layout, f"mmu text {i}") + [layout.eos_id]
    if len(seq) > max_text_len:
      seq = seq[:max_text_len - 1] + [layout.eos_id]
    pad = max_text_len - len(seq)
    prefix = _mmu_prefix(imgs[i], layout)
    ids.append(prefix + seq + [layout.pad_id] * pad)
    labels.append([IGNORE_ID] * len(prefix) + seq + [IGNORE_ID] * pad)
  width = imgs.shape[1] + 3 + max_text_len
  return (np.array(ids, np.int32).reshape(b, width), np.array(labels, np.int32).reshape(b, width))


def mmu_question_text(question: str) -> str:
  """The MMU inference prompt text (inference_mmu.py), to be tokenised and fed to `mmu_gen_prompt`."""
  return "USER: \n" + question + " ASSISTANT:"


def mmu_gen_prompt(image_ids, text_ids: Sequence[Ids], layout: Layout) -> list[np.ndarray]:
  """MMU inference prompts, one int32 array per sample, unpadded (SPEC §3.3).

  `<|mmu|>, <|soi|>, img, <|eoi|>, BOS, question ids`, where the question ids are the tokenised
  `mmu_question_text(q)`. Stack with `left_pad` if a batch is needed.
  """
  b = len(text_ids)
  imgs = _images(image_ids, layout, "image_ids", b)
  return [np.array(_mmu_prefix(imgs[i], layout) + _text(t, layout, f"mmu question {i}"), np.int32)
          for i, t in enumerate(text_ids)]


def llava_prompt(image_ids, conversations: Sequence[Sequence[tuple[str, str]]],
                 tokenizer_fn: Callable[[str], Ids], layout: Layout,
                 max_text_len: int) -> tuple[np.ndarray, np.ndarray]:
  """LLaVA instruction data in the mmu layout (template `phi1.5` = conv_phi_v0, SPEC §3.3).

  Each conversation is a list of (question, answer) turns rendered as
  `"USER: {q} ASSISTANT: {a}<|endoftext|>"` back to back, with no BOS. Masking rule (the official LLaVA
  `preprocess_v0` one): per turn, the ids of `tokenizer_fn("USER: {q} ASSISTANT:")` are IGNORE_ID and the ids
  of `tokenizer_fn(" {a}")` plus the EOS id after them are kept. Turns are tokenised piecewise, which matches
  tokenising the whole string for GPT-2-style BPE since its pre-tokeniser already splits at ": " + word.
  The conversation is cut to T (no EOS re-appended) and right-padded with [PAD] / IGNORE_ID; the N + 3 image
  prefix positions are IGNORE_ID.

  Returns:
    input_ids [B, T+N+3] and labels [B, T+N+3].
  """
  b = len(conversations)
  imgs = _images(image_ids, layout, "image_ids", b)
  ids, labels = [], []
  for i, conv in enumerate(conversations):
    seq, lab = [], []
    for k, (question, answer) in enumerate(conv):
      where = f"llava sample {i} turn {k}"
      instr = _raw_text(tokenizer_fn(f"USER: {question} ASSISTANT:"), layout, where)
      ans = _raw_text(tokenizer_fn(f" {answer}"), layout, where) + [layout.eos_id]
      seq += instr + ans
      lab += [IGNORE_ID] * len(instr) + ans
    seq, lab = seq[:max_text_len], lab[:max_text_len]
    pad = max_text_len - len(seq)
    prefix = _mmu_prefix(imgs[i], layout)
    ids.append(prefix + seq + [layout.pad_id] * pad)
    labels.append([IGNORE_ID] * len(prefix) + lab + [IGNORE_ID] * pad)
  width = imgs.shape[1] + 3 + max_text_len
  return (np.array(ids, np.int32).reshape(b, width), np.array(labels, np.int32).reshape(b, width))


# ---------------------------------------------------------------------------------------------- lm / mixed


def lm_prompt(text_ids: Sequence[Ids], layout: Layout, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Language-modelling sequences `BOS, text, EOS, [PAD]*p` and labels [B, seq_len] (SPEC §3.4).

  A sequence longer than `seq_len` is cut to `seq_len` with no EOS. Labels = ids, IGNORE_ID on pads.
  """
  ids, labels = [], []
  for i, t in enumerate(text_ids):
    seq = (_text(t, layout, f"lm text {i}") + [layout.eos_id])[:seq_len]
    ids.append(seq)
    labels.append(seq)
  b = len(text_ids)
  return (_pad_right(ids, seq_len, layout.pad_id).reshape(b, seq_len),
          _pad_right(labels, seq_len, IGNORE_ID).reshape(b, seq_len))


def mixed_prompt(segments: Sequence[Sequence[tuple[str, Ids]]], layout: Layout,
                 seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Interleaved text/image sequences (an extension; SPEC §3.5 only sketches lvg).

  Per sample, `segments` is a list of ("text", raw text ids) / ("image", image token ids) items, rendered as
  `BOS, …, EOS, [PAD]*p` with each image as `<|soi|>, img, <|eoi|>` (BOS only added when the first text does
  not start with it). Pair with the "mixed" rows of `omni_mask.omni_attention_mask`.

  Labels (for the usual one-step shift): text ids, BOS and EOS as themselves; <|soi|> as itself, so the model
  learns where an image starts; image tokens, <|eoi|> and pads IGNORE_ID. `image_positions` marks the image
  tokens so a caller can add MTP targets there.

  Returns:
    input_ids [B, seq_len], labels [B, seq_len], image_positions bool [B, seq_len].

  Raises:
    ValueError: unknown segment kind, bad ids, or a sample longer than `seq_len` (nothing is truncated).
  """
  ids, labels, flags = [], [], []
  for i, sample in enumerate(segments):
    seq, lab, img = [], [], []
    for k, (kind, x) in enumerate(sample):
      where = f"mixed sample {i} segment {k}"
      if kind == "text":
        t = _raw_text(x, layout, where)
        seq += t
        lab += t
        img += [False] * len(t)
      elif kind == "image":
        row = _image_row(np.asarray(x).ravel(), layout, where).tolist()
        seq += [layout.soi_id] + row + [layout.eoi_id]
        lab += [layout.soi_id] + [IGNORE_ID] * (len(row) + 1)
        img += [False] + [True] * len(row) + [False]
      else:
        raise ValueError(f"{where}: kind {kind!r} is not 'text' or 'image'")
    if not seq or seq[0] != layout.bos_id:
      seq, lab, img = [layout.bos_id] + seq, [layout.bos_id] + lab, [False] + img
    seq, lab, img = seq + [layout.eos_id], lab + [layout.eos_id], img + [False]
    if len(seq) > seq_len:
      raise ValueError(f"mixed sample {i}: {len(seq)} tokens do not fit seq_len={seq_len}")
    ids.append(seq)
    labels.append(lab)
    flags.append([int(f) for f in img])
  b = len(segments)
  return (_pad_right(ids, seq_len, layout.pad_id).reshape(b, seq_len),
          _pad_right(labels, seq_len, IGNORE_ID).reshape(b, seq_len),
          _pad_right(flags, seq_len, 0).reshape(b, seq_len).astype(bool))
