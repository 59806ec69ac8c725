"""Input pipelines: process-count independence, exact resume from the iterator state, corrupt records."""

import os

import numpy as np

from showo_jax.data import pipeline
from showo_jax.data import records
from showo_jax.training import prepare
from tests import train_fixtures

SIZES = {"t2i": 4, "lm": 2, "mmu": 2}


def _iterator(config, process_index=0, process_count=1):
  data = prepare.prepare_training_data(config, "/tmp/unused")
  return pipeline.MultiTaskIterator(pipeline.task_datasets(
      data.sources, SIZES, data.text_tokenizer, data.layout, config, seed=3, process_index=process_index,
      process_count=process_count))


def test_global_batch_does_not_depend_on_process_count(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path))
  single = _iterator(config)
  halves = [_iterator(config, p, 2) for p in range(2)]
  for _ in range(3):
    whole = next(single)
    parts = [next(h) for h in halves]
    for task, tid in (("t2i", 0), ("lm", 1), ("mmu", 2)):
      rows = whole["task_ids"] == tid
      joined = np.concatenate([p["input_ids"][p["task_ids"] == tid] for p in parts])
      np.testing.assert_array_equal(joined, whole["input_ids"][rows], err_msg=task)
      joined = np.concatenate([p["labels"][p["task_ids"] == tid] for p in parts])
      np.testing.assert_array_equal(joined, whole["labels"][rows], err_msg=task)


def test_iterator_state_resumes_the_exact_next_batch(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path))
  it = _iterator(config)
  next(it), next(it)
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  fresh = _iterator(config)
  fresh.set_state(state)
  for w in want:
    got = next(fresh)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])


def test_batches_follow_the_task_layout(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path))
  batch = next(_iterator(config))
  np.testing.assert_array_equal(batch["task_ids"], [0, 0, 0, 0, 1, 1, 2, 2])
  layout = prepare.prepare_training_data(config, "/tmp/unused").layout
  t = config.data.max_text_len
  assert (batch["input_ids"][:4, t + 1] == layout.soi_id).all() and (batch["input_ids"][:4, -1] == layout.eoi_id).all()
  masked = batch["input_ids"][:4, t + 2:-1] == layout.mask_id
  assert masked.any(axis=1).all()  # at least one masked image token per t2i sample
  np.testing.assert_array_equal(batch["labels"][:4, t + 2:-1] != -100, masked)
  assert (batch["input_ids"][6:, 0] == layout.mmu_id).all()


def test_corrupt_records_are_counted_and_skipped(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path))
  folder = str(tmp_path / "broken")
  good = records.RecordSource(config.data.t2i_records)
  records.write_records(folder, (good[i] for i in range(len(good))), num_shards=1)
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  # Rewrite the shard with every 4th record replaced by garbage bytes.
  path = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".array_record")][0]
  from flax import serialization  # pylint: disable=g-import-not-at-top
  w = ArrayRecordWriter(path, "group_size:1")
  for i in range(len(good)):
    w.write(b"\xc1not msgpack" if i % 4 == 0 else serialization.msgpack_serialize(
        {k: (np.asarray(v) if not isinstance(v, (str, int)) else v) for k, v in good[i].items()}))
  w.close()
  config.data.t2i_records = folder
  config.data.mmu_records = folder
  data = prepare.prepare_training_data(config, "/tmp/unused")
  it = pipeline.MultiTaskIterator(pipeline.task_datasets(data.sources, SIZES, data.text_tokenizer, data.layout,
                                                         config, seed=0))
  for _ in range(5):
    batch = next(it)
    assert batch["input_ids"].shape[0] == 8
  assert data.sources["t2i"].num_corrupt > 0


def test_mixture_within_a_task_follows_the_weights(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path))
  other = str(tmp_path / "other")
  rng = np.random.default_rng(1)
  records.write_records(other, ({"image_tokens": rng.integers(0, 64, 16).astype(np.int16), "caption": "x",
                                 "question": "q", "answer": "zzz"} for _ in range(40)))
  config.data.mmu_records = f"{config.data.mmu_records},{other}"
  config.data.mmu_weights = "1,3"
  data = prepare.prepare_training_data(config, "/tmp/unused")
  order = pipeline._global_order(data.sources["mmu"], 0)  # pylint: disable=protected-access
  from_other = np.mean([order[i]["caption"] == "x" for i in range(400)])
  assert abs(from_other - 0.75) < 0.05


