"""Training input pipelines: one grain pipeline per task, zipped into fixed-composition mixed batches.

Every step's batch is `[t2i (B_t2i) ; lm (B_lm) ; mmu (B_mmu)]` (SPEC §3.6) with `task_ids` saying which is which.
Each task reads its own source through one global shuffle (reshuffled every epoch, the same on every process):
global step s of a task holds records s·B … s·B + B − 1 of that order, and process p of n builds rows
[p·B/n, (p+1)·B/n) of it — tokenizing text on the fly, masking image tokens, dropping conditions — with one random
stream per (seed, step, global row). A global batch is therefore the same whatever the number of processes
or devices, and the iterator state is one integer per task (checkpointed with the model).
"""

import json
import logging

import grain
import numpy as np

from showo_jax.config import showo as showo_config
from showo_jax.data import prompting
from showo_jax.models import omni_mask

TASK_ORDER = ("t2i", "lm", "mmu")
_TASK_IDS = {"t2i": omni_mask.TASK_T2I, "lm": omni_mask.TASK_LM, "mmu": omni_mask.TASK_MMU}


def _row_rngs(seed: int, step: int, first_row: int, count: int):
  return [np.random.default_rng((seed, step, first_row + r)) for r in range(count)]


class _LocalRows:
  """Global step index → (records of this process's rows, their random streams)."""

  def __init__(self, records, batch_size: int, seed: int, process_index: int, process_count: int):
    if batch_size % process_count:
      raise ValueError(f"per-task batch {batch_size} is not divisible by the {process_count} processes")
    self.records, self.batch_size, self.seed = records, batch_size, seed
    self.local = batch_size // process_count
    self.first = process_index * self.local

  def __call__(self, step: int):
    start = step * self.batch_size + self.first
    rows = [self.records[start + r] for r in range(self.local)]
    return rows, _row_rngs(self.seed, step, self.first, self.local)


def _global_order(source, seed: int):
  """One shuffled, endlessly repeated order of a source, or of a weighted mixture [(source, weight), …]."""
  if isinstance(source, Mixture):
    parts = [grain.MapDataset.source(s).seed(seed + 7 * i).shuffle().repeat() for i, s in enumerate(source.sources)]
    return grain.MapDataset.mix(parts, list(source.weights))
  return grain.MapDataset.source(source).seed(seed).shuffle().repeat()


class Mixture:
  """Several sources of one task, sampled in proportion to `weights` (deterministic interleaving)."""

  def __init__(self, sources, weights=None):
    self.sources = list(sources)
    self.weights = list(weights) if weights else [1.0] * len(self.sources)
    if len(self.weights) != len(self.sources) or min(self.weights) <= 0:
      raise ValueError(f"mixture weights {self.weights} must be positive, one per source ({len(self.sources)})")

  @property
  def num_corrupt(self) -> int:
    return sum(getattr(s, "num_corrupt", 0) for s in self.sources)


def _valid(records):
  """Drops records the source could not decode (RecordSource returns None and counts them)."""
  kept = [r for r in records if r is not None]
  if not kept:
    raise ValueError("a whole batch of records was corrupt")
  n = len(kept)
  return kept + [kept[i % n] for i in range(len(records) - n)]  # static batch shape: repeat valid records


def mmu_text(record: dict) -> str:
  """The understanding target of a record: a question/answer pair, or captioning (SPEC §3.3)."""
  if "question" in record:
    return f"{prompting.mmu_question_text(record['question'])} {record['answer']}"
  return f"{prompting.mmu_question_text('Please describe this image.')} {record['caption']}"


class _T2IBatch:
  def __init__(self, tokenizer, layout, data_cfg, loss_cfg):
    self.tokenizer, self.layout, self.data_cfg, self.loss_cfg = tokenizer, layout, data_cfg, loss_cfg

  def __call__(self, batch):
    records, rngs = batch
    records = _valid(records)
    images = self.layout.image_ids(np.stack([np.asarray(r["image_tokens"], np.int64) for r in records]))
    cfg = self.loss_cfg
    masked, labels = zip(*[prompting.mask_image_tokens(img[None], rng, self.layout, cfg.mask_schedule,
                                                       cfg.min_masking_rate)[:2] for img, rng in zip(images, rngs)])
    masked, labels = np.concatenate(masked), np.concatenate(labels)
    drop = prompting.cond_dropout(rngs, cfg.cond_dropout_prob)
    uncaptioned = [r for r in records if "caption" not in r]  # preflight checks record folders; this, the rest
    if uncaptioned:
      raise ValueError(f"a t2i record without a caption (fields {sorted(uncaptioned[0])}): text-to-image sources "
                       "need a caption on every record")
    text = self.tokenizer.encode([str(r["caption"]) for r in records])
    ids, lab = prompting.t2i_prompt(text, masked, labels, self.layout, self.data_cfg.max_text_len, cond_drop=drop)
    return {"input_ids": ids, "labels": lab}


