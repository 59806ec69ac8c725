"""What `python -m showo_jax.sample MODE` does once its arguments are parsed and checked (showo_jax/sample.py):
load a checkpoint into a `Pipeline`, preprocess images and masks exactly as in training, generate, write files.
"""

import json
import sys

import numpy as np

from showo_jax.common import paths
from showo_jax.data import images as images_lib
from showo_jax.data import prompting
from showo_jax.inference import pipeline
from showo_jax.sampling import editing

DIRECTIONS = editing.DIRECTIONS


def load_images(files, resolution: int) -> np.ndarray:
  """uint8 [B, res, res, 3]: each file as in training (RGB, resize the shorter side, center-crop)."""
  return np.stack([images_lib.load_image(p, resolution) for p in files])


MASK_REGIONS = ("left", "right", "top", "bottom", "center")


def load_mask(path: str, resolution: int) -> np.ndarray:
  """float32 [res, res] in [0, 1] (white = regenerate): grayscale, resized + center-cropped like the image. A
  region name instead of a file masks that half of the image (`center`: the middle square, half the side)."""
  if path in MASK_REGIONS:
    mask, half, quarter = np.zeros((resolution, resolution), np.float32), resolution // 2, resolution // 4
    region = {"left": np.s_[:, :half], "right": np.s_[:, half:], "top": np.s_[:half], "bottom": np.s_[half:],
              "center": np.s_[quarter:resolution - quarter, quarter:resolution - quarter]}[path]
    mask[region] = 1.0
    return mask
  mask = images_lib.open_image(path).convert("L")
  return np.asarray(images_lib.resize_and_crop(mask, resolution), np.float32) / np.float32(255)


def maskgit_settings(pipe, args) -> dict:
  """The checkpoint's sampling defaults (Pipeline.sampling_defaults), overridden by the flags given; printed in
  one line on stderr so that every result says how it was made."""
  settings = pipe.sampling_defaults()
  if args.mode == "mixed":
    del settings["guidance"]  # mixed generation has no classifier-free guidance
  given = {k for k in settings if getattr(args, k, None) is not None}
  settings.update({k: getattr(args, k) for k in given})
  shown = ", ".join(f"{k} {v}" for k, v in settings.items())
  source = "flags" if given == set(settings) else ("the checkpoint's config.train.sample_*" +
                                                     (f", {', '.join(sorted(given))} from flags" if given else ""))
  print(f"{args.mode}: {shown} (from {source})", file=sys.stderr)
  return settings


def check_sizes(pipe, args):
  """Bounds that need the model: MaskGIT steps within the image's tokens; prompt + generated text within the
  model's context (config.model.max_position_embeddings). ValueError naming the flag."""
  tokens = int(pipe.config.data.num_image_tokens)
  steps = getattr(args, "steps", None)
  if steps is not None and steps > tokens:
    raise ValueError(f"--steps {steps}: at most {tokens}, the image's token count (each MaskGIT step fixes at "
                     "least one token)")
  context = int(pipe.config.model.get("max_position_embeddings", 2048))
  if args.mode == "mmu":
    question = pipe.text_tokenizer.encode([prompting.mmu_question_text(args.question)])
    prompt = len(prompting.mmu_gen_prompt(pipe.layout.image_ids(np.zeros((1, tokens), np.int32)), question,
                                          pipe.layout)[0])
    if args.max_new_tokens > context - prompt:
      raise ValueError(f"--max-new-tokens {args.max_new_tokens}: at most {max(context - prompt, 0)} (the model's "
                       f"context is {context} tokens and the image and question take {prompt})")
  if args.mode == "mixed":
    prompt = 1 + len(pipe.text_tokenizer.encode([args.prompt])[0]) + tokens + 2
    if args.max_text_tokens > context - prompt:
      raise ValueError(f"--max-text-tokens {args.max_text_tokens}: at most {max(context - prompt, 0)} (the model's "
                       f"context is {context} tokens; the prompt and one image take {prompt})")


def run(args) -> int:
  """Runs one `python -m showo_jax.sample` command on parsed (and checked) arguments; returns 0."""
  pipe = pipeline.Pipeline.from_checkpoint(args.checkpoint, tokenizer=args.tokenizer, text_tokenizer=args.text_tokenizer)
  check_sizes(pipe, args)
  pipe.warn = lambda message: print(f"warning: {message}", file=sys.stderr)
  res = pipe.config.data.resolution
  if args.mode == "t2i":
    prompts = [p for p in args.prompt for _ in range(args.num)]
    images = pipe.t2i(prompts, seed=args.seed, **maskgit_settings(pipe, args))
    if args.out_dir:
      for i, img in enumerate(images):
        images_lib.save_png(img, paths.join(args.out_dir, f"{i:03d}.png"))
    if args.out:
      images_lib.save_png(images_lib.image_grid(images, cols=min(len(images), 8)), args.out)
  elif args.mode == "mmu":
    codes = pipe.encode(load_images(args.image, res))
    answers = pipe.mmu(codes, args.question, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.json:
      print(json.dumps([{"image": p, "answer": a} for p, a in zip(args.image, answers)]))
    else:
      print("\n".join(a.replace("\n", " ") for a in answers))
  elif args.mode in ("inpaint", "extrapolate"):
    image = load_images([args.image], res)[0]  # the inputs first: a bad file is the only line printed
    if args.mode == "inpaint":
      mask = load_mask(args.mask, res)
      out = pipe.inpaint(image, mask, args.prompt, seed=args.seed, **maskgit_settings(pipe, args))
    else:
      out = pipe.extrapolate(image, args.direction, args.prompt, seed=args.seed, **maskgit_settings(pipe, args))
    images_lib.save_png(out, args.out)
  elif args.mode == "mixed":
    segments = pipe.mixed(args.prompt, max_text_tokens=args.max_text_tokens, text_temperature=args.text_temperature,
                          seed=args.seed, **maskgit_settings(pipe, args))
    texts, k = [], 0
    for kind, value in segments:
      if kind == "text":
        texts.append(value)
      else:
        images_lib.save_png(value, paths.join(args.out, f"image_{k}.png"))
        texts.append(f"[image_{k}.png]")
        k += 1
    paths.write_text(paths.join(args.out, "text.txt"), " ".join(texts) + "\n")
  return 0
