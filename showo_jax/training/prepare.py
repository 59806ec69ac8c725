"""Everything the Show-o trainer reads, made ready before the first step.

`config.data.source`:
  "embedded"  the bundled default (data/embedded.py): trains the text BPE into WORKDIR/text_tokenizer.json
              and, unless `config.tokenizer.checkpoint` is set, the tiny MAGVIT-v2 into WORKDIR/tokenizer/;
              then pre-tokenizes the MNIST train/test splits into WORKDIR/data/. Each product is reused when it
              is already complete, so a restarted run skips straight to training.
  "records"   pre-tokenized ArrayRecord folders (or `tfds:NAME:SPLIT@DIR` specs) in `config.data.t2i_records`,
              `config.data.mmu_records`, `config.data.lm_records`, with `config.text_tokenizer.path`.
Only process 0 writes; the others wait for it.
"""

import dataclasses

import jax

from showo_jax.common import console
from showo_jax.common import interrupts
from showo_jax.common import paths
from showo_jax.config import showo as showo_config
from showo_jax.data import embedded
from showo_jax.data import pipeline
from showo_jax.data import records
from showo_jax.data import text_tokenizer as text_tokenizer_lib
from showo_jax.interop import checkpoints
from showo_jax.models import vocab as vocab_lib
from showo_jax.tokenizer import pretokenize
from showo_jax.tokenizer import trainer as tokenizer_trainer


@dataclasses.dataclass
class TrainingData:
  layout: vocab_lib.VocabLayout
  text_tokenizer: text_tokenizer_lib.TextTokenizer
  sources: dict  # task -> random-access source of records
  image_tokenizer: str = ""  # checkpoint folder of the image tokenizer ("" = none configured)
  eval_sources: dict = dataclasses.field(default_factory=dict)


