"""`python -m showo_jax.sample MODE --checkpoint DIR …`: generation from a trained or converted checkpoint.

  t2i          --prompt "…" [--num N --steps S --guidance W --temperature T --seed K] (--out grid.png | --out-dir DIR)
  mmu          --image PATH [PATH …] --question "…" [--json]
  inpaint      --image PATH --mask PATH --prompt "…" --out PATH
  extrapolate  --image PATH --direction left|right|up|down --prompt "…" --out PATH
  mixed        --prompt "…" --out DIR
Images are preprocessed exactly as in training (resize the shorter side, center-crop, [-1, 1]).
"""

import argparse
import json
import os
import sys

import numpy as np


def _parser():
  p = argparse.ArgumentParser(prog="python -m showo_jax.sample", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="mode", required=True)

  def common(sp):
    sp.add_argument("--checkpoint", required=True, help="training workdir, checkpoints folder or step folder")
    sp.add_argument("--tokenizer", default="", help="image tokenizer checkpoint (default: from the config)")
    sp.add_argument("--text-tokenizer", default="", help="tokenizer.json (default: from the config)")
    sp.add_argument("--seed", type=int, default=0)

  def maskgit(sp):
    sp.add_argument("--steps", type=int, default=12)
    sp.add_argument("--guidance", type=float, default=0.0)
    sp.add_argument("--temperature", type=float, default=1.0)

  t2i = sub.add_parser("t2i")
  common(t2i), maskgit(t2i)
  t2i.add_argument("--prompt", required=True, action="append", help="repeat for several prompts")
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
  extra.add_argument("--direction", required=True, choices=["left", "right", "up", "down"])
  for name in ("--image", "--prompt", "--out"):
    extra.add_argument(name, required=True)
  mixed = sub.add_parser("mixed")
  common(mixed), maskgit(mixed)
  mixed.add_argument("--prompt", required=True)
  mixed.add_argument("--out", required=True, help="folder: text.txt and image_0.png, …")
  mixed.add_argument("--max-text-tokens", type=int, default=64)
  return p


def _load_images(paths, resolution):
  from showo_jax.data import images as images_lib  # pylint: disable=g-import-not-at-top
  return np.stack([images_lib.to_uint8(images_lib.preprocess(p, resolution)[None])[0] for p in paths])


def run(args) -> int:
  from showo_jax.data import images as images_lib  # pylint: disable=g-import-not-at-top
  from showo_jax.inference import Pipeline  # pylint: disable=g-import-not-at-top
  pipe = Pipeline.from_checkpoint(args.checkpoint, tokenizer=args.tokenizer, text_tokenizer=args.text_tokenizer)
  res = pipe.config.data.resolution
  if args.mode == "t2i":
    if not args.out and not args.out_dir:
      raise ValueError("t2i needs --out grid.png or --out-dir DIR")
    prompts = [p for p in args.prompt for _ in range(args.num)]
    images = pipe.t2i(prompts, steps=args.steps, guidance=args.guidance, temperature=args.temperature,
                      seed=args.seed)
    if args.out_dir:
      os.makedirs(args.out_dir, exist_ok=True)
      for i, img in enumerate(images):
        images_lib.save_png(img, os.path.join(args.out_dir, f"{i:03d}.png"))
    if args.out:
      from showo_jax.training.samples import _grid  # pylint: disable=g-import-not-at-top
      images_lib.save_png(_grid(images, cols=min(len(images), 8)), args.out)
  elif args.mode == "mmu":
    codes = pipe.encode(_load_images(args.image, res))
    answers = pipe.mmu(codes, args.question, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.json:
      print(json.dumps([{"image": p, "answer": a} for p, a in zip(args.image, answers)]))
    else:
      print("\n".join(a.replace("\n", " ") for a in answers))
  elif args.mode in ("inpaint", "extrapolate"):
    image = _load_images([args.image], res)[0]
    kw = dict(steps=args.steps, guidance=args.guidance, temperature=args.temperature, seed=args.seed)
    if args.mode == "inpaint":
      mask = images_lib.open_image(args.mask).convert("L").resize((res, res))
      out = pipe.inpaint(image, np.asarray(mask, np.float32) / 255.0, args.prompt, **kw)
    else:
      out = pipe.extrapolate(image, args.direction, args.prompt, **kw)
    images_lib.save_png(out, args.out)
  elif args.mode == "mixed":
    segments = pipe.mixed(args.prompt, max_text_tokens=args.max_text_tokens, steps=args.steps, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    texts, k = [], 0
    for kind, value in segments:
      if kind == "text":
        texts.append(value)
      else:
        images_lib.save_png(value, os.path.join(args.out, f"image_{k}.png"))
        texts.append(f"[image_{k}.png]")
        k += 1
    with open(os.path.join(args.out, "text.txt"), "w") as f:
      f.write(" ".join(texts) + "\n")
  return 0


def main(argv=None):
  args = _parser().parse_args(argv)
  try:
    return run(args)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
