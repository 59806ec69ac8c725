"""Weights drawn from a fixed numpy seed by parameter name, shared by the golden recorder (record_goldens.py, run
once with torch) and the tests (no torch): the same name and shape give the same array on both sides, whatever
order the names come in."""

import zlib

import numpy as np


def draw(name: str, shape, seed: int = 0) -> np.ndarray:
  """float32 array for the parameter `name`: He-scaled convs, 1/sqrt(in) linears and embeddings, norm scales near
  1, small biases and means, variances in [0.5, 1.5] — activations stay O(1) through deep networks."""
  rng = np.random.default_rng((zlib.crc32(name.encode()) + 7919 * seed) % 2**32)
  shape = tuple(int(s) for s in shape)
  last = name.rsplit(".", 1)[-1]
  if last == "running_var":
    x = rng.uniform(0.5, 1.5, shape)
  elif last in ("running_mean", "bias"):
    x = rng.normal(0.0, 0.05, shape)
  elif len(shape) == 1 and last == "weight":  # BatchNorm / LayerNorm scale
    x = rng.uniform(0.8, 1.2, shape)
  elif len(shape) == 4:  # conv [O, I, kh, kw]
    x = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
  elif len(shape) == 2:  # linear [out, in] or an embedding table
    x = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), shape)
  else:
    x = rng.normal(0.0, 0.5, shape)
  return x.astype(np.float32)


def state_dict(names_and_shapes, seed: int = 0) -> dict:
  return {name: draw(name, shape, seed) for name, shape in names_and_shapes}
