"""In-training samples: every `config.train.sample_every` steps, a PNG grid of T2I samples and MMU answers.

Written to WORKDIR/samples/step_XXXXXXX.png and .txt (and TensorBoard text), on process 0.
"""


import jax
import numpy as np

from showo_jax.common import paths
from showo_jax.data import embedded
from showo_jax.data import images as images_lib
from showo_jax.inference.pipeline import Pipeline
from showo_jax.interop import checkpoints


class SampleWriter:
  """Holds the tokenizers and the fixed prompts/images; `write` samples with the current params."""

  def __init__(self, config, data, workdir: str):
    self.config = config
    self.folder = paths.join(workdir, "samples")
    self.text_tokenizer = data.text_tokenizer
    self.image_tokenizer = None
    if data.image_tokenizer and paths.exists(data.image_tokenizer):
      self.image_tokenizer = checkpoints.load_tokenizer(data.image_tokenizer)
    self.prompts = list(config.train.get("sample_prompts", None) or [embedded.caption(d) for d in range(10)])
    self.question = config.train.get("sample_question", embedded.QUESTION)
    source = data.eval_sources.get("images")
    # Spread over the split (the embedded digits are stored class by class): one answer per class, not 8 zeros.
    picks = np.unique(np.linspace(0, len(source) - 1, min(10, len(source))).astype(int)) if source is not None else []
    self.mmu_records = [source[int(i)] for i in picks]

  def write(self, step: int, params, writer=None):
    if jax.process_index() != 0:
      return
    pipe = Pipeline(params, self.config, self.text_tokenizer, self.image_tokenizer)
    lines = []
    if self.image_tokenizer is not None:
      images = pipe.t2i(self.prompts, seed=step, **pipe.sampling_defaults())
      images_lib.save_png(images_lib.image_grid(images), paths.join(self.folder, f"step_{step:07d}.png"))
    if self.mmu_records:
      codes = np.stack([np.asarray(r["image_tokens"], np.int32) for r in self.mmu_records])
      answers = pipe.mmu(codes, self.question, max_new_tokens=8)
      for r, a in zip(self.mmu_records, answers):
        lines.append(f"{r.get('caption', '')!s} | {self.question} -> {a}")
    paths.write_text(paths.join(self.folder, f"step_{step:07d}.txt"),
                     "\n".join(f"t2i prompt {i}: {p}" for i, p in enumerate(self.prompts)) + "\n" + "\n".join(lines)
                     + "\n")
    if writer is not None and lines:
      writer.write_text(step, "mmu", "\n\n".join(lines))
