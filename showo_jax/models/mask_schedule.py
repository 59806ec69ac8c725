"""Mask schedules γ(t): share of image tokens masked at time t ∈ [0, 1] (SPEC §5.1).

The same functions give the training mask ratio (t ~ U[0, 1)) and the MaskGIT inference ratio
(t = (step + 1) / num_steps). Cosine is not clipped, as in the official code (γ(1) = cos(π/2) ≈ -4.4e-8).
Work on numpy and jax arrays alike.
"""

import math
import re

import jax.numpy as jnp

_MIN = 1e-6


def cosine(t):
  return jnp.cos(math.pi / 2.0 * t)


def linear(t):
  return jnp.clip(1.0 - t, _MIN, 1.0)


def power(t, k: float):
  return jnp.clip(1.0 - t**k, _MIN, 1.0)


def sigmoid(t, start: float = -3.0, end: float = 3.0, tau: float = 1.0):
  v_start = 1.0 / (1.0 + math.exp(-start / tau))
  v_end = 1.0 / (1.0 + math.exp(-end / tau))
  out = (v_end - _sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
  return jnp.clip(out, _MIN, 1.0)


def _sigmoid(x):
  return 1.0 / (1.0 + jnp.exp(-x))


def get(name: str):
  """Returns γ for a name: "cosine", "linear", "sigmoid", or "pow<k>" (e.g. "pow2", "pow0.5")."""
  if name == "cosine":
    return cosine
  if name == "linear":
    return linear
  if name == "sigmoid":
    return sigmoid
  match = re.fullmatch(r"pow(\d+(?:\.\d+)?)", name)
  if match:
    k = float(match.group(1))
    return lambda t: power(t, k)
  raise ValueError(f"unknown mask schedule {name!r}; use cosine, linear, sigmoid or pow<k>")
