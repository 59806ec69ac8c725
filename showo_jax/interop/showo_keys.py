"""Official Show-o state dict (PyTorch layout, SPEC §9.1) ↔ Flax params of models/transformer.py.

PyTorch Linear weights are [out, in]; Flax kernels are [in, ...out] with heads split out
(q/k/v: [E, H, D]; o_proj: [H, D, E]). Phi keys live under `showo.model.*` / `showo.lm_head.*`; a LLaMA-family
Show-o uses the Hugging Face LLaMA names under the same prefix (QK-norm as `self_attn.{q,k}_norm.weight`).
`infer_config` takes what the shapes cannot show (vocabulary split, BOS/EOS, RoPE, eps) from the caller or config.json.
"""

import math
import numbers
import re

import numpy as np

from showo_jax.config import showo as showo_config
from showo_jax.interop.reader import CheckpointError
from showo_jax.models import omni_mask
from showo_jax.models import transformer

PREFIX = "showo."
# Extra tensors of the CLIP-ViT variant (SPEC §9.1): carried along, not part of the backbone.
EXTRA_PREFIXES = ("mm_projector.",)

# The released Show-o checkpoints (showlab/show-o*, SPEC §9): their vocabulary layout by embedding rows, and the
# LLM whose config and tokenizer the official loader reads through `llm_model_path` (SPEC §1.1, §2).
_KNOWN_LAYOUTS = {58498: dict(llm_vocab_size=50295, codebook_size=8192, llm="microsoft/phi-1_5")}
_KNOWN_LLMS = {"microsoft/phi-1_5": dict(family="phi", rope_theta=10000.0, norm_eps=1e-5, rotary_fraction=0.5,
                                         head_dim=64, bos_id=50256, eos_id=50256)}

# What infer_config needs beyond the tensor shapes: (keyword argument, config.json key or {family: key}, type).
_FACTS = (("llm_vocab_size", "llm_vocab_size", int), ("codebook_size", "codebook_size", int),
          ("bos_id", "bos_token_id", int), ("eos_id", "eos_token_id", int), ("rope_theta", "rope_theta", float),
          ("norm_eps", {"phi": "layer_norm_eps", "llama": "rms_norm_eps"}, float),
          ("rotary_fraction", "partial_rotary_factor", float), ("head_dim", "head_dim", int))
_FACT_NAMES = tuple(name for name, _, _ in _FACTS)
_NUM_SPECIAL = 11  # rows besides text and codes: 10 special tokens and [MASK] (SPEC §2)


def _linear(w):  # torch [out, in] -> flax [in, out]
  return np.ascontiguousarray(np.asarray(w).T)


def _layer_map(family: str):
  """(official suffix, flax path, to_flax(w, dims), to_torch(k, dims)) for one decoder layer."""
  def heads_in(w, n, d):  # [n*d, E] -> [E, n, d]
    return _linear(w).reshape(w.shape[1], n, d)

  def heads_in_bias(b, n, d):
    return np.asarray(b).reshape(n, d)

  def heads_out(w, n, d):  # [E, n*d] -> [n, d, E]
    return _linear(w).reshape(n, d, w.shape[0])

  ident = lambda x, *_: np.asarray(x)
  lin = lambda w, *_: _linear(w)
  lin_t = lambda k, *_: np.asarray(k).T  # a view: the safetensors writer makes each tensor contiguous
  rows = []
  for p, n_key in (("q", "h"), ("k", "kv"), ("v", "kv")):
    rows.append((f"self_attn.{p}_proj.weight", ("attn", f"{p}_proj", "kernel"),
                 lambda w, dims, n_key=n_key: heads_in(w, dims[n_key], dims["d"]),
                 lambda k, dims: k.reshape(k.shape[0], -1).T))
  if family == "phi":
    for p, n_key in (("q", "h"), ("k", "kv"), ("v", "kv")):
      rows.append((f"self_attn.{p}_proj.bias", ("attn", f"{p}_proj", "bias"),
                   lambda b, dims, n_key=n_key: heads_in_bias(b, dims[n_key], dims["d"]),
                   lambda b, dims: b.reshape(-1)))
    rows += [
        ("input_layernorm.weight", ("input_norm", "scale"), ident, ident),
        ("input_layernorm.bias", ("input_norm", "bias"), ident, ident),
        ("self_attn.dense.weight", ("attn", "o_proj", "kernel"),
         lambda w, dims: heads_out(w, dims["h"], dims["d"]),
         lambda k, dims: k.reshape(-1, k.shape[-1]).T),
        ("self_attn.dense.bias", ("attn", "o_proj", "bias"), ident, ident),
        ("self_attn.q_layernorm.weight", ("attn", "q_norm", "scale"), ident, ident),
        ("self_attn.q_layernorm.bias", ("attn", "q_norm", "bias"), ident, ident),
        ("self_attn.k_layernorm.weight", ("attn", "k_norm", "scale"), ident, ident),
        ("self_attn.k_layernorm.bias", ("attn", "k_norm", "bias"), ident, ident),
        ("mlp.fc1.weight", ("mlp", "fc1", "kernel"), lin, lin_t),
        ("mlp.fc1.bias", ("mlp", "fc1", "bias"), ident, ident),
        ("mlp.fc2.weight", ("mlp", "fc2", "kernel"), lin, lin_t),
        ("mlp.fc2.bias", ("mlp", "fc2", "bias"), ident, ident),
    ]
  else:
    rows += [
        ("input_layernorm.weight", ("input_norm", "scale"), ident, ident),
        ("post_attention_layernorm.weight", ("post_attention_norm", "scale"), ident, ident),
        ("self_attn.o_proj.weight", ("attn", "o_proj", "kernel"),
         lambda w, dims: heads_out(w, dims["h"], dims["d"]),
         lambda k, dims: k.reshape(-1, k.shape[-1]).T),
        ("self_attn.q_norm.weight", ("attn", "q_norm", "scale"), ident, ident),
        ("self_attn.k_norm.weight", ("attn", "k_norm", "scale"), ident, ident),
        ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), lin, lin_t),
        ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), lin, lin_t),
        ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), lin, lin_t),
    ]
  return rows


