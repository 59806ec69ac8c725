"""The embedded default's report card (`python -m showo_jax.evaluate`, whose docstring lists the figures), for the
validation split (where settings are chosen) and the test split (reported for the final choice): MMU accuracy,
T2I class consistency judged by a pixel classifier, T2I diversity and near-copies of training digits, tokenizer
PSNR and codebook usage, lm perplexity on held-out text; for the fine-tuning demo (config.data.embedded_task =
"sideways") also the new task's MMU accuracy and T2I class consistency.
"""

import functools
import json
import sys
import time

import numpy as np

from showo_jax.common import paths
from showo_jax.config import showo as showo_config
from showo_jax.data import embedded
from showo_jax.data import images as images_lib
from showo_jax.evaluation import measures
from showo_jax.inference.pipeline import apply_fn
from showo_jax.inference.pipeline import Pipeline


@functools.lru_cache(maxsize=2)
def digit_judge(view: str = "upright") -> measures.PixelClassifier:
  """The pixel classifier that judges generated digits, trained on the embedded training split (`view`: "upright"
  or "sideways", the digits turned as the fine-tuning demo turns them). Its training is deterministic and the
  costliest part of a tiny model's report (400 full-batch steps), so one process trains each view once."""
  images, labels = embedded.load_mnist()
  train = embedded.split_indices(len(images), "train")
  digits = embedded.turn_sideways(images[train]) if view == "sideways" else images[train]
  return measures.PixelClassifier(digits, labels[train])


SPLITS = ("validation", "test")  # settings are chosen on validation; test figures are reported for the final choice
_SPLIT_SEED = {"validation": 500_000, "test": 0}  # each split gets its own T2I samples


def evaluate(workdir: str, checkpoint: str = "", *, per_class: int = 20, seed: int = 0, **sampling) -> dict:
  """The report card of a workdir trained on the embedded default, for the validation and the test split; also
  writes DIR/eval.json and DIR/eval.png (test samples). `sampling`: steps, guidance, temperature, schedule
  overriding the checkpoint's own (Pipeline.sampling_defaults); None keeps the checkpoint's."""
  t0 = time.time()
  pipe = Pipeline.from_checkpoint(checkpoint or workdir)
  settings = pipe.sampling_defaults()
  unknown = set(sampling) - set(settings)
  if unknown:
    raise TypeError(f"unknown sampling settings {sorted(unknown)}")
  settings.update({k: v for k, v in sampling.items() if v is not None})
  print("evaluate: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + " (from the checkpoint's "
        "config.train.sample_* unless given)", file=sys.stderr)
  images, labels = embedded.load_mnist()
  train_idx = embedded.split_indices(len(images), "train")
  classifier = digit_judge("upright")
  report = {"checkpoint": paths.resolve(checkpoint or workdir), "sampling": settings,
            "maskgit_steps": settings["steps"], "guidance": settings["guidance"]}
  sideways = pipe.config.data.get("embedded_task", "") == "sideways"
  if sideways:  # the fine-tuning demo's task, judged by a classifier of turned training digits
    turned_classifier = digit_judge("sideways")
  for split in SPLITS:
    idx = embedded.split_indices(len(images), split)
    report[split], generated, recon = _split_report(
        pipe, classifier, images[idx], labels[idx], images[train_idx], embedded.load_text(split),
        settings, per_class=per_class, seed=seed + _SPLIT_SEED[split])
    if sideways:
      report[split].update(_sideways_report(pipe, turned_classifier, images[idx], labels[idx], settings,
                                            per_class=per_class, seed=seed + _SPLIT_SEED[split] + 77_777))
  report["seconds"] = time.time() - t0
  paths.write_text(paths.join(workdir, "eval.json"), json.dumps(report, indent=1))
  test = images[embedded.split_indices(len(images), "test")]
  _summary_png(generated, per_class, test[:10], recon[:10], paths.join(workdir, "eval.png"))
  return report


def _split_report(pipe, classifier, split_images, split_labels, train_images, texts, settings, *, per_class, seed):
  """(figures of one held-out split, its generated images, its reconstructions)."""
  out = {}
  # The split's images through the image tokenizer (the same tokenization the training data went through).
  codes = np.concatenate([pipe.encode(split_images[i:i + 250]) for i in range(0, len(split_images), 250)])
  answers = []
  for i in range(0, len(codes), 100):
    answers += pipe.mmu(codes[i:i + 100], embedded.QUESTION, max_new_tokens=6)
  correct = [measures.answer_is(a, embedded.DIGITS[k]) for a, k in zip(answers, split_labels)]
  out["mmu_accuracy"] = float(np.mean(correct))
  out["mmu_examples"] = [f"{embedded.DIGITS[k]} -> {a}" for a, k in list(zip(answers, split_labels))[:10]]

  # T2I: class consistency (judged by the pixel classifier), diversity and copies of training digits.
  out["classifier_accuracy"] = classifier.accuracy(split_images, split_labels)
  prompts = [embedded.caption(k) for k in range(10) for _ in range(per_class)]
  wanted = np.repeat(np.arange(10), per_class)
  generated = np.concatenate([pipe.t2i(prompts[i:i + 100], seed=seed + i, **settings)
                              for i in range(0, len(prompts), 100)])
  out["t2i_class_consistency"] = classifier.accuracy(generated, wanted)
  out["t2i_diversity"] = measures.diversity(generated, wanted, split_images, split_labels)
  out["t2i_near_copies"] = measures.near_copy_share(generated, train_images, split_images)

  recon = np.concatenate([pipe.decode(codes[i:i + 250]) for i in range(0, len(codes), 250)])
  out["tokenizer_psnr"] = measures.psnr(split_images, recon)
  out["tokenizer_codebook_usage"] = measures.codebook_usage(codes, pipe.layout.codebook_size)
  out["lm_perplexity"] = measures.perplexity(apply_fn(pipe.cfg), pipe.params, texts, pipe.text_tokenizer,
                                             pipe.layout, showo_config.seq_len(pipe.config))
  return out, generated, recon


def _sideways_report(pipe, classifier, split_images, split_labels, settings, *, per_class, seed) -> dict:
  """The sideways task on a split: "Is this digit on its side?" over its digits turned (→ yes) and upright
  (→ no), and T2I class consistency of "a handwritten digit k on its side" judged on turned digits."""
  turned = embedded.turn_sideways(split_images)
  out, correct = {}, []
  for pictures, expected in ((turned, "yes"), (split_images, "no")):
    codes = np.concatenate([pipe.encode(pictures[i:i + 250]) for i in range(0, len(pictures), 250)])
    for i in range(0, len(codes), 100):
      correct += [measures.answer_is(a, expected)
                  for a in pipe.mmu(codes[i:i + 100], embedded.SIDEWAYS_QUESTION, max_new_tokens=4)]
  out["sideways_mmu_accuracy"] = float(np.mean(correct))
  out["sideways_classifier_accuracy"] = classifier.accuracy(turned, split_labels)
  prompts = [embedded.caption(k, sideways=True) for k in range(10) for _ in range(per_class)]
  wanted = np.repeat(np.arange(10), per_class)
  generated = np.concatenate([pipe.t2i(prompts[i:i + 100], seed=seed + i, **settings)
                              for i in range(0, len(prompts), 100)])
  out["sideways_t2i_class_consistency"] = classifier.accuracy(generated, wanted)
  out["sideways_t2i_diversity"] = measures.diversity(generated, wanted, turned, split_labels)
  return out


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
