"""Weight files of the evaluation networks (FID Inception, CLIP), read through the path layer: safetensors,
.npz, or a PyTorch state dict (`torch.save`, read without torch by torch_pickle.py)."""

import io

import numpy as np
import safetensors.numpy

from showo_jax.common import paths
from showo_jax.evaluation import torch_pickle

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str) -> dict:
  """{name: array} of a .safetensors, .npz or torch.save file; ValueError naming the file for anything else."""
  if not paths.isfile(path):
    raise FileNotFoundError(f"{path}: no such weight file")
  data = paths.read_bytes(path)
  if path.endswith(TORCH_SUFFIXES):
    return torch_pickle.load(data, path)
  try:
    if path.endswith(".npz"):
      with np.load(io.BytesIO(data)) as f:
        return {k: f[k] for k in f.files}
    return safetensors.numpy.load(data)
  except Exception as e:  # pylint: disable=broad-except  # safetensors raises its own error types
    raise ValueError(f"{path}: not a readable {'npz' if path.endswith('.npz') else 'safetensors'} file ({e})") from None
