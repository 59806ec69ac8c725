"""Content digests of a checkpoint's files, and moving a bad checkpoint aside.

A step folder's manifest (`MANIFEST`, JSON: each file's size and SHA-256) is written after Orbax has finished
and committed the step, so its presence marks a checkpoint complete; restore checks every file against it
first. A step without one (written before manifests existed, or killed between Orbax's commit and the
manifest) still loads, with a warning. A bad checkpoint is never deleted: it moves to
`CHECKPOINTS.quarantine/STEP-TIME/`, beside the checkpoints folder.
"""

import json
import logging
import time

import jax

from showo_jax.common import paths

MANIFEST = "showo_manifest.json"
_FORMAT = 1


def write_manifest(step_dir: str):
  files = {}
  for rel in paths.walk_files(step_dir):
    if rel != MANIFEST:
      path = paths.join(step_dir, rel)
      files[rel] = {"size": paths.Path(path).stat().length, "sha256": paths.file_digest(path)}
  paths.write_text(paths.join(step_dir, MANIFEST), json.dumps({"format": _FORMAT, "files": files}, indent=1))


def has_manifest(step_dir: str) -> bool:
  return paths.exists(paths.join(step_dir, MANIFEST))


def verify(step_dir: str):
  """None when every file matches the manifest (or there is no manifest); else what is wrong, in words."""
  if not paths.isdir(step_dir) or not paths.listdir(step_dir):
    return "the step folder is empty"
  if not has_manifest(step_dir):
    return None
  try:
    manifest = json.loads(paths.read_text(paths.join(step_dir, MANIFEST)))
    files = manifest["files"]
  except (ValueError, KeyError, TypeError):
    return f"its {MANIFEST} is unreadable"
  for rel, want in sorted(files.items()):
    path = paths.join(step_dir, rel)
    if not paths.exists(path):
      return f"{rel} is missing"
    size = paths.Path(path).stat().length
    if size != want["size"]:
      return f"{rel} has {size} bytes, the manifest says {want['size']}"
    if paths.file_digest(path) != want["sha256"]:
      return f"{rel} fails its SHA-256 digest (corrupt data)"
  return None


def quarantine(directory: str, step: int, reason: str) -> str:
  """Moves `directory/step` to `directory.quarantine/step-TIME` (process 0) and warns once; returns where."""
  dest = paths.join(paths.resolve(directory) + ".quarantine", f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  if jax.process_index() == 0:
    paths.move(paths.join(directory, str(step)), dest)
  logging.warning("checkpoint step %d in %s is unusable (%s): moved aside to %s; using the newest intact one",
                  step, directory, reason, dest)
  return dest
