"""Prompt builders and the text tokenizer: official parity batch, literal small cases, properties."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from showo_jax.data import prompting as pr
from showo_jax.data import text_tokenizer as tt
from showo_jax.models.vocab import VocabLayout

IG = pr.IGNORE_ID
TINY = VocabLayout(llm_vocab_size=100, codebook_size=64, bos_id=99, eos_id=99)  # the parity model (T=16, N=64)
# Small layout for literal cases: pad 10, soi 11, eoi 12, t2i 15, mmu 16, image codes 20…23, [MASK] 24.
SMALL = VocabLayout(llm_vocab_size=10, codebook_size=4, bos_id=9, eos_id=9)
# Same, but BOS != EOS so the two rules can be told apart.
SPLIT = VocabLayout(llm_vocab_size=10, codebook_size=4, bos_id=8, eos_id=9)
PAD, SOI, EOI, T2I, MMU, MASK = 10, 11, 12, 15, 16, 24
PROPS = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def parity_tok(parity_json, tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  path.write_text(tt.word_level_tokenizer_json(parity_json["tiny_showo"]["tokenizer_vocab"]))
  return tt.TextTokenizer(str(path), TINY)


@pytest.fixture(scope="module")
def small_tok(tmp_path_factory):
  vocab = {"<unk>": 0, "USER:": 1, "ASSISTANT:": 2, "hi": 3, "yo": 4, "ok": 5, "<|endoftext|>": 9}
  path = tmp_path_factory.mktemp("tok") / "small.json"
  path.write_text(tt.word_level_tokenizer_json(vocab))
  return tt.TextTokenizer(str(path), SMALL)


# ---------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_reproduces_parity_ids(parity_tok, parity_json):
  tiny = parity_json["tiny_showo"]
  for task in ("t2i", "lm", "mmu"):
    assert parity_tok.encode(tiny["texts"][task]) == tiny["text_token_ids_raw_tokenizer_output"][task], task


def test_tokenizer_decode_skips_special(parity_tok, parity_showo):
  ids = parity_showo["mmu.input_ids"][0]  # [<|mmu|>, <|soi|>, image…, <|eoi|>, BOS, text, EOS, pads]
  assert parity_tok.decode(ids) == "USER: describe this image ASSISTANT: a small cat looking at the camera"
  assert parity_tok.decode([99, 1, 14, 99], skip_special=False) == "<|endoftext|> a cat <|endoftext|>"
  assert parity_tok.decode(iter([1, 14])) == "a cat"


def test_tokenizer_errors(tmp_path):
  with pytest.raises(ValueError, match="nope.json"):
    tt.TextTokenizer(str(tmp_path / "nope.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{}")
  with pytest.raises(ValueError, match="bad.json.*not a tokenizer"):
    tt.TextTokenizer(str(bad))
  with pytest.raises(ValueError, match="unknown token"):
    tt.word_level_tokenizer_json({"a": 0})


def test_tokenizer_without_layout(small_tok):
  tok = tt.TextTokenizer(small_tok.path)
  assert (tok.bos_id, tok.eos_id, tok.llm_vocab_size) == (9, 9, 7)
  assert tok.encode(["hi  yo\nzz"]) == [[3, 4, 0]]


# ---------------------------------------------------------------------------------------------- parity


def test_t2i_parity(parity_tok, parity_json, parity_showo):
  img, mask = parity_showo["t2i.image_tokens"], parity_showo["t2i.image_mask"]
  text = parity_tok.encode(parity_json["tiny_showo"]["texts"]["t2i"])
  ids, labels = pr.t2i_prompt(text, np.where(mask, TINY.mask_id, img), np.where(mask, img, IG), TINY, 16,
                              cond_drop=parity_showo["t2i.cond_dropped"])
  np.testing.assert_array_equal(ids, parity_showo["t2i.input_ids"])
  np.testing.assert_array_equal(labels, parity_showo["t2i.labels"])
  assert ids.dtype == labels.dtype == np.int32


def test_lm_mmu_parity_and_concatenated_batch(parity_tok, parity_json, parity_showo):
  texts = parity_json["tiny_showo"]["texts"]
  lm_ids, lm_labels = pr.lm_prompt(parity_tok.encode(texts["lm"]), TINY, 83)
  np.testing.assert_array_equal(lm_ids, parity_showo["lm.input_ids"])
  np.testing.assert_array_equal(lm_labels, parity_showo["lm.labels"])
  mmu_ids, mmu_labels = pr.mmu_prompt(parity_showo["mmu.image_tokens"], parity_tok.encode(texts["mmu"]), TINY, 16)
  np.testing.assert_array_equal(mmu_ids, parity_showo["mmu.input_ids"])
  np.testing.assert_array_equal(mmu_labels, parity_showo["mmu.labels"])
  all_ids = np.concatenate([parity_showo["t2i.input_ids"], lm_ids, mmu_ids])
  np.testing.assert_array_equal(all_ids, parity_showo["input_ids"])
  np.testing.assert_array_equal(np.concatenate([parity_showo["t2i.labels"], lm_labels, mmu_labels]),
                                parity_showo["labels"])


def test_gen_prompts_parity(parity_tok, parity_sampling, parity_showo):
  meta, trace = parity_sampling
  cond = trace["input_ids_cond_initial"]
  image = cond[:, 18:82]  # sample 0 all [MASK], sample 1 an inpainting case
  prompts = parity_tok.encode(meta["maskgit_trace_tiny_A"]["prompts"])
  np.testing.assert_array_equal(pr.t2i_gen_prompt(prompts, image, TINY, 16), cond)
  np.testing.assert_array_equal(pr.t2i_gen_prompt([[], []], image, TINY, 16), trace["input_ids_uncond_initial"])
  question = parity_tok.encode([pr.mmu_question_text("what do you see in this picture")])
  (prompt,) = pr.mmu_gen_prompt(parity_showo["t2i.image_tokens"][:1], question, TINY)
  np.testing.assert_array_equal(prompt, trace["mmu.prompt_ids"][0])


def test_masking_counts_parity(parity_showo, parity_sampling):
  meta, _ = parity_sampling
  table = meta["training_num_token_masked (round(N*cos(pi/2*t)).clamp(min=1))"]
  for n, rows in table.items():
    got = pr.num_masked([r["t"] for r in rows], int(n))
    np.testing.assert_array_equal(got, [r["num_token_masked"] for r in rows], err_msg=f"N={n}")
  t = parity_showo["t2i.timesteps"]
  counts = pr.num_masked(t, 64)
  np.testing.assert_array_equal(counts, parity_showo["t2i.image_mask"].sum(1))
  np.testing.assert_allclose(np.round(64 * parity_showo["t2i.mask_prob"]), counts)
  # The subset itself came from torch's RNG; any uniform draws give the same counts.
  rand = np.random.default_rng(0).random((4, 64))
  img = parity_showo["t2i.image_tokens"]
  masked, labels, mask = pr.mask_image_tokens_at(img, t, rand, TINY)
  np.testing.assert_array_equal(mask.sum(1), parity_showo["t2i.image_mask"].sum(1))
  np.testing.assert_array_equal(masked, np.where(mask, 174, img))
  np.testing.assert_array_equal(labels, np.where(mask, img, IG))


# ---------------------------------------------------------------------------------------------- literals


def test_t2i_literal():
  ids, labels = pr.t2i_prompt([[1], [9, 1], [1, 2, 3], [5]], [[MASK, 21]] * 4, [[20, IG]] * 4, SMALL, 4,
                              cond_drop=[False, False, False, True])
  np.testing.assert_array_equal(ids, [
      [PAD, T2I, 9, 1, 9, SOI, MASK, 21, EOI],
      [PAD, T2I, 9, 1, 9, SOI, MASK, 21, EOI],  # BOS not doubled
      [T2I, 9, 1, 2, 9, SOI, MASK, 21, EOI],  # cut to T tokens, EOS re-appended
      [PAD, PAD, T2I, 9, 9, SOI, MASK, 21, EOI],  # null prompt
  ])
  np.testing.assert_array_equal(labels[0], [IG, T2I, 9, 1, 9, SOI, 20, IG, EOI])
  np.testing.assert_array_equal(labels[3], [IG, IG, T2I, 9, 9, SOI, 20, IG, EOI])
  gen = pr.t2i_gen_prompt([[], [1, 2, 3]], [[MASK, MASK], [20, MASK]], SMALL, 4)
  np.testing.assert_array_equal(gen, [[PAD, PAD, T2I, 9, 9, SOI, MASK, MASK, EOI],
                                      [T2I, 9, 1, 2, 9, SOI, 20, MASK, EOI]])


def test_mmu_literal():
  ids, labels = pr.mmu_prompt([[20, 21], [22, 23], [20, 20]], [[1], [1, 2, 3], []], SMALL, 4)
  np.testing.assert_array_equal(ids, [[MMU, SOI, 20, 21, EOI, 9, 1, 9, PAD],
                                      [MMU, SOI, 22, 23, EOI, 9, 1, 2, 9],  # cut to T-1, EOS re-appended
                                      [MMU, SOI, 20, 20, EOI, 9, 9, PAD, PAD]])
  np.testing.assert_array_equal(labels, [[IG] * 5 + [9, 1, 9, IG], [IG] * 5 + [9, 1, 2, 9],
                                         [IG] * 5 + [9, 9, IG, IG]])
  prompts = pr.mmu_gen_prompt([[20, 21], [22, 23]], [[1, 2], [9, 3]], SPLIT)
  assert [p.tolist() for p in prompts] == [[MMU, SOI, 20, 21, EOI, 8, 1, 2], [MMU, SOI, 22, 23, EOI, 8, 9, 3]]
  np.testing.assert_array_equal(pr.left_pad([[1, 2], [3]], PAD), [[1, 2], [PAD, 3]])
  assert pr.mmu_question_text("why?") == "USER: \nwhy? ASSISTANT:"


def test_lm_literal():
  ids, labels = pr.lm_prompt([[1, 2], [1, 2, 3], [1, 2, 3, 4]], SPLIT, 5)
  np.testing.assert_array_equal(ids, [[8, 1, 2, 9, PAD], [8, 1, 2, 3, 9], [8, 1, 2, 3, 4]])  # no EOS when cut
  np.testing.assert_array_equal(labels, [[8, 1, 2, 9, IG], [8, 1, 2, 3, 9], [8, 1, 2, 3, 4]])


def test_llava_literal(small_tok):
  conv = [("hi", "yo"), ("ok", "hi")]
  ids, labels = pr.llava_prompt([[20, 21]], [conv], small_tok.encode_one, SMALL, 12)
  # "USER: hi ASSISTANT: yo<eot>USER: ok ASSISTANT: hi<eot>" = 1 3 2 | 4 9 | 1 5 2 | 3 9
  np.testing.assert_array_equal(ids[0], [MMU, SOI, 20, 21, EOI, 1, 3, 2, 4, 9, 1, 5, 2, 3, 9, PAD, PAD])
  np.testing.assert_array_equal(labels[0], [IG] * 5 + [IG, IG, IG, 4, 9, IG, IG, IG, 3, 9, IG, IG])
  ids, labels = pr.llava_prompt([[20, 21]], [conv], small_tok.encode_one, SMALL, 7)
  np.testing.assert_array_equal(ids[0, 5:], [1, 3, 2, 4, 9, 1, 5])  # cut, no EOS re-appended
  np.testing.assert_array_equal(labels[0, 5:], [IG, IG, IG, 4, 9, IG, IG])


def test_mixed_literal():
  segs = [[("text", [1, 2]), ("image", [20, 21]), ("text", [3]), ("image", [22])], [("text", [9, 4])]]
  ids, labels, img = pr.mixed_prompt(segs, SMALL, 12)
  np.testing.assert_array_equal(ids, [[9, 1, 2, SOI, 20, 21, EOI, 3, SOI, 22, EOI, 9],
                                      [9, 4, 9] + [PAD] * 9])
  np.testing.assert_array_equal(labels, [[9, 1, 2, SOI, IG, IG, IG, 3, SOI, IG, IG, 9], [9, 4, 9] + [IG] * 9])
  np.testing.assert_array_equal(img[0], [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0])
  assert not img[1].any()
  with pytest.raises(ValueError, match="mixed sample 0: 12 tokens do not fit seq_len=11"):
    pr.mixed_prompt(segs, SMALL, 11)
  with pytest.raises(ValueError, match="kind 'video'"):
    pr.mixed_prompt([[("video", [1])]], SMALL, 11)


def test_bad_ids_raise():
  with pytest.raises(ValueError, match=r"t2i text 1: id 10 at position 1"):
    pr.t2i_prompt([[1], [1, 10]], [[20, 21]] * 2, [[IG, IG]] * 2, SMALL, 4)
  with pytest.raises(ValueError, match=r"image_ids\[1, 0\]: id 5 is not an image token"):
    pr.t2i_gen_prompt([[1], [1]], [[20, 21], [5, 21]], SMALL, 4)
  with pytest.raises(ValueError, match=r"image_labels\[0, 1\]: 24"):
    pr.t2i_prompt([[1]], [[20, MASK]], [[IG, MASK]], SMALL, 4)
  with pytest.raises(ValueError, match=r"mmu text 0: id -1"):
    pr.mmu_prompt([[20, 21]], [[-1]], SMALL, 4)
  with pytest.raises(ValueError, match=r"lm text 0: id 99"):
    pr.lm_prompt([[99]], SMALL, 5)
  with pytest.raises(ValueError, match=r"mixed sample 0 segment 1\[0\]: id 25"):
    pr.mixed_prompt([[("text", [1]), ("image", [MASK + 1])]], SMALL, 9)
  with pytest.raises(ValueError, match=r"image_ids\[0, 0\]: id 24.*image token id \(\[20, 24\)\)$"):
    pr.mask_image_tokens_at([[MASK, 20]], [0.5], [[0.1, 0.2]], SMALL)
  with pytest.raises(ValueError, match=r"shape"):
    pr.t2i_gen_prompt([[1]], [20, 21], SMALL, 4)


# ---------------------------------------------------------------------------------------------- properties

_texts = st.lists(st.lists(st.integers(0, 7), max_size=12), min_size=1, max_size=4)


@PROPS
@given(texts=_texts, t=st.integers(3, 8), n=st.integers(1, 4), layout=st.sampled_from([SMALL, SPLIT]),
       data=st.data())
def test_t2i_properties(texts, t, n, layout, data):
  b = len(texts)
  drop = data.draw(st.lists(st.booleans(), min_size=b, max_size=b))
  code = np.asarray(data.draw(st.lists(st.integers(0, 3), min_size=b * n, max_size=b * n))).reshape(b, n)
  masked = np.asarray(data.draw(st.lists(st.booleans(), min_size=b * n, max_size=b * n))).reshape(b, n)
  img = layout.image_ids(code)
  ids, labels = pr.t2i_prompt(texts, np.where(masked, layout.mask_id, img), np.where(masked, img, IG), layout,
                              t, cond_drop=drop)
  assert ids.shape == labels.shape == (b, t + n + 3)
  np.testing.assert_array_equal(ids[:, t + 1], layout.soi_id)
  np.testing.assert_array_equal(ids[:, -1], layout.eoi_id)
  np.testing.assert_array_equal(ids[:, t + 2:-1], np.where(masked, layout.mask_id, img))
  np.testing.assert_array_equal(labels[:, t + 1:], np.concatenate(
      [ids[:, t + 1:t + 2], np.where(masked, img, IG), ids[:, -1:]], axis=1))
  np.testing.assert_array_equal(ids[:, t], layout.eos_id)  # EOS always closes the text block
  for i, text in enumerate(texts):
    block = ids[i, :t + 1].tolist()
    pads = block.count(layout.pad_id)
    assert block[:pads] == [layout.pad_id] * pads and layout.pad_id not in block[pads:]
    expected = [layout.t2i_id, layout.bos_id] + ([] if drop[i] else text) + [layout.eos_id]
    if len(expected) > t + 1:
      expected = expected[:t] + [layout.eos_id]
    assert block[pads:] == expected
    assert labels[i, :t + 1].tolist() == [IG] * pads + expected


@PROPS
@given(texts=_texts, t=st.integers(3, 8), n=st.integers(1, 4), layout=st.sampled_from([SMALL, SPLIT]))
def test_mmu_lm_properties(texts, t, n, layout):
  b = len(texts)
  img = layout.image_ids(np.arange(b * n).reshape(b, n) % 4)
  ids, labels = pr.mmu_prompt(img, texts, layout, t)
  assert ids.shape == (b, t + n + 3)
  np.testing.assert_array_equal(labels[:, :n + 3], IG)
  np.testing.assert_array_equal(ids[:, 2:n + 2], img)
  seq_len = t + n + 3
  lm_ids, lm_labels = pr.lm_prompt(texts, layout, seq_len)
  for i, text in enumerate(texts):
    part = ids[i, n + 3:].tolist()
    real = [x for x in part if x != layout.pad_id]
    assert part == real + [layout.pad_id] * (t - len(real))  # right padding
    assert real[0] == layout.bos_id and real[-1] == layout.eos_id  # EOS kept after truncation
    full = [layout.bos_id] + text + [layout.eos_id]
    assert real == (full if len(full) <= t else full[:t - 1] + [layout.eos_id])
    np.testing.assert_array_equal(labels[i, n + 3:], np.where(ids[i, n + 3:] == layout.pad_id, IG, ids[i, n + 3:]))
    # lm: truncated sequences end without EOS, others are BOS text EOS PAD…
    lm_full = [layout.bos_id] + text + [layout.eos_id]
    assert lm_ids[i].tolist() == (lm_full + [layout.pad_id] * (seq_len - len(lm_full)))[:seq_len]
    if len(lm_full) > seq_len:
      assert lm_ids[i, -1] != layout.eos_id
    np.testing.assert_array_equal(lm_labels[i], np.where(lm_ids[i] == layout.pad_id, IG, lm_ids[i]))


@PROPS
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 4), n=st.integers(1, 40),
       schedule=st.sampled_from(["cosine", "linear", "pow2", "sigmoid"]), min_rate=st.sampled_from([0.0, 0.3]))
def test_masking_properties(seed, b, n, schedule, min_rate):
  rng = np.random.default_rng(seed)
  img = TINY.image_ids(rng.integers(0, 64, (b, n)))
  masked, labels, mask = pr.mask_image_tokens(img, np.random.default_rng(seed), TINY, schedule, min_rate)
  t = np.random.default_rng(seed).random(b, dtype=np.float32)  # the same first draw
  counts = pr.num_masked(t, n, schedule, min_rate)
  np.testing.assert_array_equal(mask.sum(1), counts)
  assert (counts >= 1).all() and (counts <= n).all()
  if min_rate:
    assert (counts >= np.round(np.float32(n) * np.float32(min_rate))).all()
  np.testing.assert_array_equal(masked, np.where(mask, TINY.mask_id, img))
  np.testing.assert_array_equal(labels, np.where(mask, img, IG))


def test_cond_dropout_rate():
  drop = pr.cond_dropout([np.random.default_rng(i) for i in range(20000)], 0.1)
  assert drop.dtype == bool and abs(drop.mean() - 0.1) < 0.01
  assert not pr.cond_dropout([np.random.default_rng(i) for i in range(50)], 0.0).any()
