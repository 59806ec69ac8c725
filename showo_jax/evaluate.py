"""python -m showo_jax.evaluate --workdir DIR [--checkpoint PATH]: the embedded default's report card.

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
  sideways_*              only for the fine-tuning demo (configs/tiny_finetune.py): sideways_mmu_accuracy (share of
                          the split's digits, turned and upright, answered "yes" / "no" to "Is this digit on its
                          side?"), sideways_t2i_class_consistency (images for "a handwritten digit k on its side"
                          judged by a classifier trained on turned training digits), sideways_t2i_diversity,
                          sideways_classifier_accuracy
The MaskGIT settings default to the checkpoint's config.train.sample_* (what `sample` uses), printed in one
line; flags override them. The measures are evaluation/measures.py; the report evaluation/embedded_report.py.
Exit status: 0 done, 2 bad input (one line naming it), 1 an unexpected failure.
"""

import json

from absl import flags

from showo_jax.common import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir; eval.json and eval.png are written here",
                               required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "checkpoint to evaluate ('' = the workdir's latest)")
_STEPS = flags.DEFINE_integer("steps", None, "MaskGIT steps (default: the checkpoint's config.train.sample_steps)")
_GUIDANCE = flags.DEFINE_float("guidance", None, "CFG weight (default: config.train.sample_guidance)")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Gumbel temperature of the confidences (default: "
                                  "config.train.sample_temperature)")
_SCHEDULE = flags.DEFINE_string("schedule", None, "inference mask schedule (default: config.train.sample_schedule)")
_PER_CLASS = flags.DEFINE_integer("per_class", 20, "generated images per digit")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_FLAGS = (_WORKDIR, _CHECKPOINT, _STEPS, _GUIDANCE, _TEMPERATURE, _SCHEDULE, _PER_CLASS, _SEED)


def main(argv):
  del argv  # cli.absl_main refuses positional arguments

  def work():
    from showo_jax.common import console  # pylint: disable=g-import-not-at-top
    from showo_jax.evaluation import embedded_report  # pylint: disable=g-import-not-at-top
    console.setup()
    if _STEPS.value is not None and _STEPS.value < 1 or _PER_CLASS.value < 1:
      raise ValueError(f"--steps and --per_class must be >= 1, got {_STEPS.value} and {_PER_CLASS.value}")
    report = embedded_report.evaluate(_WORKDIR.value, _CHECKPOINT.value, per_class=_PER_CLASS.value,
                                      seed=_SEED.value, steps=_STEPS.value, guidance=_GUIDANCE.value,
                                      temperature=_TEMPERATURE.value, schedule=_SCHEDULE.value)
    shown = {k: ({f: x for f, x in v.items() if f != "mmu_examples"} if isinstance(v, dict) else v)
             for k, v in report.items()}
    print(json.dumps(shown, indent=1))

  return cli.run(work)


if __name__ == "__main__":
  cli.absl_main(main, __doc__, _FLAGS, required=("workdir",))