class _MMUBatch:
  """Captioning / QA records through `mmu_prompt`; records carrying a LLaVA `conversation` (a JSON list of
  [question, answer] pairs, data/builders/llava.py) through `llava_prompt` (labels on the answers only)."""

  def __init__(self, tokenizer, layout, data_cfg):
    self.tokenizer, self.layout, self.data_cfg = tokenizer, layout, data_cfg
    self._warned = False

  def __call__(self, batch):
    records = _valid(batch[0])
    images = self.layout.image_ids(np.stack([np.asarray(r["image_tokens"], np.int64) for r in records]))
    noise = float(self.data_cfg.get("mmu_image_token_noise", 0.0))
    if noise > 0:  # regularisation: each image token replaced by a random code with probability `noise`
      for row, rng in zip(images, batch[1]):
        replace = rng.random(row.shape) < noise
        row[replace] = self.layout.image_offset + rng.integers(0, self.layout.codebook_size, int(replace.sum()))
    chats = [i for i, r in enumerate(records) if "conversation" in r]
    plain = [i for i, r in enumerate(records) if "conversation" not in r]
    t = self.data_cfg.max_text_len
    ids = np.empty((len(records), images.shape[1] + 3 + t), np.int32)
    lab = np.empty_like(ids)
    if plain:
      text = self.tokenizer.encode([mmu_text(records[i]) for i in plain])
      longest = max(len(x) for x in text) + 2  # BOS and EOS
      if longest > t and not self._warned:  # the answer, at the end, is what a cut loses
        self._warned = True
        logging.warning("an mmu text of %d ids (BOS and EOS included) is cut to config.data.max_text_len = %d: "
                        "its answer is lost; raise max_text_len", longest, t)
      ids[plain], lab[plain] = prompting.mmu_prompt(images[plain], text, self.layout, t)
    if chats:
      turns = [[tuple(pair) for pair in json.loads(records[i]["conversation"])] for i in chats]
      ids[chats], lab[chats] = prompting.llava_prompt(images[chats], turns, self.tokenizer.encode_one, self.layout, t)
    return {"input_ids": ids, "labels": lab}


class _LMBatch:
  """A random character window of each document (official: 8000 chars, newlines removed), tokenized."""

  def __init__(self, tokenizer, layout, seq_len: int, window_chars: int):
    self.tokenizer, self.layout, self.seq_len, self.window = tokenizer, layout, seq_len, window_chars

  def __call__(self, batch):
    texts = []
    for r, rng in zip(_valid(batch[0]), batch[1]):
      doc = (r["text"] if isinstance(r, dict) else str(r)).replace("\n", " ")
      start = int(rng.integers(0, max(len(doc) - self.window, 0) + 1))
      texts.append(doc[start:start + self.window])
    ids, lab = prompting.lm_prompt(self.tokenizer.encode(texts), self.layout, self.seq_len)
    return {"input_ids": ids, "labels": lab}


def task_datasets(sources: dict, batch_sizes: dict, tokenizer, layout, config, *, seed: int,
                  process_index: int = 0, process_count: int = 1) -> dict:
  """{task: grain IterDataset of per-process batches} for the tasks with a non-zero batch size."""
  builders = {
      "t2i": _T2IBatch(tokenizer, layout, config.data, config.loss),
      "mmu": _MMUBatch(tokenizer, layout, config.data),
      "lm": _LMBatch(tokenizer, layout, showo_config.seq_len(config), int(config.data.get("lm_window_chars", 8000))),
  }
  out = {}
  for i, task in enumerate(TASK_ORDER):
    if batch_sizes.get(task, 0) <= 0:
      continue
    rows = _LocalRows(_global_order(sources[task], seed + 1000 * i), batch_sizes[task], seed + 1000 * i + 1,
                      process_index, process_count)
    out[task] = grain.MapDataset.range(2**62).map(rows).map(builders[task]).to_iter_dataset()
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
