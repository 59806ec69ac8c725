"""Image–text pairs (CC12M / SA-1B / LAION-aesthetics / JourneyDB style) → records `{"image_tokens", "caption"}`.

The same records feed text-to-image (the caption is the prompt) and captioning (mmu) training. Inputs, any mix:
  * webdataset tar shards (`*.tar`, or a folder holding them): members grouped by key (`dir/key.ext`, the key
    ends at the first dot of the file name), image `.jpg` / `.jpeg` / `.png` / `.webp`, caption `.txt` / `.text`
    / `.caption` or a `.json` with a `caption` / `text` / `prompt` field (the official loader's suffixes);
    read in place by byte offset (uncompressed tars only);
  * a JSONL manifest (`*.jsonl`): `{"image": "rel/path.jpg", "caption": "…"}` per line (also `file` / `path`,
    `text` / `prompt`), paths relative to `--image-root` (default: the manifest's folder);
  * an image folder: captions from `captions.jsonl` (`{"file", "caption"}`) or a `.txt` beside each image.
Skipped and counted: missing files, corrupt images and tar members, keys without an image or a caption,
empty or non-text captions, manifest lines that are not JSON objects.
Captions are stored whole; the official trainer's per-step caption choices (the first sentence half of the time,
re-caption prefixes stripped, CC12M's `<person>` replaced) are random per step and not applied here.
"""

import json
import os
import re

from showo_jax.common import paths
from showo_jax.data import images as images_lib
from showo_jax.data.builders import common

IMAGE_EXTS = ("jpg", "png", "jpeg", "webp")
CAPTION_EXTS = ("txt", "text", "caption", "json")
JSON_CAPTION_FIELDS = ("caption", "text", "prompt")
MANIFEST_IMAGE_FIELDS = ("image", "file", "path", "file_name")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # "dir/key.ext.more" → ("dir/key", "ext.more")


class Source:
  """Pairs of all inputs, in input order (tar members in archive order)."""

  kind = "pairs"
  needs_images = True
  threads = 8

  def __init__(self, inputs, resolution: int, image_root: str = ""):
    self.resolution, self.image_root = resolution, image_root
    self.inputs = []
    self._files = common.RawFiles()
    self._manifests = []  # (JsonlIndex, image root)
    self.items = []  # ("tar", path, key, {ext: (offset, size)}) | ("manifest", m, line) | ("file", path, caption)
    for spec in inputs:
      for path in self._expand(spec):
        self.inputs.append(paths.resolve(path))
        if path.lower().endswith(".tar"):
          self._add_tar(path)
        elif path.lower().endswith(".jsonl"):
          self._add_manifest(path)
        else:
          self._add_folder(path)
    if not self.items:
      raise FileNotFoundError(f"{' '.join(inputs)}: no image-text pairs found")

  @staticmethod
  def _expand(spec: str) -> list[str]:
    if paths.isdir(spec):
      tars = common.expand_inputs([spec], (".tar",), "tar") if any(
          rel.lower().endswith(".tar") for rel in paths.walk_files(spec)) else []
      return tars or [spec]
    return common.expand_inputs([spec], (".tar", ".jsonl"), "tar / jsonl")

  def _add_tar(self, path: str):
    members, error = common.tar_members(path)
    groups = {}
    for name, offset, size in members:
      match = _KEY_EXT.match(name)
      if match and not paths.basename(name).startswith("."):
        groups.setdefault(match.group(1), {})[match.group(2).lower()] = (offset, size)
    self.items += [("tar", path, key, parts) for key, parts in groups.items()]
    if error:  # an input of its own, so it is counted and reported with the rest
      self.items.append(("error", "corrupt tar", error))

  def _add_manifest(self, path: str):
    root = self.image_root or paths.parent(path)
    self._manifests.append((common.JsonlIndex([path]), root))
    m = len(self._manifests) - 1
    self.items += [("manifest", m, line) for line in range(len(self._manifests[m][0]))]

  def _add_folder(self, folder: str):
    captions = {}
    path = paths.join(folder, images_lib.CAPTIONS_FILE)
    if paths.exists(path):
      index = common.JsonlIndex([path])
      for line in range(len(index)):
        try:
          row = index.row(line)
        except common.SkipExample:
          continue  # its image, if any, is then counted as having no caption
        key = next((row[k] for k in ("file", "image", "file_name") if k in row), None)
        if isinstance(key, str) and "caption" in row:
          captions[os.path.normpath(key)] = row["caption"]
    for rel in images_lib.list_images(folder):
      caption = captions.get(os.path.normpath(rel))
      txt = paths.join(folder, os.path.splitext(rel)[0] + ".txt")
      if caption is None and paths.exists(txt):
        caption = paths.read_bytes(txt)
      self.items.append(("file", paths.join(folder, rel), caption))

  def plan(self) -> dict:
    return {"builder": self.kind, "inputs": self.inputs, "image_root": paths.resolve(self.image_root)
            if self.image_root else "", "resolution": self.resolution}

  def __len__(self) -> int:
    return len(self.items)

  def load(self, index: int):
    item = self.items[index]
    if item[0] == "error":
      raise common.SkipExample(item[1], item[2])
    if item[0] == "tar":
      return self._load_tar(*item[1:])
    if item[0] == "manifest":
      return self._load_manifest(*item[1:])
    _, path, caption = item
    if caption is None:
      raise common.SkipExample("no caption", f"{path}: no caption (captions.jsonl entry or .txt file)")
    caption = common.text(caption, "caption", path)
    return common.image_file(path, self.resolution), {"caption": caption}

  def _load_tar(self, path: str, key: str, parts: dict):
    where = f"{path}:{key}"
    image_ext = next((e for e in IMAGE_EXTS if e in parts), None)
    caption_ext = next((e for e in CAPTION_EXTS if e in parts), None)
    if image_ext is None:
      raise common.SkipExample("no image member", f"{where}: no .{' / .'.join(IMAGE_EXTS)} member")
    if caption_ext is None:
      raise common.SkipExample("no caption member", f"{where}: no .{' / .'.join(CAPTION_EXTS)} member")
    raw = common.member_bytes(self._files, path, f"{key}.{caption_ext}", *parts[caption_ext])
    if caption_ext == "json":
      try:
        row = json.loads(raw)
      except (ValueError, UnicodeDecodeError):
        row = None
      if not isinstance(row, dict):
        raise common.SkipExample("non-text caption", f"{where}.json: not a JSON object")
      raw = common.first_field(row, JSON_CAPTION_FIELDS, "caption", f"{where}.json")
    caption = common.text(raw, "caption", f"{where}.{caption_ext}")
    data = common.member_bytes(self._files, path, f"{key}.{image_ext}", *parts[image_ext])
    return common.image_bytes(data, self.resolution, f"{where}.{image_ext}"), {"caption": caption}

  def _load_manifest(self, m: int, line: int):
    index, root = self._manifests[m]
    where = index.where(line)
    row = index.row(line)
    rel = common.first_field(row, MANIFEST_IMAGE_FIELDS, "image path", where)
    if not isinstance(rel, str) or not rel:
      raise common.SkipExample("no image path", f"{where}: the image path is not a non-empty string")
    caption = common.text(common.first_field(row, JSON_CAPTION_FIELDS, "caption", where), "caption", where)
    return common.image_file(common.under_root(root, rel, where), self.resolution), {"caption": caption}
