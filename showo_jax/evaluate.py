"""`python -m showo_jax.evaluate --workdir DIR [--checkpoint PATH]`: the embedded test split's report card.

Writes DIR/eval.json and DIR/eval.png:
  mmu_accuracy            share of test digits whose answer to "What digit is this?" is the right word
  t2i_class_consistency   share of images generated for "a handwritten digit k" that a pixel classifier, trained
                          on the training split's real images, labels k (`--per_class` images per digit)
  classifier_test_accuracy  the same classifier on real test images (how much to trust the judge)
  tokenizer_psnr, tokenizer_codebook_usage   reconstruction quality and share of codes used on the test split
  lm_perplexity           next-token perplexity on the held-out documents of the text corpus
The measures are evaluation/measures.py; the report evaluation/embedded_report.py.
"""

import json
import sys

from absl import app
from absl import flags

from showo_jax.evaluation import embedded_report

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir; eval.json and eval.png are written here.",
                               required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "Checkpoint to evaluate (default: the workdir's latest).")
_STEPS = flags.DEFINE_integer("steps", 12, "MaskGIT steps.")
_GUIDANCE = flags.DEFINE_float("guidance", -1.0, "CFG weight (default: config.train.sample_guidance).")
_PER_CLASS = flags.DEFINE_integer("per_class", 20, "Generated images per digit.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    report = embedded_report.evaluate(_WORKDIR.value, _CHECKPOINT.value, steps=_STEPS.value, guidance=_GUIDANCE.value,
                      per_class=_PER_CLASS.value, seed=_SEED.value)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(json.dumps({k: v for k, v in report.items() if k != "mmu_examples"}, indent=1))


if __name__ == "__main__":
  app.run(main)
