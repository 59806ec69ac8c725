"""LLaVA conversation data → mmu records `{"image_tokens", "conversation", "id"}` (instruction tuning, SPEC §3.3).

Input: the conversation JSON of LLaVA-Pretrain-558K (`blip_laion_cc_sbu_558k.json`) or LLaVA-v1.5-mix-665K
(`llava_v1_5_mix665k.json`): a list of `{"id", "image": "rel/path.jpg", "conversations": [{"from": "human",
"value": "<image>\\n…"}, {"from": "gpt", "value": "…"}, …]}`, with `--image-root` the folder the image paths are
relative to (default: the JSON's folder).

As the official loader (`llava_data_vq_unified.py`): entries without an image are left out; `<image>` is
removed from the turn that holds it (which is then stripped); a conversation that starts with the assistant
loses that first turn. Turns are paired (question, answer); a final question with no answer is dropped.
`conversation` holds the pairs as a JSON list `[[question, answer], …]`; the mmu pipeline renders it with
`prompting.llava_prompt` (`USER: {q} ASSISTANT: {a}<|endoftext|>` per turn, labels on the answers only).

Skipped and counted: entries with no image (text-only), missing or corrupt images, a conversation with no
assistant turn, turns out of order, empty or non-text turns.
"""

import json

from showo_jax.common import paths
from showo_jax.data.builders import common

IMAGE_TOKEN = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def conversation_pairs(turns, where: str) -> list[tuple[str, str]]:
  """[(question, answer)] of a LLaVA `conversations` list; SkipExample when it has no usable assistant turn."""
  if not isinstance(turns, list) or not turns:
    raise common.SkipExample("no assistant turn", f"{where}: no conversation")
  messages = []
  for k, turn in enumerate(turns):
    value = turn.get("value") if isinstance(turn, dict) else None
    role = _ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
    if role is None:
      raise common.SkipExample("bad turn", f"{where} turn {k}: 'from' is not human / gpt")
    if not isinstance(value, str):
      raise common.SkipExample("non-text turn", f"{where} turn {k}: value is not text")
    if IMAGE_TOKEN in value:
      value = value.replace(IMAGE_TOKEN, "").strip()
    if not value.strip():
      raise common.SkipExample("empty turn", f"{where} turn {k}: empty {role} turn")
    messages.append((role, value))
  if messages[0][0] == "assistant":  # as the official preprocess: a conversation starts with the user
    messages = messages[1:]
  pairs = []
  for k in range(0, len(messages) - 1, 2):
    (r1, question), (r2, answer) = messages[k], messages[k + 1]
    if (r1, r2) != ("user", "assistant"):
      raise common.SkipExample("turns out of order", f"{where}: turns {k}, {k + 1} are {r1}, {r2}, not user, "
                               "assistant")
    pairs.append((question, answer))
  if not pairs:
    raise common.SkipExample("no assistant turn", f"{where}: no assistant turn")
  return pairs


class Source:
  """The entries of one conversation JSON, in file order."""

  kind = "llava"
  needs_images = True
  threads = 8

  def __init__(self, inputs, resolution: int, image_root: str = ""):
    if len(inputs) != 1 or not paths.isfile(inputs[0]):
      raise FileNotFoundError(f"{' '.join(inputs)}: give one LLaVA conversation JSON file")
    self.path, self.resolution = inputs[0], resolution
    self.image_root = image_root or paths.parent(self.path)
    try:
      self.entries = json.loads(paths.read_text(self.path))
    except ValueError as e:
      raise ValueError(f"{self.path}: not JSON ({e})") from None
    if not isinstance(self.entries, list):
      raise ValueError(f"{self.path}: expected a JSON list of conversations, got a {type(self.entries).__name__}")

  def plan(self) -> dict:
    return {"builder": self.kind, "inputs": [paths.resolve(self.path)],
            "image_root": paths.resolve(self.image_root), "resolution": self.resolution}

  def __len__(self) -> int:
    return len(self.entries)

  def load(self, index: int):
    entry = self.entries[index]
    if not isinstance(entry, dict):
      raise common.SkipExample("bad entry", f"{self.path}[{index}]: not a JSON object")
    where = f"{self.path}[{index}] (id {entry.get('id', '?')})"
    if not isinstance(entry.get("image"), str) or not entry["image"]:
      raise common.SkipExample("no image (text-only)", f"{where}: no image")
    pairs = conversation_pairs(entry.get("conversations"), where)
    image = common.image_file(common.under_root(self.image_root, entry["image"], where), self.resolution)
    return image, {"conversation": json.dumps(pairs), "id": str(entry.get("id", index))}