def _top_map(family: str):
  ident = lambda x, *_: np.asarray(x)
  lin = lambda w, *_: _linear(w)
  lin_t = lambda k, *_: np.asarray(k).T  # a view: the safetensors writer makes each tensor contiguous
  rows = [("model.embed_tokens.weight", ("embed", "embedding"), ident, ident),
          ("lm_head.weight", ("lm_head", "kernel"), lin, lin_t)]
  if family == "phi":
    rows += [("model.final_layernorm.weight", ("final_norm", "scale"), ident, ident),
             ("model.final_layernorm.bias", ("final_norm", "bias"), ident, ident),
             ("lm_head.bias", ("lm_head", "bias"), ident, ident)]
  else:
    rows += [("model.norm.weight", ("final_norm", "scale"), ident, ident)]
  return rows


def _get(state, key):
  if key not in state:
    raise CheckpointError(f"missing key {key!r} in the Show-o state dict")
  return np.asarray(state[key])


def _shape(state, key):
  """Shape of one entry without reading it (values may be arrays, ShapeDtypeStructs or shape tuples)."""
  if key not in state:
    raise CheckpointError(f"missing key {key!r} in the Show-o state dict")
  value = state[key]
  return tuple(value) if isinstance(value, tuple) else tuple(value.shape)


def usable_config_json(data) -> dict:
  """`data` (a parsed config.json) if it can describe a Show-o backbone: an official Show-o config (`_class_name`
  "Showo", maybe with the LLM's fields too) or a Hugging Face LLM config (`model_type`); else {} (e.g. MAGVIT's)."""
  if not isinstance(data, dict):
    return {}
  return data if data.get("_class_name") == "Showo" or "model_type" in data else {}


def _json_key(key, family: str) -> str:
  return key[family] if isinstance(key, dict) else key


def _checked(value, label: str, kind):
  """`value` as a positive `kind` (ids may be 0), or a one-line CheckpointError naming `label`."""
  low = 0 if label.endswith("_id") else 1e-300
  number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
  if not number or value < low or (kind is int and value != int(value)):
    what = "a non-negative integer" if low == 0 else ("a positive integer" if kind is int else "a positive number")
    raise CheckpointError(f"{label}={value!r} is not {what}")
  return kind(value)


