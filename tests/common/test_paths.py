"""The path layer's JSON-lines reader: values with their line numbers, and one clear line for each bad file."""

import pytest

from showo_jax.common import paths


def test_read_jsonl_keeps_line_numbers_and_skips_blank_lines(tmp_path):
  f = tmp_path / "q.jsonl"
  f.write_text('{"a": 1}\n\n  \n[2, 3]\n"x"\n')
  assert paths.read_jsonl(str(f), "--questions") == [(1, {"a": 1}), (4, [2, 3]), (5, "x")]


@pytest.mark.parametrize("text, match", [
    (None, r"--questions .*none.jsonl: no such file"),
    ('{"a": 1}\n\n{"a": \n', r"q.jsonl:3: not JSON"),
    ("\n \n", r"--questions .*q.jsonl: the file has no lines"),
])
def test_read_jsonl_names_the_bad_file_and_line(tmp_path, text, match):
  f = tmp_path / ("none.jsonl" if text is None else "q.jsonl")
  if text is not None:
    f.write_text(text)
  with pytest.raises((FileNotFoundError, ValueError), match=match):
    paths.read_jsonl(str(f), "--questions")
