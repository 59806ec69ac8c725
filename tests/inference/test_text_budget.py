"""The t2i text budget: what `Pipeline` lets through is exactly what the prompt builder keeps (SPEC §3.1)."""

import numpy as np

from showo_jax.config import showo as showo_config
from showo_jax.data import prompting
from showo_jax.data import text_tokenizer
from showo_jax.inference import pipeline
from tests import train_fixtures


def _pipeline(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path))  # max_text_len T = 12
  layout = showo_config.vocab_layout(config)
  pipe = pipeline.Pipeline({}, config, text_tokenizer.TextTokenizer(config.text_tokenizer.path, layout))
  warnings = []
  pipe.warn = warnings.append
  return pipe, layout, warnings


def _prompt_of(pipe, n: int) -> str:
  """A prompt that encodes to exactly `n` raw ids ("a a a …" for a letter that is one id, as is " a")."""
  for letter in "aeioustxyz":
    prompt = " ".join([letter] * n)
    if len(pipe.text_tokenizer.encode([prompt])[0]) == n:
      return prompt
  raise AssertionError(f"no one-id letter in the fixture's BPE for a {n}-id prompt")


def _text_block(ids, layout, t):
  image = np.full((1, 16), layout.mask_id, np.int32)
  return prompting.t2i_gen_prompt([ids], image, layout, t)[0, :t + 1].tolist()


def test_a_prompt_of_exactly_the_budget_keeps_every_id(tmp_path):
  pipe, layout, warnings = _pipeline(tmp_path)
  t = pipe.config.data.max_text_len
  assert pipe.text_budget == t - 2 == 10
  raw = pipe.text_tokenizer.encode([_prompt_of(pipe, 10)])[0]
  ids = pipe.encode_t2i_prompts([_prompt_of(pipe, 10)])[0]
  assert ids == raw and warnings == []
  # The whole block, no padding: <|t2i|>, BOS, the 10 ids, EOS.
  assert _text_block(ids, layout, t) == [layout.t2i_id, layout.bos_id] + raw + [layout.eos_id]
  # The training builder keeps them all too.
  image = np.full((1, 16), layout.image_offset, np.int32)
  train_ids, _ = prompting.t2i_prompt([ids], image, np.full((1, 16), -100), layout, t)
  assert train_ids[0, :t + 1].tolist() == [layout.t2i_id, layout.bos_id] + raw + [layout.eos_id]


def test_one_id_over_the_budget_warns_and_is_cut_where_the_builder_cuts(tmp_path):
  pipe, layout, warnings = _pipeline(tmp_path)
  t = pipe.config.data.max_text_len
  prompt = _prompt_of(pipe, 11)
  raw = pipe.text_tokenizer.encode([prompt])[0]
  ids = pipe.encode_t2i_prompts([prompt])[0]
  assert ids == raw[:10]
  assert len(warnings) == 1 and "has 11 text tokens; the text budget is 10" in warnings[0]
  # What the builder would have kept of the full prompt is exactly the truncated prompt.
  assert _text_block(raw, layout, t) == _text_block(ids, layout, t)
