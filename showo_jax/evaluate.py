"""python -m showo_jax.evaluate MODE ...: measure a checkpoint.

  embedded   --workdir DIR            the embedded default's report card: DIR/eval.json, DIR/eval.png
  geneval    --checkpoint C --prompts evaluation_metadata.jsonl --out DIR    GenEval's folders, resumable
  fid        --real DIR|stats.npz --fake DIR --inception WEIGHTS            Fréchet Inception distance
  clipscore  --folder DIR --clip CLIP_DIR                                   CLIP score of images and captions
  pope       --checkpoint C --questions FILE --images DIR --out answers.jsonl   answers + accuracy / F1
  mme        --checkpoint C --root MME_DIR --out DIR                           answers + perception / cognition
  vqa        --checkpoint C --questions FILE --images DIR --out answers.json --format vqav2|gqa
  mmmu       --checkpoint C --questions FILE --images DIR --out answers.json

`python -m showo_jax.evaluate --workdir DIR` (no mode) is `embedded`. The embedded report's figures, for
"validation" (choose settings on it) and "test" (report it for the final choice):
  mmu_accuracy            share of the split's digits whose answer to "What digit is this?" is the right word
  t2i_class_consistency   share of images generated for "a handwritten digit k" that a pixel classifier, trained
                          on the training split's real images, labels k (`--per-class` images per digit)
  t2i_diversity           mean over digits of the generated images' mean pairwise pixel distance over that of the
                          split's real digits (1 = as varied as real digits; mode collapse → 0)
  t2i_near_copies         share of generated images nearer to a training digit than 99 % of the split's real
                          digits are (replaying training digits scores high; new digits ≈ 0.01)
  classifier_accuracy     the pixel classifier on the split's real digits (how much to trust the judge)
  tokenizer_psnr, tokenizer_codebook_usage   reconstruction quality and share of codes used on the split
  lm_perplexity           next-token perplexity on the split's held-out documents
  sideways_*              only for the fine-tuning demo (configs/tiny_finetune.py)
The MaskGIT settings of `embedded` default to the checkpoint's config.train.sample_*; those of `geneval` to
the official demo's t2i settings (docs/evaluation.md). The networks FID and CLIP score need are
files the user supplies.
Exit status: 0 done, 2 bad input or usage (one line `error: ...` naming it), 1 an unexpected failure.
"""

import sys

from showo_jax.common import cli
from showo_jax.evaluation import commands

def _parser():
  p = cli.Parser(prog="python -m showo_jax.evaluate", description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="mode", required=True, parser_class=cli.Parser)

  def model(sp):
    cli.add_checkpoint_args(sp)
    sp.add_argument("--batch-size", type=int, default=16, help="samples per forward pass")

  emb = sub.add_parser("embedded", help="the embedded default's report card")
  emb.add_argument("--workdir", required=True, help="training workdir; eval.json and eval.png are written here")
  emb.add_argument("--checkpoint", default="", help="checkpoint to evaluate ('' = the workdir's latest)")
  cli.add_maskgit_args(emb)
  emb.add_argument("--per-class", "--per_class", dest="per_class", type=int, default=20,
                   help="generated images per digit")
  emb.add_argument("--seed", type=int, default=0, help="sampling seed")

  gen = sub.add_parser("geneval", help="GenEval's image folders")
  model(gen), cli.add_maskgit_args(gen, steps=50, guidance_weight=5.0, temperature=1.0, schedule="cosine")
  gen.add_argument("--prompts", required=True, help="GenEval's evaluation_metadata.jsonl (one JSON object a line)")
  gen.add_argument("--out", required=True, help="folder: OUT/00000/metadata.jsonl, OUT/00000/samples/00000.png, …")
  gen.add_argument("--images-per-prompt", type=int, default=4, help="images per prompt")
  gen.add_argument("--seed", type=int, default=0, help="seed of the first batch (batch k: seed + k)")

  fid = sub.add_parser("fid", help="Fréchet Inception distance between two image sets")
  fid.add_argument("--real", required=True, help="image folder, or statistics .npz written by --save-real-stats")
  fid.add_argument("--fake", required=True, help="image folder (GenEval folders too: every image under it)")
  fid.add_argument("--inception", required=True, help="FID InceptionV3 weights: pytorch-fid's "
                   "pt_inception-2015-12-05-*.pth (read without torch) or a .safetensors conversion")
  fid.add_argument("--save-real-stats", default="", help="write the real set's statistics here (.npz)")
  fid.add_argument("--batch-size", type=int, default=50, help="images per forward pass")

  clip = sub.add_parser("clipscore", help="CLIP score: 100 · max(cos(image, caption), 0), averaged")
  clip.add_argument("--folder", required=True, help="GenEval folders (caption = the prompt) or images with a "
                    ".txt caption beside each (or captions.jsonl)")
  clip.add_argument("--clip", required=True, help="CLIP folder in the Hugging Face layout (config.json, "
                    "model.safetensors)")
  clip.add_argument("--batch-size", type=int, default=32, help="images per forward pass")

  for name, what in (("pope", "POPE"), ("mme", "MME"), ("vqa", "VQAv2 / GQA"), ("mmmu", "MMMU")):
    sp = sub.add_parser(name, help=f"{what} answers (KV-cached greedy decoding)")
    model(sp)
    sp.add_argument("--max-new-tokens", type=int, default=16 if name != "mmmu" else 8, help="answer length limit")
    if name == "mme":
      sp.add_argument("--root", required=True, help="MME_Benchmark_release_version: one folder per task, with "
                      "images and question files")
      sp.add_argument("--out", required=True, help="folder: one TASK.txt per task in MME's scoring format")
    else:
      sp.add_argument("--questions", required=True, help={
          "pope": "POPE question file (jsonl: question_id, image, text, label)",
          "vqa": "VQAv2 questions .json or GQA questions .json",
          "mmmu": "MMMU questions .jsonl (id, question, options, image)"}[name])
      sp.add_argument("--images", required=True, help="folder the question file's image names are relative to")
      sp.add_argument("--out", required=True, help="answer file in the benchmark's own format")
    if name == "vqa":
      sp.add_argument("--format", required=True, choices=("vqav2", "gqa"), help="question and answer format")
  return p


def check_args(args):
  """ValueError for option values that cannot work, before anything is loaded."""
  for flag in ("steps", "batch_size", "images_per_prompt", "per_class", "max_new_tokens"):
    value = getattr(args, flag, None)
    if value is not None and value < 1:
      raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
  for flag in ("guidance", "temperature"):
    value = getattr(args, flag, None)
    if value is not None and value < 0:
      raise ValueError(f"--{flag} must be >= 0, got {value}")


def main(argv=None) -> int:
  """Runs the CLI; returns the exit status (0 ok, 2 bad input or usage, 1 unexpected error)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
    argv = ["embedded"] + argv  # the report card was the only mode once: `evaluate --workdir DIR` stays valid

  def work(args):
    check_args(args)
    return commands.run(args)

  return cli.parse_and_run(_parser(), argv, work)


if __name__ == "__main__":
  sys.exit(main())
