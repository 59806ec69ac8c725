"""`python -m showo_jax.sample MODE --checkpoint DIR …`: generation from a trained or converted checkpoint.

  t2i          --prompt "…" [--num N --steps S --guidance W --temperature T --seed K] (--out grid.png | --out-dir DIR)
  mmu          --image PATH [PATH …] --question "…" [--json]
  inpaint      --image PATH --mask PATH --prompt "…" --out PATH
  extrapolate  --image PATH --direction left|right|up|down --prompt "…" --out PATH
  mixed        --prompt "…" [--temperature T --text-temperature T] --out DIR

Images are preprocessed exactly as in training (any mode → RGB, resize the shorter side, center-crop; SPEC §8).
An inpainting mask of any size goes through the same resize + center-crop (as grayscale), so it stays aligned
with the image. An empty prompt is allowed (unconditional generation); a prompt longer than the text budget
(config.data.max_text_len - 1 text tokens) is truncated as in training, with a warning on stderr.

Bad input (a missing or corrupt image, a folder that is not a checkpoint, --steps 0, a negative guidance, an
unknown direction, …) ends with one line `error: …` on stderr and exit status 2, without a traceback
(SHOWO_JAX_TRACEBACK=1 shows it for unexpected errors).
"""

import argparse
import os
import sys

from showo_jax.inference import commands



class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (`error: …`, exit 2) instead of the usage block."""

  def error(self, message):
    self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _parser():
  p = _Parser(prog="python -m showo_jax.sample", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="mode", required=True, parser_class=_Parser)

  def common(sp):
    sp.add_argument("--checkpoint", required=True, help="training workdir, checkpoints folder or step folder")
    sp.add_argument("--tokenizer", default="", help="image tokenizer checkpoint (default: from the config)")
    sp.add_argument("--text-tokenizer", default="", help="tokenizer.json (default: from the config)")
    sp.add_argument("--seed", type=int, default=0)

  def maskgit(sp):
    sp.add_argument("--steps", type=int, default=12, help="MaskGIT steps (>= 1)")
    sp.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight w (>= 0)")
    sp.add_argument("--temperature", type=float, default=1.0, help="Gumbel temperature of the confidence")

  t2i = sub.add_parser("t2i")
  common(t2i), maskgit(t2i)
  t2i.add_argument("--prompt", required=True, action="append", help="repeat for several prompts; '' = none")
  t2i.add_argument("--num", type=int, default=1, help="images per prompt")
  t2i.add_argument("--out", default="", help="one PNG grid")
  t2i.add_argument("--out-dir", default="", help="one PNG per sample: DIR/000.png, …")
  mmu = sub.add_parser("mmu")
  common(mmu)
  mmu.add_argument("--image", required=True, nargs="+")
  mmu.add_argument("--question", required=True)
  mmu.add_argument("--max-new-tokens", type=int, default=64)
  mmu.add_argument("--temperature", type=float, default=0.0)
  mmu.add_argument("--top-k", type=int, default=0)
  mmu.add_argument("--top-p", type=float, default=1.0)
  mmu.add_argument("--json", action="store_true", help='print a JSON list of {"image", "answer"}')
  inpaint = sub.add_parser("inpaint")
  common(inpaint), maskgit(inpaint)
  for name in ("--image", "--mask", "--prompt", "--out"):
    inpaint.add_argument(name, required=True)
  extra = sub.add_parser("extrapolate")
  common(extra), maskgit(extra)
  extra.add_argument("--direction", required=True, help="|".join(commands.DIRECTIONS))
  for name in ("--image", "--prompt", "--out"):
    extra.add_argument(name, required=True)
  mixed = sub.add_parser("mixed")
  common(mixed), maskgit(mixed)
  mixed.add_argument("--prompt", required=True)
  mixed.add_argument("--out", required=True, help="folder: text.txt and image_0.png, …")
  mixed.add_argument("--max-text-tokens", type=int, default=64)
  mixed.add_argument("--text-temperature", type=float, default=0.0, help="text sampling temperature (0 = greedy)")
  return p


def check_args(args):
  """ValueError for option values that cannot work, before anything is loaded."""
  if getattr(args, "steps", 1) < 1:
    raise ValueError(f"--steps must be >= 1, got {args.steps}")
  if getattr(args, "guidance", 0.0) < 0:
    raise ValueError(f"--guidance must be >= 0, got {args.guidance}")
  if args.mode == "mixed" and args.guidance:
    raise ValueError("mixed generation has no classifier-free guidance: leave --guidance at 0")
  if args.temperature < 0:
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
  if not os.path.exists(args.checkpoint):
    raise ValueError(f"--checkpoint {args.checkpoint}: no such folder")


def _one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


def main(argv=None) -> int:
  """Runs the CLI; returns the exit status (0 ok, 2 bad input or usage, 1 unexpected error)."""
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # --help (0) or a usage error (2, already printed as one line)
    return e.code if isinstance(e.code, int) else 2
  try:
    check_args(args)
    return commands.run(args)
  except (OSError, ValueError, KeyError) as e:  # bad input: ImageError, CheckpointError, ConfigError, …
    message = _one_line(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
      message = f"{e.filename}: {message}"
    print(f"error: {message}", file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get("SHOWO_JAX_TRACEBACK"):
      raise
    print(f"error: unexpected {type(e).__name__}: {_one_line(e)} (SHOWO_JAX_TRACEBACK=1 shows the traceback)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