def infer_config(state: dict, prefix: str = PREFIX, *, config_json=None, llm_vocab_size=None, codebook_size=None,
                 bos_id=None, eos_id=None, rope_theta=None, norm_eps=None, rotary_fraction=None, head_dim=None):
  """A Show-o config whose backbone matches the shapes of an official state dict.

  Only shapes are read: `state` may map keys to arrays, `jax.ShapeDtypeStruct`s or shape tuples (the streaming
  converter passes the safetensors header's shapes). Nothing is guessed: what the shapes do not tell comes from
  the keyword arguments, else `config_json`, else the released checkpoints' facts (58498 rows, `llm_model_path`
  "microsoft/phi-1_5"); whatever is still unknown is an error.

  Args:
    state: the official state dict, or its shapes.
    prefix: key prefix of the backbone.
    config_json: the parsed config.json beside the weights (the official Show-o one, which may also carry the
      LLM's `rope_theta`, `layer_norm_eps`/`rms_norm_eps`, `partial_rotary_factor`, `bos_token_id`,
      `eos_token_id`, `head_dim`; or a Hugging Face LLM config), or None.
    llm_vocab_size: text tokens of the vocabulary. With `codebook_size` unknown, that is the rest of the rows.
    codebook_size: image codes of the vocabulary (and the reverse).
    bos_id: the BOS token id (`eos_id`: the EOS one).
    rope_theta: the RoPE base.
    norm_eps: the LayerNorm (phi) / RMSNorm (llama) epsilon.
    rotary_fraction: phi's partial_rotary_factor (LLaMA rotates whole heads unless config.json says otherwise).
    head_dim: per-head size; the QK-norm weights give it, so it is needed only without QK-norm.
  Returns:
    The validated config.
  Raises:
    CheckpointError: a value is missing, malformed or contradicts the shapes (one line naming it).
  """
  rows, hidden = (int(n) for n in _shape(state, prefix + "model.embed_tokens.weight"))
  family = "phi" if prefix + "model.final_layernorm.weight" in state else "llama"
  layer_ids = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"model\.layers\.(\d+)\.", k))}
  if not layer_ids:
    raise CheckpointError(f"no decoder layers ({prefix}model.layers.N.*) in the state dict")
  num_layers = max(layer_ids) + 1
  meta = usable_config_json(config_json)
  model_type = meta.get("model_type")
  if model_type is not None and (model_type == "phi") != (family == "phi"):
    raise CheckpointError(f"config.json model_type {model_type!r} does not match the {family}-family tensors")
  if meta.get("rope_scaling"):
    raise CheckpointError(f"config.json rope_scaling {meta['rope_scaling']!r} is not supported")
  given = dict(llm_vocab_size=llm_vocab_size, codebook_size=codebook_size, bos_id=bos_id, eos_id=eos_id,
               rope_theta=rope_theta, norm_eps=norm_eps, rotary_fraction=rotary_fraction, head_dim=head_dim)
  facts, labels = {}, {}  # value and where it came from, for the errors
  for name, key, kind in _FACTS:
    key = _json_key(key, family)
    if given[name] is not None:
      facts[name], labels[name] = _checked(given[name], name, kind), name
    elif meta.get(key) is not None:
      facts[name], labels[name] = _checked(meta[key], f"config.json {key}", kind), f"config.json {key}"
  if "head_dim" not in facts and meta.get("num_attention_heads") is not None:
    heads = _checked(meta["num_attention_heads"], "config.json num_attention_heads", int)
    if hidden % heads:
      raise CheckpointError(f"config.json num_attention_heads={heads} does not divide the hidden size {hidden}")
    facts["head_dim"], labels["head_dim"] = hidden // heads, "config.json num_attention_heads"
  l0 = f"{prefix}model.layers.0."
  qn = l0 + ("self_attn.q_layernorm.weight" if family == "phi" else "self_attn.q_norm.weight")
  qk_norm = qn in state
  if qk_norm:  # the per-head norm's width is the head size
    width = int(_shape(state, qn)[0])
    if facts.setdefault("head_dim", width) != width:
      raise CheckpointError(f"{labels['head_dim']} gives head_dim={facts['head_dim']}, but {qn!r} is {width} wide")
    labels.setdefault("head_dim", qn)
  # The released checkpoints' facts fill what is still unknown (a config.json naming another LLM turns them off).
  layout = _KNOWN_LAYOUTS.get(rows)
  named = meta.get("llm_model_path") or None
  if layout and named not in (None, layout["llm"]):
    layout = None
  llm = _KNOWN_LLMS.get(named or (layout and layout["llm"]))
  if llm and llm["family"] != family:
    if named:
      raise CheckpointError(f"config.json llm_model_path {named!r} is a {llm['family']} model, but the tensors "
                            f"are {family}-family")
    llm = layout = None
  if layout and "llm_vocab_size" not in facts and "codebook_size" not in facts:
    facts.update(llm_vocab_size=layout["llm_vocab_size"], codebook_size=layout["codebook_size"])
  for name, value in (llm or {}).items():
    if name != "family":
      facts.setdefault(name, value)
  if family == "llama":  # HF LLaMA rotates whole heads unless its config sets partial_rotary_factor
    facts.setdefault("rotary_fraction", 1.0)
  # One of the two vocabulary parts gives the other: the official embedding has exactly the layout's rows.
  for have, other in (("llm_vocab_size", "codebook_size"), ("codebook_size", "llm_vocab_size")):
    if have in facts and other not in facts:
      facts[other] = rows - _NUM_SPECIAL - facts[have]
      if facts[other] <= 0:
        raise CheckpointError(f"{labels.get(have, have)}={facts[have]} leaves no {other} in the {rows}-row "
                              f"vocabulary (text + 10 special + image codes + [MASK])")
  missing = [name for name in _FACT_NAMES if name not in facts]
  if missing:
    keys = [_json_key(key, family) + (" (or num_attention_heads)" if name == "head_dim" else "")
            for name, key, _ in _FACTS if name in missing]
    split = (f" (cannot split the {rows}-row vocabulary into text and image tokens)"
             if "llm_vocab_size" in missing else "")
    raise CheckpointError(f"the {family}-family checkpoint does not say its {', '.join(missing)}{split}: put "
                          f"{', '.join(keys)} in the config.json beside the weights, or pass "
                          f"{', '.join(n + '=' for n in missing)} to load_official_showo (showo_keys.infer_config)")

  size = "phi-1.5" if (family, hidden, num_layers) == ("phi", 2048, 24) else (
      "tiny" if family == "phi" else "tiny-llama")
  config = showo_config.showo_config(size=size)
  m = config.model
  m.family, m.hidden_size, m.num_layers = family, hidden, int(num_layers)
  d = facts["head_dim"]
  q_key, k_key = l0 + "self_attn.q_proj.weight", l0 + "self_attn.k_proj.weight"
  for key in (q_key, k_key):
    if _shape(state, key)[0] % d:
      raise CheckpointError(f"{key!r}: {_shape(state, key)[0]} rows are not a multiple of head_dim={d}")
  m.num_heads, m.head_dim = _shape(state, q_key)[0] // d, d
  m.num_kv_heads = _shape(state, k_key)[0] // d
  fc = l0 + ("mlp.fc1.weight" if family == "phi" else "mlp.gate_proj.weight")
  m.intermediate_size = int(_shape(state, fc)[0])
  m.qk_norm, m.vocab_size = qk_norm, rows
  m.rope_theta, m.norm_eps, m.rotary_fraction = facts["rope_theta"], facts["norm_eps"], facts["rotary_fraction"]
  m.vocab.update(llm_vocab_size=facts["llm_vocab_size"], codebook_size=facts["codebook_size"],
                 bos_id=facts["bos_id"], eos_id=facts["eos_id"])
  return showo_config.validate(config)


