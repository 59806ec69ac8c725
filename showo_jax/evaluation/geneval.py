"""GenEval's image folders (Ghosh et al. 2023): what its `evaluate_images.py` scores, unchanged.

Layout, one folder per line of the prompt file (`evaluation_metadata.jsonl`, each line a JSON object with at
least "prompt"):

  OUT/settings.json               how the images were made (checked on a rerun: one folder, one setting)
  OUT/00000/metadata.jsonl        that line of the prompt file, as given
  OUT/00000/samples/00000.png …   `images_per_prompt` images

The (prompt, sample) pairs are cut into batches of fixed boundaries and batch k is sampled with seed
`seed + k`, so a rerun after an interruption regenerates only the batches that lack an image, and writes the
same pixels an uninterrupted run would have.
"""

import io
import json

import numpy as np
from PIL import Image

from showo_jax.common import paths
from showo_jax.data import images as images_lib


def read_prompts(path: str) -> list:
  """The prompt file's lines as dicts (blank lines skipped); ValueError naming the file and line if one is not a
  JSON object with a non-empty "prompt" string."""
  rows = []
  for number, row in paths.read_jsonl(path, "--prompts"):
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
      raise ValueError(f'{path}:{number}: need a JSON object with a non-empty "prompt" string')
    rows.append(row)
  return rows


def sample_path(out: str, index: int, sample: int) -> str:
  return paths.join(out, f"{index:05d}", "samples", f"{sample:05d}.png")


def _is_image(path: str) -> bool:
  """A PNG that decodes; an interrupted cloud write or a truncated file counts as missing."""
  if not paths.isfile(path):
    return False
  try:
    with Image.open(io.BytesIO(paths.read_bytes(path))) as image:
      image.load()
    return True
  except (OSError, ValueError):
    return False


def check_settings(out: str, settings: dict):
  """Writes OUT/settings.json, or refuses a folder whose images were made with other settings."""
  path = paths.join(out, "settings.json")
  if paths.exists(path):
    old = json.loads(paths.read_text(path))
    changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if changed:
      shown = ", ".join(f"{k} {old.get(k)!r} → {settings.get(k)!r}" for k in changed)
      raise ValueError(f"--out {out} holds images made with other settings ({shown}); use a new folder")
    return
  paths.write_text(path, json.dumps(settings, indent=1, sort_keys=True) + "\n")


def write_folders(out: str, prompts: list, generate, *, images_per_prompt: int, batch_size: int, seed: int,
                  settings: dict, log=print) -> dict:
  """Fills OUT with GenEval's layout. `generate(texts, seed)` returns uint8 [len(texts), H, W, 3], one image per
  text. Returns {"generated": images written now, "kept": images already there}."""
  if images_per_prompt < 1 or batch_size < 1:
    raise ValueError(f"need images per prompt >= 1 and batch size >= 1, got {images_per_prompt} and {batch_size}")
  check_settings(out, dict(settings, images_per_prompt=images_per_prompt, batch_size=batch_size, seed=seed))
  for index, row in enumerate(prompts):
    meta = paths.join(out, f"{index:05d}", "metadata.jsonl")
    if not paths.exists(meta):
      paths.write_text(meta, json.dumps(row) + "\n")
  pairs = [(i, s) for i in range(len(prompts)) for s in range(images_per_prompt)]
  batches = [pairs[k:k + batch_size] for k in range(0, len(pairs), batch_size)]
  generated = kept = 0
  for k, batch in enumerate(batches):
    missing = [not _is_image(sample_path(out, i, s)) for i, s in batch]
    kept += len(batch) - sum(missing)
    if not any(missing):
      continue
    images = np.asarray(generate([prompts[i]["prompt"] for i, _ in batch], seed + k))
    if images.shape[0] != len(batch):
      raise RuntimeError(f"the generator returned {images.shape[0]} images for {len(batch)} prompts")
    for (i, s), image, needed in zip(batch, images, missing):
      if needed:
        images_lib.save_png(image, sample_path(out, i, s))
        generated += 1
    log(f"geneval: batch {k + 1}/{len(batches)} ({generated} images written, {kept} kept)")
  return {"generated": generated, "kept": kept}
