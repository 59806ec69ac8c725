"""ImageNet-1k → t2i records `{"image_tokens", "caption", "label"}` with the class name as the prompt.

Stage 1 of the paper trains text-to-image on ImageNet with the class name as the whole prompt (SPEC §3.1, §10):
the official loader sets the text to `"{}".format(name)` where `name` is one short name per class index
(its `imagenet_label_mapping`: "0: tench", "1: goldfish", …, the first name of each synset). Here:

Input (one folder), either
  * the tfds `imagenet2012` manual-download layout: `ILSVRC2012_img_train.tar` (one `nXXXXXXXX.tar` per class
    inside) and/or `ILSVRC2012_img_val.tar` (labels from tfds's own `validation_labels.txt`, matched to the
    sorted file names as tfds does); `--split train|validation` picks one. Read in place, by byte offset;
  * or a class-per-folder tree `ROOT/CLASS/*.JPEG` (torchvision ImageFolder).
Labels: classes named by WordNet id (`n01440764`) get their ImageNet-1k index (tfds `labels.txt` order, the
sorted ids, as torchvision's ImageFolder over all 1000 classes); other class folders are numbered in sorted order.
Class names (`--class-names FILE`), one of:
  * `INDEX: name` lines (the official `imagenet_label_mapping`);
  * `WNID name[, other names]` lines (ILSVRC devkit `LOC_synset_mapping.txt` / `synset_words.txt`): the first
    name is used;
  * JSON: `{"0": ["n01440764", "tench"], …}` (`imagenet_class_index.json`), `{"n01440764": "tench"}` or a list.
Without the file, class folders whose names are not WordNet ids are their own names ("_" → " ").
"""

import importlib.util
import json
import os
import re
import tarfile

from showo_jax.common import paths
from showo_jax.data import images as images_lib
from showo_jax.data.builders import common

TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
_WNID = re.compile(r"^n\d{8}$")


def _tfds_file(name: str) -> str:
  """A file shipped inside the installed tensorflow_datasets (found without importing it)."""
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None:
    raise ValueError(f"the ImageNet {name} list comes from tensorflow_datasets, which is not installed")
  return os.path.join(spec.submodule_search_locations[0], "datasets", "imagenet2012", name)  # package data


def wnids() -> list[str]:
  """The 1000 ImageNet-1k WordNet ids in label order (tfds `labels.txt`)."""
  with open(_tfds_file("labels.txt")) as f:
    return [line.strip() for line in f if line.strip()]


def read_class_names(path: str) -> dict:
  """{label index or WordNet id: the class name (the first of its names)} from any format above."""
  content = paths.read_text(path)
  first = lambda names: names.split(",")[0].strip()  # pylint: disable=unnecessary-lambda-assignment
  if content.lstrip().startswith(("{", "[")):
    data = json.loads(content)
    if isinstance(data, list):
      return {i: first(name) for i, name in enumerate(data)}
    out = {}
    for key, value in data.items():
      key = int(key) if key.isdigit() else key
      out[key] = first(value[-1] if isinstance(value, list) else value)
    return out
  out = {}
  for number, line in enumerate(content.splitlines(), 1):
    if not line.strip():
      continue
    head, sep, rest = line.partition(":")
    if sep and head.strip().isdigit():
      out[int(head)] = first(rest)
      continue
    wnid, _, names = line.strip().partition(" ")
    if not _WNID.match(wnid) or not names.strip():
      raise ValueError(f"{path}:{number}: expected 'INDEX: name' or 'WNID name, …', got {line.strip()[:60]!r}")
    out[wnid] = first(names)
  return out