def _dims(m):
  return {"h": m.num_heads, "kv": m.num_kv_heads, "d": showo_config.head_dim(m)}


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _lookup(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def params_from_official(state: dict, config, prefix: str = PREFIX):
  """Maps an official state dict onto the Flax param tree of `config` (strict: every key used exactly once).

  Returns (params, extras) where extras holds carried-along tensors (e.g. the CLIP variant's mm_projector).
  """
  m = config.model
  dims = _dims(m)
  expected = {}  # official key -> (flax path, converter)
  for key, path, to_flax, _ in _top_map(m.family):
    expected[prefix + key] = (path, to_flax)
  for i in range(m.num_layers):
    for key, path, to_flax, _ in _layer_map(m.family):
      if not _used(path, m):
        continue
      expected[f"{prefix}model.layers.{i}.{key}"] = ((f"layers_{i}",) + path, to_flax)
  # Indexing (not .items()) so that a lazy state dict reads each tensor once, when it is converted.
  extras = {k: np.asarray(state[k]) for k in state if k.startswith(EXTRA_PREFIXES)}
  unexpected = sorted(set(state) - set(expected) - set(extras))
  if unexpected:
    raise CheckpointError(f"unexpected key {unexpected[0]!r} in the Show-o state dict "
                          f"({len(unexpected)} unexpected in all)")
  params = {}
  for key, (path, to_flax) in expected.items():
    value = _get(state, key)
    try:
      _set(params, path, to_flax(value, dims))
    except ValueError:  # a reshape into heads failed: the tensor does not fit the inferred backbone
      raise CheckpointError(f"key {key!r} has shape {value.shape}, which does not fit the backbone inferred "
                            f"from the other tensors") from None
    del value
  _check_shapes(params, config, state)
  if m.scan_layers:
    params = stack_layers(params, m.num_layers)
  return params, extras


def _check_shapes(params, config, state):
  """Compares every converted array with the shape the model expects; names the official key on mismatch."""
  import jax  # pylint: disable=g-import-not-at-top
  cfg = showo_config.transformer_config(config)
  cfg = transformer.TransformerConfig(**{**cfg.__dict__, "scan_layers": False, "remat_policy": "none"})
  abstract = jax.eval_shape(
      lambda: transformer.Transformer(cfg).init(jax.random.key(0), np.zeros((1, 2), np.int32),
                                                omni_mask.causal_spans(1, 2)))["params"]
  abstract = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, abstract,
                          is_leaf=lambda x: hasattr(x, "value"))
  official_of = {}
  m = config.model
  for key, path, _, _ in _top_map(m.family):
    official_of[path] = PREFIX + key
  for i in range(m.num_layers):
    for key, path, _, _ in _layer_map(m.family):
      official_of[(f"layers_{i}",) + path] = f"{PREFIX}model.layers.{i}.{key}"
  for path, want in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    names = tuple(p.key for p in path)
    got = _lookup(params, names)
    if got.shape != want.shape:
      key = official_of.get(names, "/".join(names))
      raise CheckpointError(f"key {key!r} has shape {tuple(np.asarray(state.get(key, got)).shape)}, "
                            f"the model expects the equivalent of {want.shape} (flax {'/'.join(names)})")


