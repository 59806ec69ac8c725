"""Omni-attention masks: official parity masks, hand-written small masks, jit, properties, and the dense
builders and the compact spans against a reference written position by position from SPEC."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from showo_jax.models import omni_mask as om
from showo_jax.models.vocab import VocabLayout
from tests import numpy_reference

TINY = VocabLayout(llm_vocab_size=100, codebook_size=64, bos_id=99, eos_id=99)
# pad 10, soi 11, eoi 12, t2i 15, mmu 16, image codes 20…23, [MASK] 24.
SMALL = VocabLayout(llm_vocab_size=10, codebook_size=4, bos_id=9, eos_id=9)
PAD, SOI, EOI, T2I, MMU, MASK = 10, 11, 12, 15, 16, 24


def _grid(*rows: str) -> np.ndarray:
  """Hand-written mask: one string of 0/1 per query row."""
  return np.array([[c == "1" for c in r.replace(" ", "")] for r in rows])


def _np(x):
  return np.asarray(x)


# ---------------------------------------------------------------------------------------------- parity


def test_parity_per_task(parity_showo):
  allowed = parity_showo["attention_allowed"][:, 0]  # [8, 83, 83]
  np.testing.assert_array_equal(_np(om.predict_next_mask(parity_showo["t2i.input_ids"], TINY, True)), allowed[:4])
  np.testing.assert_array_equal(_np(om.predict_next_mask(parity_showo["lm.input_ids"], TINY, False)), allowed[4:6])
  np.testing.assert_array_equal(_np(om.mmu_mask(parity_showo["mmu.input_ids"], TINY)), allowed[6:])
  # The per-task pieces carry the same masks as the concatenated batch.
  np.testing.assert_array_equal(_np(om.to_allowed(parity_showo["t2i.attention_mask"])), allowed[:4])
  np.testing.assert_array_equal(_np(om.to_allowed(parity_showo["mmu.attention_mask"])), allowed[6:])


def test_parity_concatenated_batch(parity_showo):
  allowed = parity_showo["attention_allowed"][:, 0]
  got = _np(om.omni_attention_mask(parity_showo["input_ids"], [0, 0, 0, 0, 1, 1, 2, 2], TINY))
  np.testing.assert_array_equal(got, allowed)
  np.testing.assert_array_equal(_np(om.to_allowed(parity_showo["attention_mask"])), allowed)
  np.testing.assert_array_equal(_np(om.to_allowed(parity_showo["attention_allowed"])), allowed)
  # The SPEC reference that the builders are checked against below gives the official masks too.
  np.testing.assert_array_equal(numpy_reference.omni_allowed(parity_showo["input_ids"], [0, 0, 0, 0, 1, 1, 2, 2],
                                                             TINY), allowed)
  # Row 1 is the left-padded null prompt: its image rows see <|t2i|>, BOS, EOS and the image block only.
  np.testing.assert_array_equal(np.flatnonzero(allowed[1, 50]), np.arange(14, 83))


def test_parity_generation_masks(parity_sampling):
  _, trace = parity_sampling
  ids = trace["step0.model_input_ids"]  # cond rows then uncond rows
  np.testing.assert_array_equal(_np(om.predict_next_mask(ids, TINY, True)), _np(om.to_allowed(trace["attention_mask"])))
  np.testing.assert_array_equal(_np(om.mmu_mask(trace["mmu.prompt_ids"], TINY)),
                                _np(om.to_allowed(trace["mmu.prompt_attention_mask"])))


# ---------------------------------------------------------------------------------------------- literals

T2I_IDS = [PAD, T2I, 9, 1, 9, SOI, MASK, 21, EOI]
T2I_MASK = _grid("100000000",
                 "010000000",
                 "011000000",
                 "011100000",
                 "011110000",
                 "011111111",
                 "011111111",
                 "011111111",
                 "011111111")
LM_IDS = [9, 1, 2, 3, 9, PAD, PAD, PAD, PAD]
LM_MASK = np.tril(np.ones((9, 9), bool))
MMU_IDS = [MMU, SOI, 20, 21, EOI, 9, 1, 9, PAD]
MMU_MASK = _grid("111110000",
                 "111110000",
                 "111110000",
                 "111110000",
                 "111110000",
                 "111111000",
                 "111111100",
                 "111111110",
                 "111111111")
MIXED_IDS = [9, 1, SOI, 20, 21, EOI, 2, 9, PAD]
MIXED_MASK = _grid("100000000",
                   "110000000",
                   "111111000",
                   "111111000",
                   "111111000",
                   "111111000",
                   "111111100",
                   "111111110",
                   "000000001")


def test_t2i_literal():
  np.testing.assert_array_equal(_np(om.predict_next_mask([T2I_IDS], SMALL, remove_pad=True))[0], T2I_MASK)
  # Without pad removal, text rows are plain causal and image rows see everything.
  plain = _np(om.predict_next_mask([T2I_IDS], SMALL, remove_pad=False))[0]
  np.testing.assert_array_equal(plain[:5], np.tril(np.ones((9, 9), bool))[:5])
  assert plain[5:].all()


def test_lm_and_mmu_literal():
  np.testing.assert_array_equal(_np(om.predict_next_mask([LM_IDS], SMALL, remove_pad=False))[0], LM_MASK)
  np.testing.assert_array_equal(_np(om.mmu_mask([MMU_IDS], SMALL))[0], MMU_MASK)
  # Each row uses its own first <|eoi|>; a row without one is causal.
  shifted = [MMU, SOI, 20, EOI, 9, 1, 2, 9, PAD]
  both = _np(om.mmu_mask([MMU_IDS, shifted, LM_IDS], SMALL))
  np.testing.assert_array_equal(both[0], MMU_MASK)
  assert both[1][:4, :4].all() and not both[1][:4, 4:].any() and both[1][4, :5].all()
  np.testing.assert_array_equal(both[2], LM_MASK)


def test_mixed_two_images():
  ids = [9, 1, SOI, 20, 21, EOI, 2, SOI, 22, EOI, 9, PAD]
  expected = _grid("100000000000",
                   "110000000000",
                   "111111000000",
                   "111111000000",
                   "111111000000",
                   "111111000000",
                   "111111100000",
                   "111111111100",
                   "111111111100",
                   "111111111100",
                   "111111111110",
                   "000000000001")
  np.testing.assert_array_equal(_np(om.mixed_mask([ids], SMALL))[0], expected)
  np.testing.assert_array_equal(numpy_reference.omni_allowed([ids], [om.TASK_MIXED], SMALL)[0], expected)
  # A left pad is invisible to every real token.
  left = _np(om.mixed_mask([[PAD] + ids[:-1]], SMALL))[0]
  np.testing.assert_array_equal(left[1:, 1:], expected[:-1, :-1])
  assert not left[1:, 0].any() and left[0].tolist() == [True] + [False] * 11


def test_mixed_task_batch():
  ids = np.array([T2I_IDS, MMU_IDS, LM_IDS, MIXED_IDS, T2I_IDS])
  got = _np(om.omni_attention_mask(ids, [om.TASK_T2I, om.TASK_MMU, om.TASK_LM, om.TASK_MIXED, om.TASKS["lm"]],
                                   SMALL))
  assert got.shape == (5, 9, 9) and got.dtype == bool
  for row, expected in enumerate([T2I_MASK, MMU_MASK, LM_MASK, MIXED_MASK, np.tril(np.ones((9, 9), bool))]):
    np.testing.assert_array_equal(got[row], expected, err_msg=f"row {row}")
  reference = numpy_reference.omni_allowed(ids, [0, 2, 1, 3, 1], SMALL)
  np.testing.assert_array_equal(reference, got)
  np.testing.assert_array_equal(_np(om.expand(om.omni_spans(ids, [0, 2, 1, 3, 1], SMALL))), reference)
  # Both forms refuse an unknown task rather than treating it as mixed.
  for build in (om.omni_attention_mask, om.omni_spans):
    with pytest.raises(ValueError, match=r"task_ids\[1\] = 7 is not one of"):
      build(ids[:2], [0, 7], SMALL)
    with pytest.raises(ValueError, match="2 entries for 5"):
      build(ids, [0, 1], SMALL)


def test_runs_under_jit():
  ids = jnp.asarray([T2I_IDS, MMU_IDS, LM_IDS, MIXED_IDS])
  tasks = jnp.asarray([0, 2, 1, 3])
  fn = jax.jit(lambda i, t: om.additive_mask(om.omni_attention_mask(i, t, SMALL), jnp.bfloat16))
  out = fn(ids, tasks)
  assert out.dtype == jnp.bfloat16 and out.shape == (4, 9, 9)
  np.testing.assert_array_equal(_np(om.to_allowed(out)), _np(om.omni_attention_mask(ids, tasks, SMALL)))
  np.testing.assert_array_equal(_np(om.to_allowed(out))[3], MIXED_MASK)


def test_additive_and_to_allowed():
  allowed = jnp.asarray(np.stack([T2I_MASK, MMU_MASK]))
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
    add = _np(om.additive_mask(allowed, dtype).astype(jnp.float32))
    assert np.isfinite(add).all() and (add[_np(allowed)] == 0).all()
    np.testing.assert_allclose(add[~_np(allowed)], -0.7 * float(jnp.finfo(dtype).max), rtol=1e-2)
    np.testing.assert_array_equal(_np(om.to_allowed(om.additive_mask(allowed, dtype)[:, None])), _np(allowed))
  official = np.where(_np(allowed), 0.0, np.float32(np.iinfo(np.int64).min))[:, None]  # [B, 1, L, L]
  np.testing.assert_array_equal(_np(om.to_allowed(official)), _np(allowed))
  np.testing.assert_array_equal(_np(om.to_allowed(np.where(_np(allowed), 0.0, -np.inf))), _np(allowed))
  with pytest.raises(ValueError, match="ambiguous"):
    om.to_allowed(np.ones((1, 3, 3), np.int32))
  with pytest.raises(ValueError, match=r"\[B, 1, L, L\]"):
    om.to_allowed(np.ones((1, 2, 3, 3), bool))


# ---------------------------------------------------------------------------------------------- properties

# Mostly special tokens so that pads, blocks and unbalanced soi/eoi show up often.
_token = st.sampled_from([1, 9, PAD, PAD, SOI, EOI, T2I, MMU, 20, MASK])


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.lists(_token, min_size=16, max_size=16), min_size=4, max_size=4),
       tasks=st.lists(st.integers(0, 3), min_size=4, max_size=4))
def test_no_row_fully_blocked(ids, tasks):
  ids = np.asarray(ids)
  mask = _np(om.omni_attention_mask(ids, tasks, SMALL))  # [4, 16, 16]
  assert mask.any(axis=-1).all()
  for b, task in enumerate(tasks):
    if task != om.TASK_T2I:  # t2i pad rows inside a block are the only ones that may not see themselves
      assert np.diagonal(mask[b]).all()
    if task in (om.TASK_LM, om.TASK_MMU):  # causal part always present
      assert mask[b][np.tril(np.ones((16, 16), bool))].all()
    if task == om.TASK_MIXED:  # real tokens never see pads and text never sees the future
      real = ids[b] != PAD
      assert not mask[b][np.ix_(real, ~real)].any()
      in_block = _np(om._in_image(jnp.asarray(ids[b:b + 1]), SMALL))[0]  # pylint: disable=protected-access
      text = ~in_block
      assert not mask[b][np.ix_(text, np.arange(16))][np.triu(np.ones((16, 16), bool), 1)[text]].any()


# ---------------------------------------------------------------------------------------------- compact form


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.lists(_token, min_size=16, max_size=16), min_size=4, max_size=4),
       tasks=st.lists(st.integers(0, 3), min_size=4, max_size=4))
def test_dense_and_spans_equal_the_reference(ids, tasks):
  """The dense builders and the O(L) form that fused kernels read both give the mask that
  numpy_reference.omni_allowed decides position by position from SPEC, row for row, also for malformed
  sequences (pads anywhere, unbalanced <|soi|>/<|eoi|>). Neither library form is built from the other."""
  ids = np.asarray(ids)
  want = numpy_reference.omni_allowed(ids, tasks, SMALL)
  np.testing.assert_array_equal(_np(om.omni_attention_mask(ids, tasks, SMALL)), want)
  np.testing.assert_array_equal(_np(om.expand(om.omni_spans(ids, tasks, SMALL))), want)
  t2i = numpy_reference.omni_allowed(ids, [om.TASK_T2I] * len(ids), SMALL)
  np.testing.assert_array_equal(_np(om.expand(om.t2i_spans(ids, SMALL))), t2i)
  np.testing.assert_array_equal(_np(om.predict_next_mask(ids, SMALL)), t2i)


def test_spans_on_the_official_batch(parity_showo):
  allowed = parity_showo["attention_allowed"][:, 0]
  spans = om.omni_spans(parity_showo["input_ids"], [0, 0, 0, 0, 1, 1, 2, 2], TINY)
  np.testing.assert_array_equal(_np(om.expand(spans)), allowed)
  # Row 1 (left-padded null prompt, pads 0…13): text row 16 sees (13, 16], image rows every non-pad key.
  assert (int(spans.start[1, 16]), int(spans.end[1, 16]), bool(spans.skip_pad[1, 16])) == (14, 16, False)
  assert (int(spans.start[1, 50]), int(spans.end[1, 50]), bool(spans.skip_pad[1, 50])) == (0, 82, True)
  rows = spans.rows(40, 45)
  np.testing.assert_array_equal(_np(om.expand(rows)), allowed[:, 40:45])


def test_mixed_block_runs_to_the_next_eoi():
  """A stray <|eoi|> after a closed block starts nothing: rows of the block see up to their own <|eoi|>."""
  ids = [[1, SOI, 20, EOI, 1, EOI, 1]]
  got = _np(om.mixed_mask(ids, SMALL))[0]
  expected = _grid("1000000", "1111000", "1111000", "1111000", "1111100", "1111110", "1111111")
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(numpy_reference.omni_allowed(ids, [om.TASK_MIXED], SMALL)[0], expected)
