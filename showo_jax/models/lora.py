"""LoRA adapters of the backbone's projections: which parameters they are, and folding them into the kernels.

The adapters themselves live in `dense.Dense` (params `lora_a`, `lora_b` beside `kernel`); the backbone puts
them on the projections `TransformerConfig.lora_targets` names.
"""

from typing import Any

import flax

from showo_jax.models import dense

ADAPTER_NAMES = ("lora_a", "lora_b")


def is_adapter(path) -> bool:
  """True for a parameter path (tuple of names) that is a LoRA factor."""
  return path[-1] in ADAPTER_NAMES


def merge(params: Any, alpha: float, scanned: bool) -> dict:
  """The params with every adapter folded into its kernel (W + alpha / r · A · B) and the factors dropped: the
  tree of the same backbone without adapters. `scanned`: layers are stacked under "layers" (scan_layers)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  merged = {k: v for k, v in flat.items() if not is_adapter(k)}
  for path in flat:
    if path[-1] != "lora_a":
      continue
    module = path[:-1]
    stacked = 1 if scanned and module[0] == "layers" else 0
    merged[module + ("kernel",)] = dense.merged_kernel(flat[module + ("kernel",)], flat[path],
                                                       flat[module + ("lora_b",)], alpha, stacked)
  return flax.traverse_util.unflatten_dict(merged)
