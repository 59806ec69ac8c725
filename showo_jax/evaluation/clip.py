"""CLIP's image and text towers (Radford et al. 2021) in Flax, loading a Hugging Face CLIP folder.

The folder is what `openai/clip-vit-large-patch14` and the like hold: config.json, model.safetensors,
tokenizer.json and preprocessor_config.json. Module names follow the HF state dict (`vision_model.encoder.
layers.0.self_attn.q_proj.weight` → params vision_model/encoder/layers_0/self_attn/q_proj/kernel, transposed),
so the weights convert key for key. Images are preprocessed as CLIPImageProcessor does (PIL bicubic resize of
the shorter side, centre crop, rescale, normalize); texts are tokenised with the folder's tokenizer.json,
cut to the context length with the end token kept.
"""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from showo_jax.common import paths
from showo_jax.evaluation import weight_files


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  act: str = "quick_gelu"
  eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  vision: TowerConfig
  text: TowerConfig
  projection_dim: int
  image_size: int
  patch_size: int
  vocab_size: int
  max_positions: int
  eos_token_id: int  # 2 in the original configs: pool at the largest id (the end token), as HF does then

  @classmethod
  def from_json(cls, text: str, source: str = "config.json"):
    try:
      c = json.loads(text)
      v, t = c["vision_config"], c["text_config"]
      def tower(d):
        return TowerConfig(d["hidden_size"], d["num_hidden_layers"], d["num_attention_heads"], d["intermediate_size"],
                           d.get("hidden_act", "quick_gelu"), d.get("layer_norm_eps", 1e-5))
      return cls(tower(v), tower(t), c.get("projection_dim", 512), v["image_size"], v["patch_size"],
                 t["vocab_size"], t.get("max_position_embeddings", 77), t.get("eos_token_id", 2))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
      raise ValueError(f"{source}: not a CLIP config ({type(e).__name__}: {e})") from None


def _act(name):
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
    return lambda x: jax.nn.gelu(x, approximate=name != "gelu")
  raise ValueError(f"CLIP config: unknown hidden_act {name!r}")


class EncoderLayer(nn.Module):
  c: TowerConfig

  @nn.compact
  def __call__(self, x, mask):
    c, b, n = self.c, x.shape[0], x.shape[1]
    h = nn.LayerNorm(epsilon=c.eps, name="layer_norm1")(x)
    heads = lambda y: y.reshape(b, n, c.num_heads, -1)  # pylint: disable=g-long-lambda
    # Flat names for HF's self_attn.{q,k,v,out}_proj and mlp.fc{1,2} (see _our_path).
    q = heads(nn.Dense(c.hidden_size, name="self_attn_q_proj")(h))
    k = heads(nn.Dense(c.hidden_size, name="self_attn_k_proj")(h))
    v = heads(nn.Dense(c.hidden_size, name="self_attn_v_proj")(h))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (q.shape[-1] ** -0.5)
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, n, -1)
    x = x + nn.Dense(c.hidden_size, name="self_attn_out_proj")(out)
    h = nn.LayerNorm(epsilon=c.eps, name="layer_norm2")(x)
    h = nn.Dense(c.hidden_size, name="mlp_fc2")(_act(c.act)(nn.Dense(c.intermediate_size, name="mlp_fc1")(h)))
    return x + h


class Encoder(nn.Module):
  c: TowerConfig

  @nn.compact
  def __call__(self, x, mask=None):
    for i in range(self.c.num_layers):
      x = EncoderLayer(self.c, name=f"layers_{i}")(x, mask)
    return x


