"""Training input pipelines: one grain pipeline per task, zipped into fixed-composition mixed batches.

Every step's batch is `[t2i (B_t2i) ; lm (B_lm) ; mmu (B_mmu)]` (SPEC §3.6) with `task_ids` saying which is which.
Each task reads its own source with its own shuffle seed, repeats forever, batches records first and then builds
prompts for the whole batch (tokenize text on the fly, mask image tokens, condition dropout) in one seeded
random map, so a batch depends only on (seed, step) and the iterator state is a few integers (checkpointed).
Sources are sharded per process: each process builds its share of every task's rows.
"""

import json

import grain
import numpy as np

from showo_jax.data import prompting
from showo_jax.models import omni_mask

TASK_ORDER = ("t2i", "lm", "mmu")
_TASK_IDS = {"t2i": omni_mask.TASK_T2I, "lm": omni_mask.TASK_LM, "mmu": omni_mask.TASK_MMU}


def _map_dataset(source, batch_size: int, seed: int, process_index: int, process_count: int):
  if batch_size % process_count:
    raise ValueError(f"per-task batch {batch_size} is not divisible by the {process_count} processes")
  ds = grain.MapDataset.source(source)[process_index::process_count]
  return ds.seed(seed).shuffle().repeat().batch(batch_size // process_count, drop_remainder=True, batch_fn=list)


def _valid(records):
  """Drops records the source could not decode (RecordSource returns None and counts them)."""
  kept = [r for r in records if r is not None]
  if not kept:
    raise ValueError("a whole batch of records was corrupt")
  while len(kept) < len(records):  # keep the batch shape static: repeat valid records
    kept.append(kept[len(kept) % max(len(kept), 1)])
  return kept


def mmu_text(record: dict) -> str:
  """The understanding target of a record: a question/answer pair, or captioning (SPEC §3.3)."""
  if "question" in record:
    return f"{prompting.mmu_question_text(record['question'])} {record['answer']}"
  return f"{prompting.mmu_question_text('Please describe this image.')} {record['caption']}"


class _T2IBatch:
  def __init__(self, tokenizer, layout, data_cfg, loss_cfg):
    self.tokenizer, self.layout, self.data_cfg, self.loss_cfg = tokenizer, layout, data_cfg, loss_cfg

  def __call__(self, records, rng: np.random.Generator):
    records = _valid(records)
    images = self.layout.image_ids(np.stack([np.asarray(r["image_tokens"], np.int64) for r in records]))
    masked, labels, _ = prompting.mask_image_tokens(images, rng, self.layout, self.loss_cfg.mask_schedule,
                                                    self.loss_cfg.min_masking_rate)
    drop = prompting.cond_dropout(rng, len(records), self.loss_cfg.cond_dropout_prob)
    text = self.tokenizer.encode([str(r["caption"]) for r in records])
    ids, lab = prompting.t2i_prompt(text, masked, labels, self.layout, self.data_cfg.max_text_len, cond_drop=drop)
    return {"input_ids": ids, "labels": lab}


class _MMUBatch:
  def __init__(self, tokenizer, layout, data_cfg):
    self.tokenizer, self.layout, self.data_cfg = tokenizer, layout, data_cfg

  def __call__(self, records, rng):
    del rng
    records = _valid(records)
    images = self.layout.image_ids(np.stack([np.asarray(r["image_tokens"], np.int64) for r in records]))
    text = self.tokenizer.encode([mmu_text(r) for r in records])
    ids, lab = prompting.mmu_prompt(images, text, self.layout, self.data_cfg.max_text_len)
    return {"input_ids": ids, "labels": lab}


class _LMBatch:
  """A random character window of each document (official: 8000 chars, newlines removed), tokenized."""

  def __init__(self, tokenizer, layout, seq_len: int, window_chars: int):
    self.tokenizer, self.layout, self.seq_len, self.window = tokenizer, layout, seq_len, window_chars

  def __call__(self, records, rng):
    texts = []
    for r in _valid(records):
      doc = (r["text"] if isinstance(r, dict) else str(r)).replace("\n", " ")
      start = int(rng.integers(0, max(len(doc) - self.window, 0) + 1))
      texts.append(doc[start:start + self.window])
    ids, lab = prompting.lm_prompt(self.tokenizer.encode(texts), self.layout, self.seq_len)
    return {"input_ids": ids, "labels": lab}


def task_datasets(sources: dict, batch_sizes: dict, tokenizer, layout, config, *, seed: int,
                  process_index: int = 0, process_count: int = 1) -> dict:
  """{task: grain IterDataset of per-process batches} for the tasks with a non-zero batch size."""
  from showo_jax import config_lib  # pylint: disable=g-import-not-at-top
  builders = {
      "t2i": _T2IBatch(tokenizer, layout, config.data, config.loss),
      "mmu": _MMUBatch(tokenizer, layout, config.data),
      "lm": _LMBatch(tokenizer, layout, config_lib.seq_len(config), int(config.data.get("lm_window_chars", 8000))),
  }
  out = {}
  for i, task in enumerate(TASK_ORDER):
    if batch_sizes.get(task, 0) <= 0:
      continue
    ds = _map_dataset(sources[task], batch_sizes[task], seed + 1000 * i, process_index, process_count)
    out[task] = ds.random_map(builders[task], seed=seed + 1000 * i + 1).to_iter_dataset()
  return out


class MultiTaskIterator:
  """Zips the per-task iterators into one mixed batch per step; its state is checkpointable with grain's
  Orbax handler (get_state/set_state on JSON bytes)."""

  def __init__(self, datasets: dict):
    self._datasets = datasets
    self._iters = {t: iter(ds) for t, ds in datasets.items()}

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    parts = [(t, next(self._iters[t])) for t in TASK_ORDER if t in self._iters]
    batch = {k: np.concatenate([p[k] for _, p in parts]).astype(np.int32) for k in ("input_ids", "labels")}
    batch["task_ids"] = np.concatenate([np.full(len(p["input_ids"]), _TASK_IDS[t], np.int32) for t, p in parts])
    return batch

  def get_state(self) -> bytes:
    return json.dumps({t: it.get_state() for t, it in self._iters.items()}).encode()

  def set_state(self, state: bytes):
    for t, s in json.loads(state.decode()).items():
      self._iters[t].set_state(s)

  def start_prefetch(self):  # called by grain's checkpoint handler after a restore
    pass
