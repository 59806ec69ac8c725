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
