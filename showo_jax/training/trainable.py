"""Which parameters train (`config.train.trainable`), and splitting a param tree into trained and frozen parts.

  "all"                   every parameter (the default)
  "lora"                  the LoRA factors only (config.model.lora.rank > 0)
  "lora,embed,lm_head"    a comma-separated list: "lora" means the adapters, any other pattern selects every
                          parameter whose path ("layers/attn/q_proj/kernel", "embed/embedding", ...) contains it
Frozen parameters get no gradient, no optimizer state, no weight decay and no share of the clipping norm; the
train step passes them through untouched, so they stay bit-identical.
"""

import flax

from showo_jax.models import lora


def _path_name(path) -> str:
  return "/".join(str(p) for p in path)


def trainable_paths(params, spec: str):
  """The set of flattened paths of `params` that train under `spec`, or None for "all". Raises ValueError
  naming a pattern that selects nothing."""
  spec = str(spec).strip()
  if spec in ("", "all"):
    return None
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  chosen = set()
  for pattern in (p.strip() for p in spec.split(",")):
    if not pattern:
      continue
    hits = {k for k in flat if (lora.is_adapter(k) if pattern == "lora" else pattern in _path_name(k))}
    if not hits:
      hint = " (config.model.lora.rank is 0: no adapters exist)" if pattern == "lora" else ""
      raise ValueError(f"config.train.trainable={spec!r}: the pattern {pattern!r} matches no parameter{hint}; "
                       f"parameter paths look like {_path_name(next(iter(flat)))!r}")
    chosen |= hits
  return frozenset(chosen)


def split(params, paths):
  """(trained, frozen) nested dicts; with paths None everything trains and frozen is {}."""
  if paths is None:
    return params, {}
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  trained = {k: v for k, v in flat.items() if k in paths}
  frozen = {k: v for k, v in flat.items() if k not in paths}
  return flax.traverse_util.unflatten_dict(trained), flax.traverse_util.unflatten_dict(frozen)


def join(trained, frozen):
  """The inverse of `split`."""
  if not frozen:
    return trained
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(frozen))
  flat.update(flax.traverse_util.flatten_dict(flax.core.unfreeze(trained)))
  return flax.traverse_util.unflatten_dict(flat)
