"""`python -m showo_jax.evaluate --workdir DIR [--checkpoint PATH]`: the embedded default's report card.

Writes DIR/eval.json and DIR/eval.png. eval.json holds, for "validation" (choose settings on it) and for "test"
(report it for the final choice), each a held-out split of the digits and of the text corpus:
  mmu_accuracy            share of the split's digits whose answer to "What digit is this?" is the right word
  t2i_class_consistency   share of images generated for "a handwritten digit k" that a pixel classifier, trained
                          on the training split's real images, labels k (`--per_class` images per digit; each split
                          draws its own samples)
  t2i_diversity           mean over digits of the generated images' mean pairwise pixel distance over that of the
                          split's real digits (1 = as varied as real digits; mode collapse → 0)
  t2i_near_copies         share of generated images nearer to a training digit than 99 % of the split's real
                          digits are (replaying training digits scores high; new digits ≈ 0.01)
  classifier_accuracy     the pixel classifier on the split's real digits (how much to trust the judge)
  tokenizer_psnr, tokenizer_codebook_usage   reconstruction quality and share of codes used on the split
  lm_perplexity           next-token perplexity on the split's held-out documents
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
  shown = {k: ({f: x for f, x in v.items() if f != "mmu_examples"} if isinstance(v, dict) else v)
           for k, v in report.items()}
  print(json.dumps(shown, indent=1))


if __name__ == "__main__":
  app.run(main)