def _barrier(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _text_tokenizer(config, workdir: str, layout) -> text_tokenizer_lib.TextTokenizer:
  path = config.text_tokenizer.path
  if not path:
    if config.data.source != "embedded":
      raise ValueError("config.text_tokenizer.path is empty: point it at a tokenizer.json")
    path = paths.join(workdir, "text_tokenizer.json")
    if paths.exists(path):
      console.phase(f"text BPE: {path} (already trained)")
    else:
      console.phase(f"text BPE: training {layout.llm_vocab_size} tokens on the embedded text -> {path}")
      if jax.process_index() == 0:
        embedded.train_text_tokenizer(path, vocab_size=layout.llm_vocab_size)
    _barrier("text_tokenizer")
  tok = text_tokenizer_lib.TextTokenizer(path, layout)
  if tok.vocab_size != layout.llm_vocab_size:
    raise ValueError(f"{path} has {tok.vocab_size} tokens but config.model.vocab.llm_vocab_size = "
                     f"{layout.llm_vocab_size}: set the config to the tokenizer's size")
  return tok


def _embedded_records(config, workdir: str):
  """({name: records folder}, tokenizer checkpoint) for the embedded default: `train`, `validation`, `test`, and with
  config.data.embedded_mmu_copies = K > 1 also `train*K` (the training digits plus distorted copies, for MMU).
  The sideways task (config.data.embedded_task) adds the turned training digits for t2i and `train*K:sideways`
  for MMU (the upright ones asked the new question are the `mmu` records relabelled: prepare_training_data)."""
  checkpoint = config.tokenizer.checkpoint
  copies = int(config.data.get("embedded_mmu_copies", 1))
  splits = {"train": "train", "validation": "validation", "test": "test"}
  mmu = f"train*{copies}" if copies > 1 else "train"
  if copies > 1:
    splits["mmu"] = mmu
  if config.data.get("embedded_task", "") == "sideways":
    splits.update(sideways_t2i="train:sideways", sideways_mmu=f"{mmu}:sideways")
  folders = {name: paths.join(workdir, "data", "mnist_" + spec.replace("*", "_x").replace(":", "_"))
             for name, spec in splits.items()}
  if jax.process_index() == 0:
    if not checkpoint:
      folder = paths.join(workdir, "tokenizer")
      magvit = config.tokenizer.magvit
      if paths.exists(paths.join(folder, tokenizer_trainer.EVAL_FILE)):
        console.phase(f"image tokenizer: {folder} (already trained)")
      else:
        console.phase(f"image tokenizer: training MAGVIT-v2 ({magvit.train.steps} steps, "
                      f"{2 ** magvit.codebook_bits} codes) -> {folder}")
      checkpoint = tokenizer_trainer.train_tokenizer(magvit, folder)
    else:
      console.phase(f"image tokenizer: {checkpoint}")
    todo = {name: spec for name, spec in splits.items() if not paths.exists(paths.join(folders[name], records.META))}
    if todo:
      console.phase(f"pre-tokenizing the digits ({', '.join(todo.values())}) -> {paths.join(workdir, 'data')}")
    tokenizer = checkpoints.load_tokenizer(checkpoint) if todo else None  # ours or official weights
    for done, (name, spec) in enumerate(todo.items()):
      if interrupts.received():  # a signal during the last shard of the previous split: stop between splits
        interrupts.stop(f"pre-tokenized {done} of {len(todo)} digit sets into {paths.join(workdir, 'data')}")
      # At the model's resolution: an official tokenizer's own default (256 px) would give another token count.
      pretokenize.pretokenize(tokenizer, f"embedded:{spec}", folders[name], checkpoint_name=checkpoint,
                              resolution=config.data.resolution)
  _barrier("pretokenize")
  checkpoint = checkpoint or paths.join(workdir, "tokenizer")
  return folders, checkpoint


def _weights(data_cfg, task: str):
  """config.data.<task>_weights as floats (None = equal)."""
  return [float(w) for w in str(data_cfg.get(f"{task}_weights", "") or "").split(",") if w] or None


def prepare_training_data(config, workdir: str) -> TrainingData:
  layout = showo_config.vocab_layout(config)
  tok = _text_tokenizer(config, workdir, layout)
  if config.data.source == "embedded":
    folders, checkpoint = _embedded_records(config, workdir)
    image_source = records.open_source(folders["train"])
    mmu_source = records.open_source(folders["mmu"]) if "mmu" in folders else image_source
    if "sideways_t2i" in folders:  # the new task mixed with the default ones (which the fine-tune must keep)
      image_source = pipeline.Mixture([records.open_source(folders["sideways_t2i"]), image_source],
                                      _weights(config.data, "t2i"))
      upright = records.WithFields(mmu_source, question=embedded.SIDEWAYS_QUESTION, answer="no")  # the same images
      mmu_source = pipeline.Mixture([records.open_source(folders["sideways_mmu"]), upright, mmu_source],
                                    _weights(config.data, "mmu"))
    sources = {"t2i": image_source, "mmu": mmu_source, "lm": [{"text": t} for t in embedded.load_text("train")]}
    # In-training samples look at the validation split; the test split is only for the final figures.
    eval_sources = {"images": records.open_source(folders["validation"]), "text": embedded.load_text("validation")}
    return TrainingData(layout, tok, sources, checkpoint, eval_sources)
  if config.data.source == "records":
    d = config.data
    sources = {}
    for task in ("t2i", "mmu", "lm"):
      specs = [x for x in str(d.get(f"{task}_records", "")).split(",") if x]
      if len(specs) == 1:
        sources[task] = records.open_source(specs[0])
      elif specs:  # a weighted mixture of several sources within the task
        sources[task] = pipeline.Mixture([records.open_source(x) for x in specs], _weights(d, task))
      elif config.train[f"batch_{task}"] > 0:
        raise ValueError(f"config.data.{task}_records is empty but config.train.batch_{task} > 0")
    return TrainingData(layout, tok, sources, config.tokenizer.checkpoint)
  raise ValueError(f"config.data.source={config.data.source!r}: use 'embedded' or 'records'")
