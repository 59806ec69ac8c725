"""Fréchet distance between two feature sets (FID when the features are InceptionV3 pool features), in float64.

FID = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)). The trace of the matrix square root is taken as
the sum of the square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is symmetric positive
semi-definite, so no complex sqrtm (pytorch-fid's route) is needed and no imaginary residue has to be dropped.
"""

import io

import numpy as np

from showo_jax.common import paths


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (unbiased, as pytorch-fid's np.cov) of [N, D] features, in float64."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"Fréchet statistics need [N >= 2, D] features, got shape {x.shape}")
  return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))  # one feature: np.cov gives a scalar


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def distance(mu_a, sigma_a, mu_b, sigma_b) -> float:
  mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
  sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
  if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
    raise ValueError(f"Fréchet statistics of different widths: {mu_a.shape[0]} and {mu_b.shape[0]} features")
  root = _psd_sqrt(sigma_a)
  inner = np.linalg.eigvalsh(root @ sigma_b @ root)
  trace_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
  diff = mu_a - mu_b
  return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt)


def save_statistics(path: str, mu: np.ndarray, sigma: np.ndarray):
  """As pytorch-fid's .npz (`mu`, `sigma`), through the path layer (local or gs://)."""
  buf = io.BytesIO()
  np.savez(buf, mu=mu, sigma=sigma)
  paths.write_bytes(path, buf.getvalue())


def load_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
  with np.load(io.BytesIO(paths.read_bytes(path))) as data:
    if "mu" not in data or "sigma" not in data:
      raise ValueError(f"{path} holds no Fréchet statistics (arrays mu and sigma), only {sorted(data.files)}")
    return np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
