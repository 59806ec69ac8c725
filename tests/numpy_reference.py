"""An independent float64 numpy forward pass of the backbone, written from SPEC §1, used as a test oracle.

It reads the *official* state-dict layout (PyTorch [out, in] weights), so a test comparing it with the Flax
model also checks the key mapping.
"""

import numpy as np


def _layer_norm(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + (0.0 if b is None else b)


def _rms_norm(x, w, eps):
  return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w


def _rope(x, positions, rotary_dim, theta):
  """x [B, H, L, D]; rotate-half on the first rotary_dim dims."""
  inv = 1.0 / theta ** (np.arange(0, rotary_dim, 2) / rotary_dim)
  ang = positions[:, None, :, None] * inv  # [B, 1, L, rd/2]
  cos, sin = np.cos(ang), np.sin(ang)
  half = rotary_dim // 2
  x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], -1)


def forward(state, input_ids, allowed, *, family, num_heads, num_kv_heads, rotary_dim, theta=10000.0, eps=1e-5,
            prefix="showo."):
  """float64 logits [B, L, V] from an official-layout state dict; allowed bool [B, L, L]."""
  s = {k: np.asarray(v, np.float64) for k, v in state.items()}
  g = lambda k: s[prefix + k]
  x = g("model.embed_tokens.weight")[input_ids]
  b, l, e = x.shape
  d = e // num_heads
  positions = np.broadcast_to(np.arange(l, dtype=np.float64), (b, l))
  num_layers = 1 + max(int(k.split(".")[3]) for k in s if k.startswith(prefix + "model.layers."))
  lin = lambda h, name, bias=True: h @ g(name + ".weight").T + (g(name + ".bias") if bias else 0.0)
  for i in range(num_layers):
    p = f"model.layers.{i}."
    phi = family == "phi"
    h = (_layer_norm(x, g(p + "input_layernorm.weight"), g(p + "input_layernorm.bias"), eps) if phi
         else _rms_norm(x, g(p + "input_layernorm.weight"), eps))
    heads = lambda t, n: t.reshape(b, l, n, d).transpose(0, 2, 1, 3)
    q = heads(lin(h, p + "self_attn.q_proj", phi), num_heads)
    k = heads(lin(h, p + "self_attn.k_proj", phi), num_kv_heads)
    v = heads(lin(h, p + "self_attn.v_proj", phi), num_kv_heads)
    if phi:
      q = _layer_norm(q, g(p + "self_attn.q_layernorm.weight"), g(p + "self_attn.q_layernorm.bias"), eps)
      k = _layer_norm(k, g(p + "self_attn.k_layernorm.weight"), g(p + "self_attn.k_layernorm.bias"), eps)
    else:
      q = _rms_norm(q, g(p + "self_attn.q_norm.weight"), eps)
      k = _rms_norm(k, g(p + "self_attn.k_norm.weight"), eps)
    q, k = _rope(q, positions, rotary_dim, theta), _rope(k, positions, rotary_dim, theta)
    rep = num_heads // num_kv_heads
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    scores = np.where(allowed[:, None], scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    a = (w @ v).transpose(0, 2, 1, 3).reshape(b, l, e)
    if phi:
      attn = lin(a, p + "self_attn.dense")
      f = lin(h, p + "mlp.fc1")
      gelu = 0.5 * f * (1 + np.tanh(np.sqrt(2 / np.pi) * (f + 0.044715 * f**3)))
      x = x + attn + lin(gelu, p + "mlp.fc2")
    else:
      x = x + lin(a, p + "self_attn.o_proj", False)
      h2 = _rms_norm(x, g(p + "post_attention_layernorm.weight"), eps)
      gate = lin(h2, p + "mlp.gate_proj", False)
      x = x + lin(gate / (1 + np.exp(-gate)) * lin(h2, p + "mlp.up_proj", False), p + "mlp.down_proj", False)
  if family == "phi":
    x = _layer_norm(x, g("model.final_layernorm.weight"), g("model.final_layernorm.bias"), eps)
    return lin(x, "lm_head")
  return lin(_rms_norm(x, g("model.norm.weight"), eps), "lm_head", False)


def random_llama_state(rng, *, vocab, hidden, layers, heads, kv_heads, inter, prefix="showo."):
  """A random official-layout LLaMA-family Show-o state dict (with QK-norm)."""
  d = hidden // heads
  n = lambda *shape, scale=None: (rng.standard_normal(shape) * (scale or 1 / np.sqrt(shape[-1]))).astype(np.float32)
  gain = lambda dim: (1 + 0.2 * rng.standard_normal(dim)).astype(np.float32)
  s = {prefix + "model.embed_tokens.weight": n(vocab, hidden, scale=1.0),
       prefix + "model.norm.weight": gain(hidden), prefix + "lm_head.weight": n(vocab, hidden)}
  for i in range(layers):
    p = f"{prefix}model.layers.{i}."
    s.update({p + "input_layernorm.weight": gain(hidden), p + "post_attention_layernorm.weight": gain(hidden),
              p + "self_attn.q_proj.weight": n(heads * d, hidden), p + "self_attn.k_proj.weight": n(kv_heads * d, hidden),
              p + "self_attn.v_proj.weight": n(kv_heads * d, hidden), p + "self_attn.o_proj.weight": n(hidden, heads * d),
              p + "self_attn.q_norm.weight": gain(d), p + "self_attn.k_norm.weight": gain(d),
              p + "mlp.gate_proj.weight": n(inter, hidden), p + "mlp.up_proj.weight": n(inter, hidden),
              p + "mlp.down_proj.weight": n(hidden, inter)})
  return s


# ------------------------------------------------------------------------------ omni-attention masks (SPEC §4)


def _in_image(row, soi, eoi):
  """SPEC §4.1: a position is in an image when more <|soi|> than <|eoi|> have been seen up to it, or it is one."""
  opened = closed = 0
  out = []
  for t in row:
    opened += t == soi
    closed += t == eoi
    out.append(opened > closed or t in (soi, eoi))
  return out


def _row_mask(row, task, layout):
  """bool [L, L] of one sequence: allowed[i][j] = query i may attend to key j."""
  n = len(row)
  pad = [t == layout.pad_id for t in row]
  image = _in_image(row, layout.soi_id, layout.eoi_id)
  allowed = np.zeros((n, n), bool)
  if task == 0:  # t2i, SPEC §4.1 with rm_pad_in_image: pe = the last pad
    pe = max((j for j in range(n) if pad[j]), default=-1)
    for i in range(n):
      for j in range(n):
        if image[i]:  # the whole sequence except pads
          allowed[i, j] = not pad[j]
        else:  # causal; text after the pads loses them
          allowed[i, j] = j <= i and not (i > pe and j <= pe)
  elif task == 1:  # lm: SPEC §4.1 without rm_pad_in_image, plain causal
    for i in range(n):
      allowed[i, :i + 1] = True
  elif task == 2:  # mmu, SPEC §4.2: causal plus columns 0…e, e = the first <|eoi|> (each row its own)
    e = next((j for j in range(n) if row[j] == layout.eoi_id), -1)
    for i in range(n):
      for j in range(n):
        allowed[i, j] = j <= i or j <= e
  elif task == 3:  # mixed, SPEC §3.5: causal across segments, an image sees its own segment whole
    for i in range(n):
      if pad[i]:  # pads see only themselves, and no real token sees a pad
        allowed[i, i] = True
        continue
      last = i
      if image[i]:  # the segment ends at the first <|eoi|> at or after i (or with the sequence)
        last = next((j for j in range(i, n) if row[j] == layout.eoi_id), n - 1)
      for j in range(last + 1):
        allowed[i, j] = not pad[j]
  else:
    raise ValueError(f"unknown task {task}")
  return allowed


def omni_allowed(ids, tasks, layout):
  """bool [B, L, L]: the omni-attention mask of each row's task (0 t2i, 1 lm, 2 mmu, 3 mixed), decided position
  by position from the token ids: the oracle for models/omni_mask.py's dense builders and its spans."""
  ids = np.asarray(ids)
  return np.stack([_row_mask([int(t) for t in row], int(task), layout) for row, task in zip(ids, tasks)])
