"""Your own images with captions and/or conversations, one JSON object per line → records for fine-tuning.

Input: JSONL files (`--input a.jsonl b.jsonl`, globs or folders of them), each line one image and what to learn
from it, paths relative to `--image-root` (default: the file's folder):
  {"image": "rel/path.png", "caption": "…"}                       text-to-image prompt, and captioning
  {"image": "rel/path.png", "conversations": [{"from": "human", "value": "…"}, {"from": "gpt", "value": "…"}]}
                                                                  LLaVA's format: understanding (question/answer)
  both fields on one line                                         both uses
Optional "id". Records: `{"image_tokens", "id"}` plus `caption` and/or `conversation` (the [question, answer]
pairs as JSON, rendered as the llava builder's). A t2i source must be built from caption lines only (training
refuses a folder where some records have none: its meta.json counts the records holding each field); an mmu
source takes any mix (a caption becomes a captioning row, "Please describe this image." then the caption; a
conversation is rendered turn by turn).

Skipped and counted: lines that are not JSON objects, no image path or one leaving the image root, missing or
corrupt images, lines with neither a caption nor conversations, empty or non-text captions, and the
conversations the llava builder skips (no assistant turn, turns out of order, empty or non-text turns).
"""

import json

from showo_jax.common import paths
from showo_jax.data.builders import common
from showo_jax.data.builders import llava


class Source:
  """The lines of all inputs, in input order."""

  kind = "jsonl"
  needs_images = True
  threads = 8

  def __init__(self, inputs, resolution: int, image_root: str = ""):
    self.resolution, self.image_root = resolution, image_root
    self.files = common.expand_inputs(inputs, (".jsonl",), "jsonl")
    self.index = common.JsonlIndex(self.files)
    if not len(self.index):
      raise FileNotFoundError(f"{' '.join(inputs)}: no lines in the JSONL input")

  def plan(self) -> dict:
    return {"builder": self.kind, "inputs": [paths.resolve(f) for f in self.files],
            "image_root": paths.resolve(self.image_root) if self.image_root else "", "resolution": self.resolution}

  def __len__(self) -> int:
    return len(self.index)

  def load(self, index: int):
    where = self.index.where(index)
    row = self.index.row(index)
    rel = row.get("image")
    if not isinstance(rel, str) or not rel:
      raise common.SkipExample("no image path", f"{where}: 'image' is not a non-empty path")
    fields = {"id": str(row.get("id", index))}
    if "caption" not in row and "conversations" not in row:
      raise common.SkipExample("no caption or conversations", f"{where}: neither 'caption' nor 'conversations'")
    if "caption" in row:
      fields["caption"] = common.text(row["caption"], "caption", where)
    if "conversations" in row:
      fields["conversation"] = json.dumps(llava.conversation_pairs(row["conversations"], where))
    root = self.image_root or paths.parent(self.files[self.index.locate(index)[0]])
    return common.image_file(common.under_root(root, rel, where), self.resolution), fields