class CLIP(nn.Module):
  """`encode_image` ([-1…] normalized NHWC pixels) and `encode_text` (ids [B, L]) → projected embeddings."""
  c: ClipConfig

  def setup(self):
    c = self.c
    d = c.vision.hidden_size
    self.patch_embedding = nn.Conv(d, (c.patch_size,) * 2, strides=c.patch_size, padding="VALID", use_bias=False)
    self.class_embedding = self.param("class_embedding", nn.initializers.normal(0.02), (d,))
    grid = (c.image_size // c.patch_size) ** 2
    self.vision_position = self.param("vision_position_embedding", nn.initializers.normal(0.02), (grid + 1, d))
    self.pre_layrnorm = nn.LayerNorm(epsilon=c.vision.eps)  # sic: HF's name
    self.vision_encoder = Encoder(c.vision)
    self.post_layernorm = nn.LayerNorm(epsilon=c.vision.eps)
    self.visual_projection = nn.Dense(c.projection_dim, use_bias=False)
    self.token_embedding = nn.Embed(c.vocab_size, c.text.hidden_size)
    self.text_position = self.param("text_position_embedding", nn.initializers.normal(0.02),
                                    (c.max_positions, c.text.hidden_size))
    self.text_encoder = Encoder(c.text)
    self.final_layer_norm = nn.LayerNorm(epsilon=c.text.eps)
    self.text_projection = nn.Dense(c.projection_dim, use_bias=False)

  def encode_image(self, pixels):
    x = self.patch_embedding(pixels)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding, (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.vision_position[None]
    x = self.vision_encoder(self.pre_layrnorm(x))
    return self.visual_projection(self.post_layernorm(x[:, 0]))

  def encode_text(self, ids):
    n = ids.shape[1]
    x = self.token_embedding(ids) + self.text_position[None, :n]
    causal = jnp.tril(jnp.ones((n, n), bool))[None, None]
    x = self.final_layer_norm(self.text_encoder(x, causal))
    if self.c.eos_token_id == 2:
      at = jnp.argmax(ids, axis=-1)
    else:
      at = jnp.argmax(ids == self.c.eos_token_id, axis=-1)
    return self.text_projection(x[jnp.arange(x.shape[0]), at])

  def __call__(self, pixels, ids):
    return self.encode_image(pixels), self.encode_text(ids)


# HF name prefix → our module path prefix (the rest of the name is kept, with "." → "/" and "layers.N" → layers_N)
_PREFIXES = (("vision_model.embeddings.patch_embedding", "patch_embedding"),
             ("vision_model.embeddings.class_embedding", "class_embedding"),
             ("vision_model.embeddings.position_embedding.weight", "vision_position_embedding"),
             ("vision_model.pre_layrnorm", "pre_layrnorm"), ("vision_model.post_layernorm", "post_layernorm"),
             ("vision_model.encoder", "vision_encoder"), ("visual_projection", "visual_projection"),
             ("text_model.embeddings.token_embedding", "token_embedding"),
             ("text_model.embeddings.position_embedding.weight", "text_position_embedding"),
             ("text_model.encoder", "text_encoder"), ("text_model.final_layer_norm", "final_layer_norm"),
             ("text_projection", "text_projection"))
_UNUSED = ("logit_scale", "text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def _our_path(name: str):
  for theirs, ours in _PREFIXES:
    if name == theirs or name.startswith(theirs + "."):
      rest = name[len(theirs):].lstrip(".").split(".") if name != theirs else []
      parts = [ours]
      i = 0
      while i < len(rest):
        if rest[i] == "layers":
          parts.append(f"layers_{rest[i + 1]}")
          i += 2
        elif rest[i] in ("self_attn", "mlp"):
          parts.append(f"{rest[i]}_{rest[i + 1]}")
          i += 2
        else:
          parts.append(rest[i])
          i += 1
      return parts
  return None


def params_from_hf(state: dict, config: ClipConfig, source: str) -> dict:
  """HF CLIP state dict → our params; ValueError naming the first missing, unexpected or mis-shaped entry."""
  params = {}
  for name, value in state.items():
    if name in _UNUSED:
      continue
    parts = _our_path(name)
    if parts is None:
      raise ValueError(f"{source}: unexpected entry {name!r} (not a CLIP state dict)")
    value, leaf = np.asarray(value, np.float32), parts[-1]
    if leaf == "weight":
      if value.ndim == 4:  # conv [O, I, kh, kw] → [kh, kw, I, O]
        parts[-1], value = "kernel", value.transpose(2, 3, 1, 0)
      elif parts[0] == "token_embedding":
        parts[-1] = "embedding"
      elif value.ndim == 2:  # Linear [out, in] → [in, out]
        parts[-1], value = "kernel", value.T
      else:  # LayerNorm
        parts[-1] = "scale"
    node = params
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  want = jax.eval_shape(lambda: CLIP(config).init(jax.random.key(0), jnp.zeros((1, config.image_size,
                                                                                config.image_size, 3)),
                                                  jnp.zeros((1, 4), jnp.int32)))["params"]
  flat = lambda t: {"/".join(str(k.key) for k in p): tuple(v.shape) for p, v in  # pylint: disable=g-long-lambda
                    jax.tree_util.tree_flatten_with_path(t)[0]}
  got, need = flat(params), flat(want)
  for key in sorted(need):
    if key not in got:
      raise ValueError(f"{source}: missing the weights of {key} (not a CLIP state dict of config.json's shapes)")
    if got[key] != need[key]:
      raise ValueError(f"{source}: {key} has shape {got[key]}, config.json's CLIP needs {need[key]}")
  extra = sorted(set(got) - set(need))
  if extra:
    raise ValueError(f"{source}: unexpected entry {extra[0]} (not a CLIP state dict)")
  return params


@dataclasses.dataclass
class Preprocess:
  """CLIPImageProcessor's settings (preprocessor_config.json; the OpenAI values by default)."""
  size: int = 224
  crop: int = 224
  mean: tuple = (0.48145466, 0.4578275, 0.40821073)
  std: tuple = (0.26862954, 0.26130258, 0.27577711)

  def __call__(self, image: Image.Image) -> np.ndarray:
    image = image.convert("RGB")
    w, h = image.size
    scale = self.size / min(w, h)
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - self.crop) // 2, (h - self.crop) // 2
    image = image.crop((left, top, left + self.crop, top + self.crop))
    x = np.asarray(image, np.float32) / 255.0
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


class ClipModel:
  """A loaded CLIP folder: `image_embeddings(PIL images)`, `text_embeddings(strings)` (projected, unnormalized)."""

  def __init__(self, folder: str):
    config_path = paths.join(folder, "config.json")
    if not paths.isfile(config_path):
      raise FileNotFoundError(f"--clip {folder}: no config.json (need a CLIP folder in the Hugging Face layout)")
    self.config = ClipConfig.from_json(paths.read_text(config_path), config_path)
    weights = next((paths.join(folder, n) for n in ("model.safetensors", "pytorch_model.bin")
                    if paths.isfile(paths.join(folder, n))), paths.join(folder, "model.safetensors"))
    self.params = params_from_hf(weight_files.read_state_dict(weights), self.config, weights)
    pre = paths.join(folder, "preprocessor_config.json")
    self.preprocess = Preprocess()
    if paths.isfile(pre):
      p = json.loads(paths.read_text(pre))
      size, crop = p.get("size", 224), p.get("crop_size", 224)
      self.preprocess = Preprocess(size.get("shortest_edge", 224) if isinstance(size, dict) else size,
                                   crop.get("height", 224) if isinstance(crop, dict) else crop,
                                   tuple(p.get("image_mean", Preprocess.mean)),
                                   tuple(p.get("image_std", Preprocess.std)))
    tok_path = paths.join(folder, "tokenizer.json")
    if not paths.isfile(tok_path):
      raise FileNotFoundError(f"--clip {folder}: no tokenizer.json")
    import tokenizers  # pylint: disable=g-import-not-at-top
    self.tokenizer = tokenizers.Tokenizer.from_str(paths.read_text(tok_path))
    model = CLIP(self.config)
    self._image = jax.jit(lambda p, x: model.apply({"params": p}, x, method=CLIP.encode_image))
    self._text = jax.jit(lambda p, ids: model.apply({"params": p}, ids, method=CLIP.encode_text))

  def image_embeddings(self, images) -> np.ndarray:
    return np.asarray(self._image(self.params, np.stack([self.preprocess(im) for im in images])))

  def tokenize(self, texts) -> np.ndarray:
    """ids [B, max_positions], the end token kept when cut, right-padded with the end token as HF CLIP does."""
    n = self.config.max_positions
    rows = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
    end = rows[0][-1] if rows and rows[0] else 0
    rows = [r if len(r) <= n else r[:n - 1] + [r[-1]] for r in rows]
    return np.asarray([r + [end] * (n - len(r)) for r in rows], np.int32)

  def text_embeddings(self, texts) -> np.ndarray:
    return np.asarray(self._text(self.params, self.tokenize(texts)))
