"""The embedded default's report card (`python -m showo_jax.evaluate`, whose docstring lists the figures): MMU
accuracy on the held-out digits, T2I class consistency judged by a pixel classifier, tokenizer PSNR and codebook
usage, and lm perplexity on held-out text.
"""

import json
import os
import time

import numpy as np

from showo_jax.config import showo as showo_config
from showo_jax.data import embedded
from showo_jax.data import images as images_lib
from showo_jax.evaluation import measures
from showo_jax.inference.pipeline import apply_fn
from showo_jax.inference.pipeline import Pipeline


def evaluate(workdir: str, checkpoint: str = "", *, steps: int = 12, guidance: float = -1.0, per_class: int = 20,
             seed: int = 0) -> dict:
  """The report card of a workdir trained on the embedded default; also writes DIR/eval.json and DIR/eval.png."""
  t0 = time.time()
  pipe = Pipeline.from_checkpoint(checkpoint or workdir)
  config = pipe.config
  guidance = float(config.train.get("sample_guidance", 0.0)) if guidance < 0 else guidance
  images, labels = embedded.load_mnist()
  train_idx, test_idx = embedded.split_indices(len(images), "train"), embedded.split_indices(len(images), "test")
  report = {"checkpoint": os.path.abspath(checkpoint or workdir), "maskgit_steps": steps, "guidance": guidance}

  # The test images through the image tokenizer (the same tokenization the training data went through).
  codes = np.concatenate([pipe.encode(images[test_idx][i:i + 250]) for i in range(0, len(test_idx), 250)])
  test_labels = labels[test_idx]
  answers = []
  for i in range(0, len(codes), 100):
    answers += pipe.mmu(codes[i:i + 100], embedded.QUESTION, max_new_tokens=6)
  correct = [measures.answer_is(a, embedded.DIGITS[k]) for a, k in zip(answers, test_labels)]
  report["mmu_accuracy"] = float(np.mean(correct))
  report["mmu_examples"] = [f"{embedded.DIGITS[k]} -> {a}" for a, k in list(zip(answers, test_labels))[:10]]

  # T2I class consistency.
  classifier = measures.PixelClassifier(images[train_idx], labels[train_idx])
  report["classifier_test_accuracy"] = classifier.accuracy(images[test_idx], labels[test_idx])
  prompts = [embedded.caption(k) for k in range(10) for _ in range(per_class)]
  wanted = np.repeat(np.arange(10), per_class)
  generated = np.concatenate([pipe.t2i(prompts[i:i + 100], steps=steps, guidance=guidance, seed=seed + i)
                              for i in range(0, len(prompts), 100)])
  report["t2i_class_consistency"] = classifier.accuracy(generated, wanted)

  # Tokenizer reconstruction on the test split.
  recon = np.concatenate([pipe.decode(codes[i:i + 250]) for i in range(0, len(codes), 250)])
  report["tokenizer_psnr"] = measures.psnr(images[test_idx], recon)
  report["tokenizer_codebook_usage"] = measures.codebook_usage(codes, pipe.layout.codebook_size)

  report["lm_perplexity"] = measures.perplexity(apply_fn(pipe.cfg), pipe.params, embedded.load_text("test"),
                                                pipe.text_tokenizer, pipe.layout, showo_config.seq_len(config))
  report["seconds"] = time.time() - t0
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(report, f, indent=1)
  _summary_png(generated, per_class, images[test_idx][:10], recon[:10], os.path.join(workdir, "eval.png"))
  return report


def _summary_png(generated, per_class, originals, recon, path):
  """Rows: up to 4 generated samples per digit (digit = column), then real test images over reconstructions."""
  per_row = min(per_class, 4)
  rows = [generated.reshape(10, per_class, *generated.shape[1:])[:, j] for j in range(per_row)]
  rows += [originals, recon]
  h, w = generated.shape[1:3]
  canvas = np.full((len(rows) * (h + 2), 10 * (w + 2), 3), 255, np.uint8)
  for r, row in enumerate(rows):
    for c, img in enumerate(row[:10]):
      canvas[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = img
  images_lib.save_png(np.kron(canvas, np.ones((3, 3, 1), np.uint8)), path)
