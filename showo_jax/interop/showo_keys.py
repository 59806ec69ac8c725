"""Official Show-o state dict (PyTorch layout, SPEC §9.1) ↔ Flax params of models/transformer.py.

PyTorch Linear weights are [out, in]; Flax kernels are [in, ...out] with heads split out
(q/k/v: [E, H, D]; o_proj: [H, D, E]). Phi keys live under `showo.model.*` / `showo.lm_head.*`; a LLaMA-family
Show-o uses the Hugging Face LLaMA names under the same prefix (QK-norm as `self_attn.{q,k}_norm.weight`).
"""

import re

import numpy as np

from showo_jax.config import showo as showo_config
from showo_jax.interop.reader import CheckpointError
from showo_jax.models import transformer

PREFIX = "showo."
# Extra tensors of the CLIP-ViT variant (SPEC §9.1): carried along, not part of the backbone.
EXTRA_PREFIXES = ("mm_projector.",)

# Known vocabulary layouts by embedding rows: (llm_vocab_size, codebook_size, bos=eos id).
_KNOWN_LAYOUTS = {58498: (50295, 8192, 50256), 175: (100, 64, 99)}


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


def infer_config(state: dict, prefix: str = PREFIX, llm_vocab_size=None, codebook_size=None, bos_id=None,
                 head_dim=None):
  """A Show-o config whose backbone matches the shapes of an official state dict.

  Only shapes are read: `state` may map keys to arrays, `jax.ShapeDtypeStruct`s or shape tuples (the
  streaming converter passes the safetensors header's shapes). `head_dim` is needed only without QK-norm.
  """
  vocab_size, hidden = _shape(state, prefix + "model.embed_tokens.weight")
  family = "phi" if prefix + "model.final_layernorm.weight" in state else "llama"
  layer_ids = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"model\.layers\.(\d+)\.", k))}
  if not layer_ids:
    raise CheckpointError(f"no decoder layers ({prefix}model.layers.N.*) in the state dict")
  num_layers = max(layer_ids) + 1
  l0 = f"{prefix}model.layers.0."
  qn = l0 + ("self_attn.q_layernorm.weight" if family == "phi" else "self_attn.q_norm.weight")
  qk_norm = qn in state
  q_rows = _shape(state, l0 + "self_attn.q_proj.weight")[0]
  head_dim = _shape(state, qn)[0] if qk_norm else (head_dim or 64)
  fc = l0 + ("mlp.fc1.weight" if family == "phi" else "mlp.gate_proj.weight")
  size = "phi-1.5" if (family, hidden, num_layers) == ("phi", 2048, 24) else (
      "tiny" if family == "phi" else "tiny-llama")
  config = showo_config.showo_config(size=size)
  m = config.model
  m.family, m.hidden_size, m.num_layers = family, int(hidden), int(num_layers)
  m.num_heads, m.head_dim = q_rows // head_dim, int(head_dim)
  m.num_kv_heads = _shape(state, l0 + "self_attn.k_proj.weight")[0] // head_dim
  m.intermediate_size = int(_shape(state, fc)[0])
  m.qk_norm, m.vocab_size = qk_norm, int(vocab_size)
  known = _KNOWN_LAYOUTS.get(int(vocab_size))
  if llm_vocab_size is None and codebook_size is None and known:
    llm_vocab_size, codebook_size, bos_id = known
  if codebook_size is None and llm_vocab_size is None:
    if vocab_size <= 8192 + 11:
      raise CheckpointError(f"cannot split the {vocab_size}-row vocabulary into text and image tokens: pass "
                            "llm_vocab_size and codebook_size (or keep the official config.json beside the weights)")
    codebook_size = 8192  # MAGVIT-v2's 13-bit codebook
  if llm_vocab_size is None:
    llm_vocab_size = vocab_size - 11 - codebook_size
  if codebook_size is None:
    codebook_size = vocab_size - 11 - llm_vocab_size
  if bos_id is None:
    bos_id = 50256 if llm_vocab_size > 50256 else llm_vocab_size - 1
  m.vocab.update(llm_vocab_size=int(llm_vocab_size), codebook_size=int(codebook_size), bos_id=int(bos_id),
                 eos_id=int(bos_id))
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
                                                np.ones((1, 2, 2), bool)))["params"]
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