def params_to_official(params, config, prefix: str = PREFIX) -> dict:
  """Inverse of params_from_official: Flax params → official state dict (numpy, PyTorch layout)."""
  return {k: np.ascontiguousarray(v) for k, v in iter_official(params, config, prefix)}


def _used(path, m) -> bool:
  """False for the QK-norm params of a config without QK-norm."""
  return m.qk_norm or not (path[0] == "attn" and path[-2] in ("q_norm", "k_norm"))


def official_plan(config, prefix: str = PREFIX):
  """[(official key, flax path, layer index or None, to_torch)]: where each official tensor comes from.

  A scanned layout ({"layers": stacked}) is listed leaf by leaf (every layer of one stacked leaf together), so
  that a reader fetching a few leaves at a time (the streaming export) reads each stacked leaf once.
  """
  m = config.model
  rows = [(prefix + key, path, None, to_torch) for key, path, _, to_torch in _top_map(m.family)]
  layer_rows = [(key, path, to_torch) for key, path, _, to_torch in _layer_map(m.family) if _used(path, m)]
  if m.scan_layers:
    rows += [(f"{prefix}model.layers.{i}.{key}", ("layers",) + path, i, to_torch)
             for key, path, to_torch in layer_rows for i in range(m.num_layers)]
  else:
    rows += [(f"{prefix}model.layers.{i}.{key}", (f"layers_{i}",) + path, None, to_torch)
             for i in range(m.num_layers) for key, path, to_torch in layer_rows]
  return rows


def to_official(value, index, to_torch, config):
  """One plan row applied to its flax leaf; a view where possible (transposes are not copied)."""
  value = np.asarray(value)
  return to_torch(value if index is None else value[index], _dims(config.model))


def iter_official(params, config, prefix: str = PREFIX):
  """Yields (official key, numpy array) one tensor at a time, as views of `params` where possible."""
  for key, path, index, to_torch in official_plan(config, prefix):
    yield key, to_official(_lookup(params, path), index, to_torch, config)


def stack_layers(params, num_layers: int):
  """{layers_0: t, …} → {layers: stacked t} (the scanned layout)."""
  import jax  # pylint: disable=g-import-not-at-top
  out = {k: v for k, v in params.items() if not k.startswith("layers_")}
  out["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *[params[f"layers_{i}"] for i in range(num_layers)])
  return out


def unstack_layers(params, num_layers: int):
  import jax  # pylint: disable=g-import-not-at-top
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: np.asarray(x)[i], params["layers"])
  return out
