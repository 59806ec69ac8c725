"""The package's layer order, declared once, and a check that no import runs against it.

Imports flow one way, from a layer to the ones above it in this list (a module may import its own layer and
any layer before it). Lazy imports inside functions count too: they are read from the syntax tree, not run.
"""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "showo_jax"

# Lowest first. "" is the package root: the command-line entry points.
LAYERS = (
    "common",      # logical axes, XLA options, mesh/shardings, Orbax checkpoints, metric writers, optimizer
    "models",      # the Show-o network: vocabulary, omni-attention mask, mask schedule, layers, losses
    "config",      # the config machinery and Show-o's ConfigDicts → the models' dataclasses
    "data",        # images, records, text tokenizer, prompts, grain pipelines, dataset builders
    "tokenizer",   # MAGVIT-v2: LFQ, encoder/decoder, discriminator, its config, losses, trainer, pre-tokenizer
    "sampling",    # MaskGIT, autoregressive (KV cache), mixed-modality and editing samplers
    "interop",     # official checkpoints in and out, LLM init, loading our checkpoints, the public API
    "inference",   # a loaded Show-o with its tokenizers: prompts in, images and answers out
    "training",    # the Show-o train step, trainer, embedded-data preparation, in-training samples
    "evaluation",  # metrics, the embedded report card, GenEval folders, FID and CLIP networks, benchmark answers
    "tools",       # benchmarks and the memory/FLOPs planner
    "",            # entry points: python -m showo_jax.<name>
)


def layer_of(module: str) -> int:
  """Index in LAYERS of a dotted module name inside showo_jax."""
  parts = module.split(".")
  assert parts[0] == "showo_jax", module
  if len(parts) == 1:
    return LAYERS.index("")
  if parts[1] in LAYERS:
    return LAYERS.index(parts[1])
  if (PACKAGE / f"{parts[1]}.py").exists() and len(parts) == 2:
    return LAYERS.index("")
  raise AssertionError(f"showo_jax.{parts[1]} is in no layer: add it to LAYERS in {__file__}")


def module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(PACKAGE.parent).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool):
  """(line, imported module) for every showo_jax import in `source`, at any depth."""
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] == "showo_jax":
          yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = module.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
      else:
        target = node.module or ""
      if target.split(".")[0] != "showo_jax":
        continue
      for alias in node.names:  # `from showo_jax import training` imports the package showo_jax.training
        sub = f"{target}.{alias.name}"
        known = (PACKAGE.parent / sub.replace(".", "/")).is_dir() or \
            (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
        yield node.lineno, sub if known else target


def violations(source: str, module: str, is_package: bool = False):
  """One line per import in `source` that runs from `module`'s layer to a higher one."""
  own = layer_of(module)
  out = []
  for line, target in imported_modules(source, module, is_package):
    if layer_of(target) > own:
      out.append(f"{module} (line {line}) imports {target}: layer {LAYERS[layer_of(target)] or 'entry points'!r} "
                 f"is above {LAYERS[own] or 'entry points'!r} (order: {' → '.join(l or 'entry' for l in LAYERS)})")
  return out


def _modules():
  return sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
  for path in _modules():
    layer_of(module_name(path))


def test_no_import_runs_up_the_layers():
  found = []
  for path in _modules():
    found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
  assert not found, "imports against the layer order:\n" + "\n".join(found)


@pytest.mark.parametrize("module,source", [
    ("showo_jax.models.transformer", "from showo_jax.training import trainer\n"),
    ("showo_jax.models.transformer", "def f():\n  from showo_jax.config import showo\n  return showo\n"),
    ("showo_jax.data.prompting", "import showo_jax.sampling.maskgit\n"),
    ("showo_jax.sampling.maskgit", "from ..training import losses\n"),
    ("showo_jax.training.trainer", "from showo_jax import evaluate\n"),
    ("showo_jax.common.sharding", "from showo_jax import models\n"),
])
def test_an_upward_import_is_named(module, source):
  found = violations(source, module)
  assert len(found) == 1 and found[0].startswith(f"{module} (line "), found


@pytest.mark.parametrize("module,source", [
    ("showo_jax.training.trainer", "from showo_jax.models import transformer\nfrom . import train_step\n"),
    ("showo_jax.train", "from showo_jax.training import trainer\n"),
    ("showo_jax.models.transformer", "import jax\nfrom showo_jax.common import axes\n"),
])
def test_downward_and_sideways_imports_pass(module, source):
  assert violations(source, module) == []


ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"  # the one map of the package


def test_the_architecture_map_matches_the_tree():
  section = ARCHITECTURE.read_text()
  paths = set(re.findall(r"`(showo_jax/[\w/.]*)`", section))
  missing = sorted(p for p in paths if not (PACKAGE.parent / p).exists())
  assert not missing, f"{ARCHITECTURE.name} names paths that do not exist: {missing}"
  folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
  unlisted = [f for f in folders if f"showo_jax/{f}/" not in paths]
  assert not unlisted, f"folders missing from {ARCHITECTURE.name}'s table: {unlisted}"
  assert sorted(folders) == sorted(l for l in LAYERS if l), "every folder has a layer, every layer a folder"
  rows = [m for m in re.findall(r"^\| `showo_jax/(\w+)/` \|", section, flags=re.M)]
  assert rows == [l for l in LAYERS if l], f"{ARCHITECTURE.name} lists the folders in the order {rows}, the " \
      f"layers are {LAYERS}"


ENTRY_POINTS = ("train", "train_tokenizer", "tokenize_images", "build_dataset", "sample", "evaluate", "convert",
                "plan", "bench")


def test_the_root_holds_only_the_entry_points():
  assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") == sorted(ENTRY_POINTS)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_entry_point_answers_help(name):
  done = subprocess.run([sys.executable, "-m", f"showo_jax.{name}", "--help"], capture_output=True, text=True,
                        timeout=300, cwd=PACKAGE.parent, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  first_line = ast.get_docstring(ast.parse((PACKAGE / f"{name}.py").read_text())).split("\n")[0]
  assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert " ".join(first_line.split()[:4]) in " ".join((done.stdout + done.stderr).split()), done.stdout[:2000]


def test_files_stay_small():
  """Modules stay under ~400 lines, entry points (argument parsing, one library call, errors) under 150."""
  too_long = []
  for path in _modules():
    limit = 150 if path.parent == PACKAGE else 400
    lines = len(path.read_text().splitlines())
    if lines > limit:
      too_long.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines (limit {limit})")
  assert not too_long, "\n".join(too_long)


def test_files_and_pages_the_documents_name_exist():
  root = PACKAGE.parent
  documents = [root / "README.md", root / "tests" / "README.md"] + sorted((root / "docs").glob("*.md"))
  missing = []
  for document in documents:
    text = document.read_text()
    named = set(re.findall(r"`((?:tests|showo_jax|configs|launch|docs)/[\w/.-]+\.(?:py|sh|md))`", text))
    missing += [f"{document.relative_to(root)}: `{p}`" for p in sorted(named) if not (root / p).exists()]
    links = set(re.findall(r"\]\(((?!https?:)[^)#]+)\)", text))  # relative Markdown links
    missing += [f"{document.relative_to(root)}: ({p})" for p in sorted(links) if not (document.parent / p).exists()]
  assert not missing, "documents name files that do not exist:\n" + "\n".join(missing)