class Source:
  """Images of one split with their labels and class-name prompts."""

  kind = "imagenet"
  needs_images = True
  threads = 8

  def __init__(self, inputs, resolution: int, class_names: str = "", split: str = "train"):
    if len(inputs) != 1 or not paths.isdir(inputs[0]):
      raise FileNotFoundError(f"{' '.join(inputs)}: give one folder (the tfds manual-download folder holding "
                              f"{TRAIN_TAR} / {VAL_TAR}, or a class-per-folder tree)")
    self.root, self.resolution, self.split = inputs[0], resolution, split
    self.class_names_file = class_names
    self._files = common.RawFiles()
    if split not in ("train", "validation"):
      raise ValueError(f"--split {split!r}: use train or validation")
    tar = paths.join(self.root, TRAIN_TAR if split == "train" else VAL_TAR)
    self.items = []  # (name for messages, path, offset or -1 for a plain file, size, class key)
    if paths.exists(tar):
      self.layout = "tfds"
      self._index_tar(tar)
      keys = wnids()
    else:
      self.layout = "folders"
      classes = sorted(d for d in paths.listdir(self.root) if paths.isdir(paths.join(self.root, d)))
      if not classes:
        raise FileNotFoundError(f"{self.root}: neither {TRAIN_TAR} / {VAL_TAR} nor class folders")
      for c in classes:
        for rel in images_lib.list_images(paths.join(self.root, c)):
          self.items.append((paths.join(c, rel), paths.join(self.root, c, rel), -1, 0, c))
      is_wnid = all(_WNID.match(c) for c in classes)
      keys = wnids() if is_wnid else classes
    self.labels = {k: i for i, k in enumerate(keys)}
    names = read_class_names(class_names) if class_names else {}
    self.names = {}
    for key, label in self.labels.items():
      name = names.get(key, names.get(label))
      if name is None and not class_names and not _WNID.match(key):
        name = key.replace("_", " ")
      self.names[key] = name
    missing = sorted({k for *_, k in self.items if k in self.labels and self.names[k] is None})
    if missing:
      hint = f"{class_names} has no name for" if class_names else "no --class-names file to name"
      raise ValueError(f"{hint} class {missing[0]} ({len(missing)} classes unnamed): pass a --class-names file "
                       "(LOC_synset_mapping.txt, the official imagenet_label_mapping, imagenet_class_index.json)")

  def _index_tar(self, path: str):
    if self.split == "validation":
      with open(_tfds_file("validation_labels.txt")) as f:
        val_labels = f.read().split()
      members, error = common.tar_members(path)
      by_name = dict(zip(sorted(name for name, _, _ in members), val_labels))  # as tfds: sorted names
      for name, offset, size in members:
        self.items.append((name, path, offset, size, by_name.get(name)))
    else:
      members, error = [], ""
      try:
        with tarfile.open(paths.local_copy(path), mode="r:") as outer:
          for member in iter(outer.next, None):
            if not member.isfile() or not member.name.endswith(".tar"):
              continue
            inner, inner_error = common.tar_members(path, outer.extractfile(member), base=member.offset_data)
            wnid = paths.basename(member.name)[:-4]
            members += [(f"{member.name}/{n}", o, s, wnid) for n, o, s in inner]
            error = error or inner_error
      except (tarfile.TarError, OSError, EOFError) as e:
        error = error or f"{path}: damaged tar after {len(members)} images ({type(e).__name__}: {e})"
      self.items += [(name, path, offset, size, wnid) for name, offset, size, wnid in members]
    if error:  # kept as an input of its own, so it is counted and reported with the rest
      self.items.append((error, path, -2, 0, None))

  def plan(self) -> dict:
    return {"builder": self.kind, "inputs": [paths.resolve(self.root)], "layout": self.layout,
            "split": self.split, "class_names": paths.resolve(self.class_names_file) if self.class_names_file
            else "", "resolution": self.resolution}

  def __len__(self) -> int:
    return len(self.items)

  def load(self, index: int):
    name, path, offset, size, key = self.items[index]
    if offset == -2:
      raise common.SkipExample("corrupt tar", name)
    if key not in self.labels:
      raise common.SkipExample("unknown class", f"{path}:{name}: class {key!r} is not an ImageNet-1k class")
    if offset < 0:
      image = common.image_file(path, self.resolution)
    else:
      data = common.member_bytes(self._files, path, name, offset, size)
      image = common.image_bytes(data, self.resolution, f"{path}:{name}")
    return image, {"caption": self.names[key], "label": self.labels[key]}
