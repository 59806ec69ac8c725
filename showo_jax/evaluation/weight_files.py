"""Weight files of the evaluation networks (FID Inception, CLIP), read through the path layer: safetensors
(the standard conversion of a PyTorch checkpoint) or .npz; a PyTorch pickle is refused with the conversion to
run, since reading one needs torch."""

import io

import numpy as np
import safetensors.numpy

from showo_jax.common import paths

TORCH_TO_SAFETENSORS = ('python -c "import sys, torch, safetensors.torch as s; s.save_file({k: v.contiguous() '
                        'for k, v in torch.load(sys.argv[1], map_location=\'cpu\').items() '
                        'if v.dtype.is_floating_point}, sys.argv[2])" IN.pth OUT.safetensors')


def read_state_dict(path: str) -> dict:
  """{name: float array} of a .safetensors or .npz file; ValueError naming the file for anything else."""
  if not paths.isfile(path):
    raise FileNotFoundError(f"{path}: no such weight file")
  if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
    raise ValueError(f"{path}: a PyTorch pickle needs torch to read; convert it once with {TORCH_TO_SAFETENSORS}")
  data = paths.read_bytes(path)
  try:
    if path.endswith(".npz"):
      with np.load(io.BytesIO(data)) as f:
        return {k: f[k] for k in f.files}
    return safetensors.numpy.load(data)
  except Exception as e:  # pylint: disable=broad-except  # safetensors raises its own error types
    raise ValueError(f"{path}: not a readable {'npz' if path.endswith('.npz') else 'safetensors'} file ({e})") from None
