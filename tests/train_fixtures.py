"""Small training setups for tests: a tiny config over synthetic pre-tokenized records (no tokenizer training).

Also a config file for the training CLI (launch/scaling_check.sh):
  python -m showo_jax.train --config tests/train_fixtures.py:folder=DATA,steps=20 --workdir RUN
where DATA already holds the records (`make_records(DATA)`; written once, before processes start).
"""

import contextlib
import fcntl
import io
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.common import paths
from showo_jax.config import base as config_base
from showo_jax.config import showo as showo_config
from showo_jax.data import embedded
from showo_jax.data import records
from showo_jax.interop import magvit_keys
from showo_jax.tokenizer import config as tokenizer_config

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def run_main(main, *argv):
  """(exit status, stdout, stderr) of an entry point's `main(argv)` run in-process (its compiles are shared)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = main([str(a) for a in argv])
  return code, out.getvalue(), err.getvalue()


def make_records(folder: str, num: int = 64, codebook: int = 64, tokens: int = 16, seed: int = 0):
  """Image-token records with captions and QA fields, plus a text corpus; returns (images, text) folders."""
  rng = np.random.default_rng(seed)
  images = paths.join(folder, "images")
  if not paths.exists(paths.join(images, records.META)):
    records.write_records(images, ({"image_tokens": rng.integers(0, codebook, tokens).astype(np.int16),
                                    "caption": embedded.caption(i % 10), "label": i % 10,
                                    "question": embedded.QUESTION, "answer": WORDS[i % 10]} for i in range(num)),
                          num_shards=2)
  text = paths.join(folder, "text")
  if not paths.exists(paths.join(text, records.META)):
    docs = [" ".join(rng.choice(WORDS, 40)) for _ in range(20)]
    records.write_records(text, ({"text": d} for d in docs))
  tok = paths.join(folder, "text_tokenizer.json")
  if not paths.exists(tok):
    embedded.train_text_tokenizer(tok, vocab_size=300)
  return images, text, tok


def tiny_config(folder: str, steps: int = 3):
  images, text, tok = make_records(folder)
  c = showo_config.showo_config("tiny")
  c.model.vocab.update(llm_vocab_size=300, codebook_size=64, bos_id=0, eos_id=0)
  c.model.vocab_size = 384  # 375 used, padded so that tensor parallelism divides it
  c.data.update(source="records", t2i_records=images, mmu_records=images, lm_records=text, num_image_tokens=16,
                max_text_len=12, lm_window_chars=200)
  c.text_tokenizer.path = tok
  c.train.update(steps=steps, batch_t2i=4, batch_lm=2, batch_mmu=2, log_every=1, checkpoint_every=0,
                 peak_tflops_per_device=1.0)
  c.optimizer.update(lr=1e-3, warmup_steps=1)
  return showo_config.validate(c)


def get_config(arg: str = ""):
  args = config_base.parse_arg(arg, folder="", steps=3)
  if not args.folder:
    raise config_base.ConfigError("tests/train_fixtures.py needs folder=DIR (the synthetic records' folder)")
  return tiny_config(args.folder, steps=args.steps)


def trained_workdir(workdir: str, data: str, image_conv: int = 0) -> str:
  """A tiny trained workdir (2 steps on `data`'s synthetic records) with a random 32 px tokenizer beside it in
  WORKDIR/tokenizer: a stand-in for the main job's, for the CLIs that read one."""
  from showo_jax.training import trainer  # pylint: disable=g-import-not-at-top
  config = tiny_config(data, steps=2)
  config.model.image_conv = image_conv
  trainer.train_and_evaluate(showo_config.validate(config), workdir)
  tiny_magvit_npz(os.path.join(workdir, "tokenizer", "magvit.npz"))
  return workdir


def shared_trained_workdir(tmp_path_factory, root, name: str = "run", image_conv: int = 0) -> str:
  """ROOT/NAME: a copy of `trained_workdir(image_conv=…)`, and ROOT/data a copy of its records. The run is trained
  once per test session, whichever xdist worker asks first (the others wait on a file lock in the session's
  shared temporary folder), since it is the same run every time; each module gets its own copy to write into."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # the folder all workers' temporary folders live in
  built = base / f"shared_trained_conv{image_conv}"
  with open(base / f"shared_trained_conv{image_conv}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (built / "DONE").exists():
      shutil.rmtree(built, ignore_errors=True)
      trained_workdir(str(built / "run"), str(built / "data"), image_conv)
      (built / "DONE").touch()
  root = pathlib.Path(root)
  shutil.copytree(built / "run", root / name)
  if not (root / "data").exists():
    shutil.copytree(built / "data", root / "data")
  return str(root / name)


def tiny_magvit_npz(path: str, res: int = 32):
  """A random MAGVIT-v2 (4 levels → factor 8, 6 bits = 64 codes) saved as an official state dict (.npz): at 32 px
  it gives the 16 image tokens of `tiny_config`."""
  c = tokenizer_config.magvit_config("tiny")
  for tower in (c.encoder, c.decoder):
    tower.ch, tower.ch_mult, tower.num_res_blocks = 32, [1, 1, 1, 1], [1, 1, 1, 1]
  c.codebook_bits = 6
  c = tokenizer_config.validate_magvit(c)
  params = tokenizer_config.magvit_from_config(c).init(jax.random.key(0), jnp.zeros((1, res, res, 3)))["params"]
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  np.savez(path, **magvit_keys.params_to_official(params, c))


def cli_config_file(path, data: str, steps="int(arg or 6)", *overrides: str) -> str:
  """Writes a config file for `python -m showo_jax.train --config PATH[:STEPS]`: `tiny_config(data, steps)` (an
  expression of the config arg) with `overrides` (lines of Python on `c`); returns the path."""
  tests = os.path.dirname(os.path.abspath(__file__))
  body = "".join(f"  {line}\n" for line in overrides)
  with open(path, "w") as f:
    f.write(f"import sys\nsys.path.insert(0, {tests!r})\nimport train_fixtures\n\n"
            f"def get_config(arg=''):\n  c = train_fixtures.tiny_config({data!r}, steps={steps})\n{body}  return c\n")
  return str(path)
