"""Text tokenizer: a thin wrapper over the `tokenizers` library, loaded from a local tokenizer.json.

Show-o uses phi-1.5's BPE tokenizer (SPEC §2). The file is never downloaded here: export `tokenizer.json` once
(e.g. from a local copy of microsoft/phi-1_5) and pass its path. The wrapper returns raw ids (no special tokens
added); the prompt builders in `showo_jax.data.prompting` add BOS/EOS and the Show-o special tokens themselves.
"""

from typing import Iterable, Optional, Sequence

import numpy as np
import tokenizers

from showo_jax.common import paths
from showo_jax.models import vocab as vocab_lib

_ENDOFTEXT = "<|endoftext|>"


class TextTokenizer:
  """Encodes texts to raw text ids and decodes ids (of the unified vocabulary) back to text."""

  def __init__(self, path: str, layout: Optional[vocab_lib.VocabLayout] = None):
    """Loads `path` (a tokenizer.json file).

    Args:
      path: a tokenizer.json (local or a cloud URL).
      layout: the unified vocabulary. It decides which ids are text (< llm_vocab_size) and which are BOS/EOS.
        Without it, every id the tokenizer knows is text and BOS/EOS is `<|endoftext|>` if present.

    Raises:
      ValueError: the file is missing or is not a `tokenizers` tokenizer.json.
    """
    path = paths.resolve(path)
    if not paths.isfile(path):
      raise ValueError(f"text tokenizer file {path!r} does not exist (give a tokenizer.json)")
    try:
      self._tok = tokenizers.Tokenizer.from_str(paths.read_text(path))
    except Exception as e:  # pylint: disable=broad-except  # the library raises a bare Exception
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ValueError(f"text tokenizer file {path!r} is not a tokenizer.json: {msg}") from None
    self.path = path
    if layout is not None:
      self.llm_vocab_size = layout.llm_vocab_size
      self.bos_id, self.eos_id = layout.bos_id, layout.eos_id
    else:
      self.llm_vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
      eot = self._tok.token_to_id(_ENDOFTEXT)
      self.bos_id = self.eos_id = eot

  @property
  def vocab_size(self) -> int:
    """Ids the tokenizer itself knows (added tokens included)."""
    return self._tok.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> Optional[int]:
    return self._tok.token_to_id(token)

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Raw ids per text; no BOS/EOS or other special tokens are added."""
    if isinstance(texts, str):
      raise TypeError("TextTokenizer.encode takes a list of strings, got a single str")
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [list(e.ids) for e in encodings]

  def encode_one(self, text: str) -> list[int]:
    """Raw ids of one text (the `tokenizer_fn` the LLaVA prompt builder wants)."""
    return self.encode([text])[0]

  def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
    """Ids → text.

    With `skip_special`, ids that are not text (>= llm_vocab_size: [PAD], <|soi|>…, image tokens, [MASK]) and
    the BOS/EOS id are dropped first, so decoding a whole Show-o sequence gives just its text.
    """
    if not isinstance(ids, (list, tuple)) and not hasattr(ids, "__array__"):
      ids = list(ids)  # a generator
    ids = np.asarray(ids, dtype=np.int64).ravel().tolist()
    if skip_special:
      drop = {self.bos_id, self.eos_id}
      ids = [i for i in ids if 0 <= i < self.llm_vocab_size and i not in drop]
    else:
      # Ids beyond the tokenizer's own vocabulary cannot be decoded at all.
      ids = [i for i in ids if 0 <= i < self.vocab_size]
    return self._tok.decode(ids, skip_special_tokens=skip_special)


def word_level_tokenizer_json(vocab: dict[str, int], unk: str = "<unk>") -> str:
  """A tokenizer.json string for a WordLevel model split on whitespace (the parity data's stand-in tokenizer).

  Args:
    vocab: token → id. Must contain `unk`.
    unk: the token unknown words map to.

  Returns:
    The JSON text; write it to a file and load it with `TextTokenizer`.
  """
  if unk not in vocab:
    raise ValueError(f"word-level vocab has no unknown token {unk!r}")
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=dict(vocab), unk_token=unk))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return tok.to_str()
