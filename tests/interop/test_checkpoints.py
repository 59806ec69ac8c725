"""interop/checkpoints.py: image tokenizers from official MAGVIT-v2 weights (ours: tests/tokenizer/test_trainer.py)."""

import os

import jax
import numpy as np
import pytest

from showo_jax.interop import checkpoints
from showo_jax.interop import magvit_keys


def _assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_load_tokenizer_official_file():
  path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "parity", "parity_magvit_tiny_A.npz")
  if not os.path.exists(path):
    pytest.skip(f"{path} is absent")
  params, config = checkpoints.load_tokenizer(path)
  want, _ = magvit_keys.load_official_magvit(path)
  _assert_trees_equal(params, want)
  assert config.codebook_bits == 6 and config.data.resolution == config.resolution == 32


def test_load_checkpoint_skips_a_damaged_newest_step(tmp_path, caplog):
  """What `sample`, `evaluate` and `convert export` load: the newest intact step; a damaged newer one is named,
  moved aside, and the older one's params come back."""
  import logging  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from showo_jax.common import checkpointing  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "run" / "checkpoints"
  ckpt = checkpointing.Checkpointer(str(folder), async_save=False)
  config = ml_collections.ConfigDict({"train": {"steps": 2}})
  for step in (1, 2):
    ckpt.save(step, {"params": {"w": np.full((256,), float(step), np.float32)}}, config=config)
  ckpt.close()
  data = max((p for p in (folder / "2").rglob("*") if p.is_file() and "/d/" in str(p)), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:-16])  # truncated
  with caplog.at_level(logging.WARNING):
    params, saved = checkpoints.load_checkpoint(str(tmp_path / "run"))
  np.testing.assert_array_equal(params["w"], np.full((256,), 1.0, np.float32))
  assert saved.train.steps == 2
  assert any("checkpoint step 2" in r.getMessage() and "moved aside" in r.getMessage() for r in caplog.records)
  assert sorted(os.listdir(folder)) == ["1"] and len(os.listdir(str(folder) + ".quarantine")) == 1
