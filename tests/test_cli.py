"""The entry points' shared conventions (common/cli.py): every option documented with its default, one exit-code
convention (2 bad input or usage, 1 failure while running), and checks that need no data before any work."""

import argparse
import importlib
import os
import pathlib
import re
import subprocess
import sys

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
  # Neither the text BPE nor the image tokenizer was trained: nothing but the log was written.
  assert not (workdir / "text_tokenizer.json").exists() and not (workdir / "tokenizer").exists()


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
