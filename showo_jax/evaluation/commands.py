"""What `python -m showo_jax.evaluate MODE` does once its arguments are parsed and checked (showo_jax/evaluate.py)."""

import json
import sys

import numpy as np

from showo_jax.common import paths
from showo_jax.data import images as images_lib
from showo_jax.evaluation import benchmarks
from showo_jax.evaluation import embedded_report
from showo_jax.evaluation import geneval
from showo_jax.evaluation import image_metrics
from showo_jax.inference import pipeline


def _log(message: str):
  print(message, file=sys.stderr)


def _pipeline(args):
  if not paths.exists(args.checkpoint):
    raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such folder")
  pipe = pipeline.Pipeline.from_checkpoint(args.checkpoint, tokenizer=args.tokenizer,
                                           text_tokenizer=args.text_tokenizer)
  pipe.warn = lambda message: _log(f"warning: {message}")
  return pipe


def _show(result: dict):
  print(json.dumps(result, indent=1))


def _embedded(args):
  report = embedded_report.evaluate(args.workdir, args.checkpoint, per_class=args.per_class, seed=args.seed,
                                    steps=args.steps, guidance=args.guidance, temperature=args.temperature,
                                    schedule=args.schedule)
  _show({k: ({f: x for f, x in v.items() if f != "mmu_examples"} if isinstance(v, dict) else v)
         for k, v in report.items()})


def _geneval(args):
  prompts = geneval.read_prompts(args.prompts)  # a bad prompt file is the only line printed
  pipe = _pipeline(args)
  tokens = int(pipe.config.data.num_image_tokens)
  if args.steps > tokens:
    raise ValueError(f"--steps {args.steps}: at most {tokens}, the image's token count")
  settings = dict(steps=args.steps, guidance=args.guidance, temperature=args.temperature, schedule=args.schedule)
  _log("geneval: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + f", {args.images_per_prompt} images "
       f"per prompt, batches of {args.batch_size}")
  record = dict(settings, checkpoint=paths.resolve(args.checkpoint), prompts=paths.resolve(args.prompts),
                resolution=int(pipe.config.data.resolution))

  def generate(texts, seed):  # the last batch is padded to the batch size: one compiled program for the run
    padded = list(texts) + [texts[-1]] * (args.batch_size - len(texts))
    return pipe.t2i(padded, seed=seed, **settings)[:len(texts)]

  counts = geneval.write_folders(args.out, prompts, generate, images_per_prompt=args.images_per_prompt,
                                 batch_size=args.batch_size, seed=args.seed, settings=record, log=_log)
  _show(dict(counts, out=args.out, prompts=len(prompts)))


def _answerer(pipe, args):
  res = int(pipe.config.data.resolution)

  def answer(image_paths, prompts):
    n = len(prompts)
    pad = args.batch_size - n  # one compiled program: the last batch is padded to the batch size
    images = np.stack([images_lib.load_image(p, res) for p in image_paths] + [np.zeros((res, res, 3), np.uint8)] * pad)
    codes = pipe.encode(images)
    out = pipe.mmu(codes, list(prompts) + [prompts[-1]] * pad, max_new_tokens=args.max_new_tokens, pad_multiple=32)
    return out[:n]
  return answer


def _understanding(args):
  if args.mode == "pope":
    items = benchmarks.pope_items(args.questions, args.images)
  elif args.mode == "mme":
    items = benchmarks.mme_items(args.root)
  elif args.mode == "vqa":
    items = benchmarks.vqa_items(args.questions, args.images, args.format)
  else:
    items = benchmarks.mmmu_items(args.questions, args.images)
  pipe = _pipeline(args)
  answers = benchmarks.answer_all(items, _answerer(pipe, args), batch_size=args.batch_size, log=_log)
  scores = {}
  if args.mode == "pope":
    scores = benchmarks.write_pope(args.out, items, answers)
  elif args.mode == "mme":
    scores = benchmarks.write_mme(args.out, items, answers)
  elif args.mode == "vqa":
    benchmarks.write_vqa(args.out, items, answers, args.format)
  else:
    benchmarks.write_mmmu(args.out, items, answers)
  _show(dict(scores, answers=len(answers), out=args.out))


def run(args) -> int:
  """Runs one `python -m showo_jax.evaluate` command on parsed (and checked) arguments; returns 0."""
  if args.mode == "embedded":
    _embedded(args)
  elif args.mode == "geneval":
    _geneval(args)
  elif args.mode == "fid":
    _show(image_metrics.fid(args.real, args.fake, args.inception, save_real_stats=args.save_real_stats,
                            batch_size=args.batch_size, log=_log))
  elif args.mode == "clipscore":
    _show(image_metrics.clip_score(args.folder, args.clip, batch_size=args.batch_size, log=_log))
  else:
    _understanding(args)
  return 0
