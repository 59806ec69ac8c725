"""The unified token-id layout: text ids, 10 special tokens, image codes, [MASK].

The layout is the official one (SPEC §2), computed from the text vocabulary size and the codebook size, so
that ids in official checkpoints mean the same thing here:

  0 … llm_vocab_size-1                 text tokens (BOS = EOS = <|endoftext|> for Phi/GPT-2 BPE)
  llm_vocab_size + 0                   [PAD]
  llm_vocab_size + 1 … + 9             <|soi|> <|eoi|> <|sov|> <|eov|> <|t2i|> <|mmu|> <|t2v|> <|v2v|> <|lvg|>
  llm_vocab_size + 10 + c              image code c, c in [0, codebook_size)
  llm_vocab_size + 10 + codebook_size  [MASK] (the last id of the official vocabulary)
"""

import dataclasses

import numpy as np

# The order in which the official UniversalPrompting adds its tokens after [PAD].
SPECIAL_TOKENS = ("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>",
                  "<|lvg|>")
NUM_NEW_SPECIAL_TOKENS = 1 + len(SPECIAL_TOKENS)  # [PAD] + the 9 above = 10


@dataclasses.dataclass(frozen=True)
class VocabLayout:
  """Token ids of the unified vocabulary; see the module docstring."""
  llm_vocab_size: int  # len(text tokenizer), e.g. 50295 for phi-1.5
  codebook_size: int  # image codes, e.g. 8192
  bos_id: int  # prepended to every text (50256 for phi-1.5)
  eos_id: int  # appended to every text (50256 for phi-1.5)

  def __post_init__(self):
    for name in ("llm_vocab_size", "codebook_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"vocab layout: {name} must be positive, got {getattr(self, name)}")
    for name in ("bos_id", "eos_id"):
      if not 0 <= getattr(self, name) < self.llm_vocab_size:
        raise ValueError(f"vocab layout: {name}={getattr(self, name)} is not a text id "
                         f"(llm_vocab_size={self.llm_vocab_size})")

  @property
  def pad_id(self) -> int:
    return self.llm_vocab_size

  def special_id(self, token: str) -> int:
    """Id of one of SPECIAL_TOKENS (or "[PAD]")."""
    if token == "[PAD]":
      return self.pad_id
    if token not in SPECIAL_TOKENS:
      raise KeyError(f"unknown special token {token!r}; known: [PAD], {', '.join(SPECIAL_TOKENS)}")
    return self.llm_vocab_size + 1 + SPECIAL_TOKENS.index(token)

  soi_id = property(lambda self: self.special_id("<|soi|>"))
  eoi_id = property(lambda self: self.special_id("<|eoi|>"))
  sov_id = property(lambda self: self.special_id("<|sov|>"))
  eov_id = property(lambda self: self.special_id("<|eov|>"))
  t2i_id = property(lambda self: self.special_id("<|t2i|>"))
  mmu_id = property(lambda self: self.special_id("<|mmu|>"))
  t2v_id = property(lambda self: self.special_id("<|t2v|>"))
  v2v_id = property(lambda self: self.special_id("<|v2v|>"))
  lvg_id = property(lambda self: self.special_id("<|lvg|>"))

  @property
  def image_offset(self) -> int:
    """Id of image code 0 (50305 for phi-1.5 + 8192 codes)."""
    return self.llm_vocab_size + NUM_NEW_SPECIAL_TOKENS

  @property
  def mask_id(self) -> int:
    return self.image_offset + self.codebook_size

  @property
  def vocab_size(self) -> int:
    """Rows the embedding and the head need at least (58498 for the official model)."""
    return self.mask_id + 1

  def image_ids(self, codes):
    """Image codes [0, codebook_size) → token ids. Raises on out-of-range codes."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
      bad = codes[(codes < 0) | (codes >= self.codebook_size)].ravel()[0]
      raise ValueError(f"image code {int(bad)} outside the codebook [0, {self.codebook_size})")
    return codes.astype(np.int32) + self.image_offset

  def codes(self, ids):
    """Image token ids → codes (no range check; [MASK] maps to codebook_size)."""
    return np.asarray(ids) - self.image_offset

  def is_image(self, ids):
    ids = np.asarray(ids)
    return (ids >= self.image_offset) & (ids < self.mask_id)


def codebook_bit_rows(rng, layout: VocabLayout, features: int, std: float):
  """float32 [codebook_size, features] rows for the image codes, linear in each code's LFQ bits: row(c) =
  Σ_k s_k(c)·r_k with s(c) ∈ {−1, +1}^K (bit 0 = MSB, as in tokenizer/lfq.py) and r_k ~ N(0, std²/K), so
  every row still has std `std`. Codes one bit apart start close, which a new codebook's N(0, std) rows
  know nothing of (config.model.image_embedding_init = "codebook_bits")."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  bits = int(layout.codebook_size).bit_length() - 1
  if 2 ** bits != layout.codebook_size:
    raise ValueError(f"codebook_bits init needs a power-of-two codebook, got {layout.codebook_size}")
  shifts = jnp.arange(bits - 1, -1, -1)
  signs = 2.0 * ((jnp.arange(layout.codebook_size)[:, None] >> shifts) & 1) - 1.0  # [C, K]
  return signs @ (jax.random.normal(rng, (bits, features), jnp.float32) * (std / np.sqrt(bits)))
