"""The commands of README.md and docs/*.md cannot drift: every entry point, subcommand and flag they use exists,
and the quick ones (sampling, the digit PNGs, tokenize_images, convert) run as written on a tiny trained workdir
standing in for /tmp/showo_tiny."""

import functools
import glob
import importlib
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from showo_jax.config import base as config_base
from tests import train_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGPARSE_TOOLS = ("sample", "evaluate", "convert", "build_dataset", "bench")
ABSL_TOOLS = ("train", "train_tokenizer", "plan", "tokenize_images")


DOCUMENTS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def readme_commands():
  """[(tool, args)] of every `python -m showo_jax.TOOL …` line in the bash blocks of README.md and docs/*.md, in
  order."""
  text = "\n".join(path.read_text() for path in DOCUMENTS)
  out = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    variables = {}
    for line in block.replace("\\\n", " ").splitlines():
      assignment = re.fullmatch(r"(\w+)=(\S+)", line.strip())
      if assignment:  # `T=--tokenizer-checkpoint=…` then `… $T`, as the shell would expand it
        variables[assignment[1]] = assignment[2]
        continue
      for name, value in variables.items():
        line = line.replace(f"${name}", value)
      tokens = shlex.split(line, comments=True)
      for i in range(len(tokens) - 2):
        if tokens[i].endswith("python") and tokens[i + 1] == "-m" and tokens[i + 2].startswith("showo_jax."):
          out.append((tokens[i + 2][len("showo_jax."):], tokens[i + 3:]))
          break
  return out


COMMANDS = readme_commands()


def test_the_documents_show_every_tool_and_sampling_mode():
  tools = {tool for tool, _ in COMMANDS}
  assert set(ARGPARSE_TOOLS + ABSL_TOOLS) <= tools, set(ARGPARSE_TOOLS + ABSL_TOOLS) - tools
  sampled = {args[0] for tool, args in COMMANDS if tool == "sample"}
  assert sampled == {"t2i", "mmu", "inpaint", "extrapolate", "mixed"}
  assert {args[0] for tool, args in COMMANDS if tool == "convert"} >= {"import", "export"}


@functools.lru_cache(maxsize=None)  # one `--help` process per tool, not per command
def _absl_options(tool: str) -> set:
  r = subprocess.run([sys.executable, "-m", f"showo_jax.{tool}", "--help"], cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  names = set(re.findall(r"^  --([\w-]+)", r.stdout, re.M)) | {"help"}
  return names | {f"no{n}" for n in names}


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[f"{t} {' '.join(a[:1])}" for t, a in COMMANDS])
def test_every_readme_command_parses(index):
  tool, args = COMMANDS[index]
  assert tool in ARGPARSE_TOOLS + ABSL_TOOLS, f"README/docs run an unknown entry point showo_jax.{tool}"
  if tool in ARGPARSE_TOOLS:
    parser = importlib.import_module(f"showo_jax.{tool}")._parser()  # pylint: disable=protected-access
    try:
      parser.parse_args(args)
    except SystemExit as e:
      pytest.fail(f"README/docs: python -m showo_jax.{tool} {' '.join(args)}: does not parse (exit {e.code})")
    return
  options = _absl_options(tool)
  for arg in args:
    if arg.startswith("--") and not arg.startswith("--config."):
      name = arg[2:].split("=", 1)[0]
      assert name in options, f"README/docs: python -m showo_jax.{tool} has no flag --{name}"
  if any(a.startswith("--config") for a in args):
    problem = config_base.config_flag_problem([tool] + args)
    assert problem is None, f"README/docs: python -m showo_jax.{tool}: {problem}"


RUNNABLE = ("sample", "build_dataset digits", "build_dataset jsonl", "tokenize_images", "convert export",
            "convert import")
# Workdirs of the fine-tuning section: they need a real main-job run (the stand-in's architecture is not
# configs/tiny.py's), so the commands that read them are parsed, not run, here.
FINE_TUNED = ("/tmp/showo_sideways", "/tmp/showo_mine")
# Files the evaluation section downloads (the official checkpoints, benchmark data): parsed, not run, here; their
# commands run end to end on stand-ins in tests/evaluation/test_evaluate_cli.py.
DOWNLOADED = ("hub/",)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
  """Tiny trained workdirs (synthetic records, a random 32 px tokenizer) in place of the main job's, with its
  image-grid convolution, and of a run of the official architecture (/tmp/showo_tiny_plain)."""
  root = tmp_path_factory.mktemp("readme")
  default = config_base.load_config_file(str(ROOT / "configs" / "tiny.py"))
  workdir = train_fixtures.shared_trained_workdir(tmp_path_factory, root, "showo_tiny", default.model.image_conv)
  train_fixtures.shared_trained_workdir(tmp_path_factory, root, "showo_tiny_plain")
  return root, workdir


def test_the_quick_readme_commands_run_as_written(stand_in, monkeypatch):
  root, workdir = stand_in
  monkeypatch.chdir(root)  # relative outputs land in the stand-in's folder
  ran = []
  for tool, args in dict.fromkeys((tool, tuple(args)) for tool, args in COMMANDS):  # a command shown twice runs once
    if not any(f"{tool} {' '.join(args)}".startswith(r) for r in RUNNABLE):
      continue
    if any(arg.startswith(FINE_TUNED + DOWNLOADED) for arg in args):
      continue
    argv = []
    for arg in args:
      arg = re.sub(r"/tmp/([^\s=]*)", lambda m: workdir + m[1][len("showo_tiny"):]  # pylint: disable=g-long-lambda
                   if re.match(r"showo_tiny(/|$)", m[1]) else f"{root}/{m[1]}", arg)
      argv += sorted(glob.glob(arg)) if "*" in arg else [arg]  # as the shell expands it
    if tool in ARGPARSE_TOOLS:  # their main(argv), in this process: no new interpreter per command
      code, _, stderr = train_fixtures.run_main(importlib.import_module(f"showo_jax.{tool}").main, *argv)
    else:  # absl flags are global: run the command itself, importing this checkout's package
      env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
      r = subprocess.run([sys.executable, "-m", f"showo_jax.{tool}", *argv], cwd=root, capture_output=True,
                         text=True, timeout=300, env=env)
      code, stderr = r.returncode, r.stderr
    assert code == 0, f"python -m showo_jax.{tool} {' '.join(args)}\n{stderr[-3000:]}"
    ran.append(f"{tool} {args[0]}")
  assert len(ran) >= 9, ran


def test_the_readme_is_a_short_page_with_the_two_commands_first():
  """A newcomer's page: at most about 15 KB, its first code block the install, the main job and the tests, and the
  test command the one CI runs."""
  text = (ROOT / "README.md").read_text()
  assert len(text.encode()) <= 15_500, f"README.md is {len(text.encode())} bytes: move reference material to docs/"
  first_block = re.search(r"```bash\n(.*?)```", text, re.S)[1]
  commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
  assert commands[1].startswith("python -m showo_jax.train --config configs/tiny.py --workdir "), commands
  assert commands[2] in (ROOT / ".ci" / "run").read_text().splitlines(), (commands[2], "is not what .ci/run runs")