def test_mmu_image_token_noise_replaces_about_that_share(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path))
  clean = next(_iterator(config))
  config.data.mmu_image_token_noise = 0.5
  noisy = next(_iterator(config))
  layout = prepare.prepare_training_data(config, "/tmp/unused").layout
  mmu = clean["task_ids"] == 2
  n = config.data.num_image_tokens
  image = slice(2, 2 + n)  # [MMU] [SOI] image [EOI] text
  a, b = clean["input_ids"][mmu][:, image], noisy["input_ids"][mmu][:, image]
  assert ((b >= layout.image_offset) & (b < layout.image_offset + layout.codebook_size)).all()
  changed = (a != b).mean()
  assert 0.2 < changed < 0.6  # 0.5 replaced, of which 1/64 by the same code
  np.testing.assert_array_equal(np.delete(clean["input_ids"][mmu], np.s_[2:2 + n], 1),
                                np.delete(noisy["input_ids"][mmu], np.s_[2:2 + n], 1))  # text untouched
  np.testing.assert_array_equal(clean["input_ids"][~mmu], noisy["input_ids"][~mmu])  # other tasks untouched


def _t2i_rows(config, num_batches: int, rows: int = 64):
  """t2i input ids of the first batches of the training pipeline, [num_batches * rows, L]."""
  data = prepare.prepare_training_data(config, "/tmp/unused")
  it = iter(pipeline.task_datasets(data.sources, {"t2i": rows}, data.text_tokenizer, data.layout, config,
                                   seed=0)["t2i"])
  return np.concatenate([next(it)["input_ids"] for _ in range(num_batches)]), data.layout


def _null_block(layout, t):
  """The CFG null prompt's text block, left-padded to T + 1: [PAD]*(T−2), <|t2i|>, BOS, EOS (SPEC §3.1)."""
  return [layout.pad_id] * (t - 2) + [layout.t2i_id, layout.bos_id, layout.eos_id]


def test_condition_dropout_in_the_pipeline(tmp_path):
  """The share of t2i rows given the null prompt is within a 4-sigma binomial bound of loss.cond_dropout_prob;
  a dropped row is exactly the null-prompt sequence around its own image block; 0 drops nothing."""
  config = train_fixtures.tiny_config(str(tmp_path))
  t = config.data.max_text_len
  config.loss.cond_dropout_prob = 0.3
  ids, layout = _t2i_rows(config, 40)  # 2,560 rows
  null = np.array(_null_block(layout, t))
  dropped = (ids[:, :t + 1] == null).all(axis=1)
  n, p = len(ids), 0.3
  assert abs(dropped.mean() - p) <= 4 * np.sqrt(p * (1 - p) / n), dropped.mean()
  # Dropped and kept rows alike: <|soi|>, the N image tokens, <|eoi|> after the text block.
  assert (ids[:, t + 1] == layout.soi_id).all() and (ids[:, -1] == layout.eoi_id).all()
  # A kept row carries its caption: BOS then text ids, never the bare null block.
  kept = ids[~dropped, :t + 1]
  assert ((kept == layout.bos_id).any(axis=1) & ((kept < layout.llm_vocab_size) &
                                                 (kept != layout.bos_id)).any(axis=1)).all()
  config.loss.cond_dropout_prob = 0.0
  ids, _ = _t2i_rows(config, 10)
  assert not (ids[:, :t + 1] == null).all(axis=1).any()
  config.loss.cond_dropout_prob = 1.0
  ids, _ = _t2i_rows(config, 2)
  assert (ids[:, :t + 1] == null).all(axis=1).all()


def test_an_mmu_answer_cut_by_the_text_budget_warns_once(tmp_path, caplog):
  """A budget that holds BOS + "USER: \\nWhat digit is this? ASSISTANT: x" + EOS exactly: a longer answer is cut
  (it comes last), which is said once."""
  config = train_fixtures.tiny_config(str(tmp_path))
  data = prepare.prepare_training_data(config, "/tmp/unused")
  record = dict(data.sources["mmu"][0])
  config.data.max_text_len = len(data.text_tokenizer.encode([pipeline.mmu_text(dict(record, answer="x"))])[0]) + 2
  build = pipeline._MMUBatch(data.text_tokenizer, data.layout, config.data)  # pylint: disable=protected-access
  rngs = [np.random.default_rng(0)]
  for answer, warns in (("x", False), ("a very long answer indeed", True), ("another long answer again", False)):
    caplog.clear()
    build(([dict(record, answer=answer)], rngs))
    assert ("its answer is lost; raise max_text_len" in caplog.text) == warns, answer
