"""python -m showo_jax.sample MODE --checkpoint DIR ...: generation from a trained or converted checkpoint.

  t2i          --prompt "..." [--num N] (--out grid.png | --out-dir DIR)
  mmu          --image PATH [PATH ...] --question "..." [--json]
  inpaint      --image PATH --mask PATH|left|right|top|bottom|center --prompt "..." --out PATH
  extrapolate  --image PATH --direction left|right|up|down --prompt "..." --out PATH
  mixed        --prompt "..." --out DIR

The MaskGIT settings (--steps, --guidance, --temperature, --schedule) default to how the checkpoint is meant to
be sampled (its config.train.sample_*, the settings `evaluate` reports with); the settings used are printed in
one line, and flags override them. Images are preprocessed exactly as in training (any mode -> RGB, resize the
shorter side, center-crop; SPEC §8); an inpainting mask of any size goes through the same resize + center-crop,
so it stays aligned with the image. An empty prompt is unconditional generation; a prompt longer than the text
budget (config.data.max_text_len - 2 text tokens) is truncated as in training, with a warning.

Exit status: 0 done, 2 bad input or usage (one line `error: ...` naming it), 1 an unexpected failure
(SHOWO_JAX_TRACEBACK=1 shows its traceback).
"""

import sys

from showo_jax.common import cli
from showo_jax.common import paths
from showo_jax.inference import commands
from showo_jax.models import mask_schedule


def _parser():
  p = cli.Parser(prog="python -m showo_jax.sample", description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="mode", required=True, parser_class=cli.Parser)

  def common(sp):
    cli.add_checkpoint_args(sp)
    sp.add_argument("--seed", type=int, default=0, help="sampling seed")

  t2i = sub.add_parser("t2i", help="text -> image", description="text -> image with MaskGIT decoding and classifier-free guidance")
  common(t2i), cli.add_maskgit_args(t2i)
  t2i.add_argument("--prompt", required=True, action="append", help="repeat for several prompts; '' = none")
  t2i.add_argument("--num", type=int, default=1, help="images per prompt")
  t2i.add_argument("--out", default="", help="write one PNG grid here")
  t2i.add_argument("--out-dir", default="", help="write one PNG per sample: DIR/000.png, ...")
  mmu = sub.add_parser("mmu", help="image -> text (KV-cached decoding)")
  common(mmu)
  mmu.add_argument("--image", required=True, nargs="+", help="image files (any size or mode; preprocessed as in "
                   "training)")
  mmu.add_argument("--question", required=True, help='e.g. "What digit is this?"')
  mmu.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit (at most the model's "
                   "context, config.model.max_position_embeddings, minus the prompt)")
  mmu.add_argument("--temperature", type=float, default=0.0, help="text sampling temperature (0 = greedy)")
  mmu.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
  mmu.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = all)")
  mmu.add_argument("--json", action="store_true", help='print a JSON list of {"image", "answer"}')
  inpaint = sub.add_parser("inpaint", help="regenerate the white part of --mask")
  common(inpaint), cli.add_maskgit_args(inpaint)
  inpaint.add_argument("--image", required=True, help="the image to edit")
  inpaint.add_argument("--mask", required=True, help="image of the same framing (white = regenerate, black = keep), "
                       f"or a region: {' | '.join(commands.MASK_REGIONS)}")
  inpaint.add_argument("--prompt", required=True, help="what the whole image shows ('' = unconditional)")
  inpaint.add_argument("--out", required=True, help="output PNG")
  extra = sub.add_parser("extrapolate", help="extend the image by half its size in one direction")
  common(extra), cli.add_maskgit_args(extra)
  extra.add_argument("--direction", required=True, help="|".join(commands.DIRECTIONS))
  extra.add_argument("--image", required=True, help="the image to extend")
  extra.add_argument("--prompt", required=True, help="what the extended image shows ('' = unconditional)")
  extra.add_argument("--out", required=True, help="output PNG")
  mixed = sub.add_parser("mixed", help="text -> image -> text from one prompt (no CFG)")
  common(mixed), cli.add_maskgit_args(mixed, guidance=False)
  mixed.add_argument("--prompt", required=True, help="the text to continue")
  mixed.add_argument("--out", required=True, help="folder: text.txt and image_0.png, ...")
  mixed.add_argument("--max-text-tokens", type=int, default=64, help="text tokens to generate (at most the "
                     "model's context, config.model.max_position_embeddings, minus the prompt and one image)")
  mixed.add_argument("--text-temperature", type=float, default=0.0, help="text sampling temperature (0 = greedy)")
  return p


def check_args(args):
  """ValueError for option values that cannot work, before anything is loaded."""
  given = lambda name, default: default if getattr(args, name, None) is None else getattr(args, name)  # pylint: disable=g-long-lambda
  for flag in ("prompt", "question"):
    for text in (lambda v: v if isinstance(v, list) else [v])(getattr(args, flag, None) or []):
      try:
        text.encode("utf-8")
      except UnicodeEncodeError:
        raise ValueError(f"--{flag} {text!r} is not valid UTF-8 text") from None
  if given("steps", 1) < 1:
    raise ValueError(f"--steps must be >= 1, got {args.steps}")
  if given("guidance", 0.0) < 0:
    raise ValueError(f"--guidance must be >= 0, got {args.guidance}")
  if given("temperature", 0.0) < 0:
    raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
  if args.mode == "t2i":
    if not args.out and not args.out_dir:
      raise ValueError("t2i needs --out grid.png or --out-dir DIR")
    if args.num < 1:
      raise ValueError(f"--num must be >= 1, got {args.num}")
  if args.mode == "mmu":
    if args.max_new_tokens < 1:
      raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.top_k < 0 or not 0.0 < args.top_p <= 1.0:
      raise ValueError(f"need --top-k >= 0 and 0 < --top-p <= 1, got {args.top_k} and {args.top_p}")
  if args.mode == "mixed" and args.max_text_tokens < 1:
    raise ValueError(f"--max-text-tokens must be >= 1, got {args.max_text_tokens}")
  if args.mode == "mixed" and args.text_temperature < 0:
    raise ValueError(f"--text-temperature must be >= 0, got {args.text_temperature}")
  if args.mode == "extrapolate" and args.direction not in commands.DIRECTIONS:
    raise ValueError(f"--direction must be one of {', '.join(commands.DIRECTIONS)}, got {args.direction!r}")
  if getattr(args, "schedule", None):
    mask_schedule.get(args.schedule)  # ValueError naming the schedule
  if not paths.exists(args.checkpoint):
    raise ValueError(f"--checkpoint {args.checkpoint}: no such folder")


def main(argv=None) -> int:
  """Runs the CLI; returns the exit status (0 ok, 2 bad input or usage, 1 unexpected error)."""
  def work(args):
    check_args(args)
    return commands.run(args)

  return cli.parse_and_run(_parser(), argv, work)


if __name__ == "__main__":
  sys.exit(main())
