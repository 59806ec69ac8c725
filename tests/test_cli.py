"""The entry points' shared conventions (common/cli.py): every option documented with its default, one exit-code
convention (2 bad input or usage, 1 failure while running), and checks that need no data before any work."""

import argparse
import importlib
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from showo_jax.config import base as config_base

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGPARSE_TOOLS = ("sample", "evaluate", "convert", "build_dataset", "bench")
ABSL_TOOLS = ("train", "train_tokenizer", "plan", "tokenize_images")


def _parsers(parser):
  yield parser
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      for sub in action.choices.values():
        yield from _parsers(sub)


@pytest.mark.parametrize("tool", ARGPARSE_TOOLS)
def test_argparse_tools_document_every_option_with_its_default(tool):
  for parser in _parsers(importlib.import_module(f"showo_jax.{tool}")._parser()):  # pylint: disable=protected-access
    formatter = parser._get_formatter()  # pylint: disable=protected-access
    for action in parser._actions:  # pylint: disable=protected-access
      if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):  # pylint: disable=protected-access
        continue
      assert action.help, f"{parser.prog} {action.option_strings or action.dest}: no help text"
      shown = formatter._get_help_string(action)  # pylint: disable=protected-access
      if action.option_strings and not action.required and action.default not in (None, False):
        assert "default" in shown, f"{parser.prog} {action.option_strings}: the default is not shown"


def _run(*args, **kwargs):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        **kwargs)


@pytest.mark.parametrize("tool", ABSL_TOOLS)
def test_absl_tools_help_exits_0_and_shows_every_flag_with_its_default(tool):
  r = _run(f"showo_jax.{tool}", "--help")
  assert r.returncode == 0, r.stderr[-2000:]
  lines = [l for l in r.stdout.splitlines() if l.startswith("  --")]
  assert lines
  for line in lines:
    assert re.search(r"\(default: .*\)|\(required\)|default: ", line), line
  if tool == "train":  # the fields people change most, with the values of the default config
    assert "--config" in r.stdout and "train.steps" in r.stdout and "optimizer.lr" in r.stdout
    steps = config_base.load_config_file("configs/tiny.py").train.steps
    assert "mesh.data" in r.stdout and "train.init_from" in r.stdout and "train.steps" in r.stdout
    assert re.search(rf"train\.steps +optimizer steps in all \[{steps}\]", r.stdout), r.stdout


@pytest.mark.parametrize("args, message", [
    ([], r"--config is required"),
    (["--config", "configs/nosuch.py"], r"configs/nosuch\.py: no such config file"),
    (["--config", "configs/tiny.py", "--config.train.nosuch=1"], r"has no field 'train\.nosuch'"),
    (["--config", "configs/tiny.py:size=huge"], r"unknown config arg 'size'"),
    (["--config", "configs/tiny.py", "--config.train.steps=abc"], r"--config\.train\.steps=abc"),
])
def test_train_bad_flags_are_one_line_and_exit_2(tmp_path, args, message):
  r = _run("showo_jax.train", *args, f"--workdir={tmp_path / 'run'}")
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
  assert re.search(message, lines[0]), lines[0]


def test_a_bad_mesh_fails_before_any_data_preparation(tmp_path):
  workdir = tmp_path / "run"
  r = _run("showo_jax.train", "--config", "configs/tiny.py", "--config.mesh.fsdp=3", f"--workdir={workdir}")
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: config.mesh"), r.stderr[-2000:]
  assert not workdir.exists()  # not even the workdir and its train.log


def test_a_tokenizer_that_does_not_fit_the_model_fails_before_any_work(tmp_path):
  from tests import train_fixtures  # pylint: disable=g-import-not-at-top
  data = str(tmp_path / "data")
  cfg = train_fixtures.cli_config_file(tmp_path / "cfg.py", data, 4, "c.data.num_image_tokens = 64")
  r = _run("showo_jax.train", f"--config={cfg}", f"--workdir={tmp_path / 'run'}",
           env=dict(os.environ, PYTHONPATH=str(ROOT)))
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
  assert "holds 16 image tokens per image but config.data.num_image_tokens = 64" in lines[0], lines[0]
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """A random 32 px MAGVIT-v2 (official layout), a copy of it with a NaN tensor, and a text document."""
  from tests import train_fixtures  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("inputs")
  train_fixtures.tiny_magvit_npz(str(root / "magvit.npz"))
  weights = dict(np.load(root / "magvit.npz"))
  first = next(iter(weights))
  weights[first] = np.full_like(weights[first], np.nan)
  np.savez(root / "nan.npz", **weights)
  (root / "docs.jsonl").write_text('{"text": "a document"}\n')
  return root


# (id, tool, arguments: {out} the output folder, {inputs} the fixture's; text of the one error line): for each
# tool the last check it makes before it writes (for the trainers: the mesh, batch, paths and image source).
REFUSED = [
    ("train batch", "train", "--config configs/tiny.py --workdir {out} --config.train.batch_t2i=3",
     "is not divisible by data×fsdp"),
    ("train init_from", "train", "--config configs/tiny.py --workdir {out} --config.train.init_from={inputs}/nope",
     "init_from={inputs}/nope: no such file or folder"),
    ("train_tokenizer mesh", "train_tokenizer", "--config configs/magvit2.py:size=tiny --workdir {out} "
     "--config.mesh.fsdp=3", "3 does not divide the 8 devices"),
    ("train_tokenizer source", "train_tokenizer", "--config configs/magvit2.py:size=tiny --workdir {out} "
     "--config.data.source={inputs}/nope", "image source '{inputs}/nope': not an image folder"),
    ("tokenize_images", "tokenize_images", "--checkpoint={inputs}/magvit.npz --input=embedded:test --output={out} "
     "--records_per_shard=0", "--records-per-shard must be >= 1"),
    ("build_dataset", "build_dataset", "text --input {inputs}/docs.jsonl --output {out} --records-per-shard 0",
     "--records-per-shard must be >= 1"),
    ("convert", "convert", "import --input {inputs}/nan.npz --output {out}", "non-finite values"),
    ("sample", "sample", "t2i --checkpoint {inputs} --prompt x --num 0 --out-dir {out}", "--num must be >= 1"),
    ("evaluate", "evaluate", "geneval --checkpoint {inputs} --prompts {inputs}/docs.jsonl --out {out} "
     "--images-per-prompt 0", "--images-per-prompt must be >= 1"),
]


@pytest.mark.parametrize("tool, args, message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_refused_command_leaves_no_output_folder(inputs, tmp_path, tool, args, message):
  """The README's rule: every check that needs no data runs before the output folder (a workdir and its
  train.log, a record folder, a checkpoint) or any folder above it is made."""
  fields = dict(out=tmp_path / "new" / "deeper" / "out", inputs=inputs)
  r = _run(f"showo_jax.{tool}", *args.format(**fields).split())
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
  assert lines[-1].startswith("error: ") and message.format(**fields) in lines[-1], lines[-1]
  assert [x for x in lines if x.startswith("error:")] == lines[-1:], r.stderr[-3000:]
  assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))
