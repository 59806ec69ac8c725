"""A loaded Show-o with its tokenizers: text → image, image → text, inpainting, extrapolation.

`Pipeline.from_checkpoint(DIR)` reads one of our training workdirs (or checkpoints folder): params, the saved
config, the text tokenizer (`config.text_tokenizer.path`, else DIR/text_tokenizer.json) and the image tokenizer
(`config.tokenizer.checkpoint`, else DIR/tokenizer/). The samplers themselves live in showo_jax/sampling; this
module only builds prompts, calls them, and converts between images, codes and strings.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.common import paths
from showo_jax.config import showo as showo_config
from showo_jax.data import images as images_lib
from showo_jax.data import prompting
from showo_jax.data import text_tokenizer as text_tokenizer_lib
from showo_jax.interop import checkpoints
from showo_jax.models import transformer
from showo_jax.sampling import autoregressive
from showo_jax.sampling import editing
from showo_jax.sampling import maskgit
from showo_jax.sampling import mixed as mixed_lib
from showo_jax.tokenizer import codec


@functools.lru_cache(maxsize=8)
def apply_fn(cfg: transformer.TransformerConfig):
  """One stable (hashable) apply function per backbone config, so jitted samplers compile once."""
  model = transformer.Transformer(cfg)

  def apply(params, ids, allowed):
    return model.apply({"params": params}, ids, allowed)
  return apply


def _workdir_of(path: str) -> str:
  path = paths.resolve(path)
  found = checkpoints._checkpoint_dir(path)  # pylint: disable=protected-access
  return paths.parent(found[0]) if found else path


class Pipeline:
  """Params + config + tokenizers, with batched generation methods (all deterministic for a seed)."""

  def __init__(self, params, config, text_tokenizer, image_tokenizer=None):
    self.params = jax.tree.map(jnp.asarray, params)
    self.config = config
    self.layout = showo_config.vocab_layout(config)
    self.cfg = showo_config.transformer_config(config)
    self.text_tokenizer = text_tokenizer
    self.image_tokenizer = image_tokenizer  # (params, magvit config) or None
    self.warn = logging.warning  # called with one-line messages (e.g. a truncated prompt); the CLI replaces it

  @classmethod
  def from_checkpoint(cls, path: str, *, step=None, tokenizer: str = "", text_tokenizer: str = ""):
    params, config = checkpoints.load_checkpoint(path, step)
    workdir = _workdir_of(path)
    text_path = text_tokenizer or config.text_tokenizer.path or paths.join(workdir, "text_tokenizer.json")
    layout = showo_config.vocab_layout(config)
    tok = text_tokenizer_lib.TextTokenizer(text_path, layout)
    image_path = tokenizer or config.tokenizer.checkpoint or paths.join(workdir, "tokenizer")
    image_tok = None
    if paths.exists(image_path):
      image_tok = checkpoints.load_tokenizer(image_path)
    return cls(params, config, tok, image_tok)

  def sampling_defaults(self) -> dict:
    """How this model is meant to be sampled (its config.train.sample_*): the defaults of `sample` and
    `evaluate`. Checkpoints written before a field existed get the value it was introduced with."""
    t = self.config.train
    return dict(steps=int(t.get("sample_steps", 12)), guidance=float(t.get("sample_guidance", 0.0)),
                temperature=float(t.get("sample_temperature", 1.0)), schedule=str(t.get("sample_schedule", "cosine")))

  # -- images <-> codes -----------------------------------------------------------------------------------
  def _need_image_tokenizer(self):
    if self.image_tokenizer is None:
      raise ValueError("no image tokenizer: pass --tokenizer (a MAGVIT-v2 checkpoint) or set config.tokenizer.checkpoint")
    return self.image_tokenizer

  def encode(self, images) -> np.ndarray:
    """uint8 [B, H, W, 3] (or float [-1, 1] NHWC) → codes int32 [B, h·w]."""
    params, cfg = self._need_image_tokenizer()
    x = np.asarray(images)
    x = images_lib.to_float(x) if x.dtype == np.uint8 else x.astype(np.float32)  # exactly as in training
    return np.asarray(codec.magvit_encode(params, cfg, np.transpose(x, (0, 3, 1, 2))))

  def decode(self, codes, grid=None) -> np.ndarray:
    """codes [B, h·w] → uint8 images [B, H, W, 3] (official mapping: clamp((x+1)/2)·255)."""
    params, cfg = self._need_image_tokenizer()
    codes = np.clip(np.asarray(codes), 0, self.layout.codebook_size - 1)
    x = np.asarray(codec.magvit_decode(params, cfg, codes, grid))
    x = np.clip((np.transpose(x, (0, 2, 3, 1)) + 1.0) / 2.0, 0.0, 1.0)
    return (x * 255.0).round().astype(np.uint8)

  # -- text -> image ------------------------------------------------------------------------------------------
  @property
  def text_budget(self) -> int:
    """Raw text ids a t2i prompt can hold: the T + 1 slots of the text block minus <|t2i|>, BOS and EOS (SPEC §3.1);
    the prompt builder keeps exactly this many."""
    return self.config.data.max_text_len - 2

  def encode_t2i_prompts(self, prompts) -> list:
    """Raw text ids per prompt, truncated to `text_budget` as in training (warns once per long prompt)."""
    out = []
    for prompt, ids in zip(prompts, self.text_tokenizer.encode(list(prompts))):
      if len(ids) > self.text_budget:
        self.warn(f"prompt {prompt[:40]!r}{'…' if len(prompt) > 40 else ''} has {len(ids)} text tokens; the "
                  f"text budget is {self.text_budget}: truncated to the first {self.text_budget}, as in training")
        ids = ids[:self.text_budget]
      out.append(ids)
    return out

  def t2i_codes(self, prompts, *, steps: int = 12, guidance: float = 0.0, temperature: float = 1.0, seed: int = 0,
                schedule: str = "cosine", image_tokens=None) -> np.ndarray:
    """MaskGIT decoding of one image per prompt. `image_tokens` [B, N] (ids; [MASK] where unknown) seeds
    inpainting/extrapolation; by default everything is unknown. An empty prompt is unconditional (the same
    sequence as the CFG null prompt). The text prefix is computed once per sample (`maskgit.t2i_generate_cached`).
    Returns codes int32 [B, N]."""
    if guidance < 0:
      raise ValueError(f"guidance must be >= 0, got {guidance}")
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {temperature}")
    n = self.config.data.num_image_tokens
    if image_tokens is None:
      image_tokens = np.full((len(prompts), n), self.layout.mask_id, np.int32)
    mg = maskgit.MaskGitConfig.from_layout(self.layout, num_steps=steps, guidance_scale=float(guidance),
                                           temperature=float(temperature), schedule=schedule)
    text = self.encode_t2i_prompts(prompts)
    cond = prompting.t2i_gen_prompt(text, image_tokens, self.layout, self.config.data.max_text_len)
    uncond = prompting.t2i_gen_prompt([[]] * len(prompts), image_tokens, self.layout, self.config.data.max_text_len)
    codes = maskgit.t2i_generate_cached(self.cfg, self.params, cond, uncond if guidance else None,
                                        jax.random.key(seed), mg, self.layout, image_tokens.shape[1])
    return np.asarray(codes)

  def t2i(self, prompts, **kwargs) -> np.ndarray:
    return self.decode(self.t2i_codes(prompts, **kwargs))

  def inpaint(self, image_u8, mask, prompt: str, **kwargs) -> np.ndarray:
    """Regenerates the masked region (mask: float/bool [H, W], ≥ 0.5 = regenerate) of one image."""
    codes = self.encode(image_u8[None])[0]
    grid = int(round(np.sqrt(codes.size)))
    token_mask = editing.inpainting_token_mask(mask, grid)
    tokens = editing.mask_tokens(self.layout.image_ids(codes)[None], token_mask[None], self.layout.mask_id)
    return self.t2i([prompt], image_tokens=tokens, **kwargs)[0]

  def extrapolate(self, image_u8, direction: str, prompt: str, **kwargs) -> np.ndarray:
    """Extends one image by half its size towards `direction` (left/right/up/down)."""
    if direction not in editing.DIRECTIONS:
      raise ValueError(f"direction must be one of {', '.join(editing.DIRECTIONS)}, got {direction!r}")
    codes = self.encode(image_u8[None])[0]
    g = int(round(np.sqrt(codes.size)))
    grid = self.layout.image_ids(codes).reshape(g, g)
    window = editing.extrapolation_window(grid, direction, self.layout.mask_id)
    generated = self.t2i_codes([prompt], image_tokens=window.reshape(1, -1), **kwargs)[0].reshape(window.shape)
    stitched = editing.stitch_extrapolation(codes.reshape(g, g), generated, direction)
    return self.decode(stitched.reshape(1, -1), grid=stitched.shape)[0]

  # -- image -> text ------------------------------------------------------------------------------------------
  def mmu(self, codes, question, *, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
          top_p: float = 1.0, seed: int = 0, pad_multiple: int = 1) -> list:
    """Answers `question` (one string, or one per image) about each image (codes [B, N]) with KV-cached decoding;
    returns B strings. `pad_multiple`: left-pad the prompts to a multiple of it, so that batches of questions of
    different lengths share a compiled program."""
    ids = self.layout.image_ids(np.asarray(codes))
    questions = [question] * len(ids) if isinstance(question, str) else list(question)
    if len(questions) != len(ids):
      raise ValueError(f"{len(questions)} questions for {len(ids)} images")
    q = self.text_tokenizer.encode([prompting.mmu_question_text(text) for text in questions])
    prompts = prompting.mmu_gen_prompt(ids, q, self.layout)
    lengths = np.array([len(p) for p in prompts], np.int32)
    batch = prompting.left_pad(prompts, self.layout.pad_id)
    extra = -batch.shape[1] % pad_multiple
    batch = np.pad(batch, ((0, 0), (extra, 0)), constant_values=self.layout.pad_id)
    sc = autoregressive.SamplingConfig(max_new_tokens=max_new_tokens, eos_ids=(self.layout.eos_id,),
                                       pad_id=self.layout.pad_id, temperature=temperature, top_k=top_k, top_p=top_p)
    tokens, lens = autoregressive.generate_with_model(self.cfg, self.params, batch, lengths, jax.random.key(seed),
                                                      sc, self.layout, prompt_mask="mmu")
    tokens, lens = np.asarray(tokens), np.asarray(lens)
    return [self.text_tokenizer.decode(t[:n]).strip() for t, n in zip(tokens, lens)]

  # -- mixed modality ----------------------------------------------------------------------------------------
  def mixed(self, prompt: str, *, max_text_tokens: int = 64, steps: int = 12, temperature: float = 1.0,
            text_temperature: float = 0.0, seed: int = 0, max_images: int = 1, schedule: str = "cosine") -> list:
    """Text → image → text from one prompt; returns [("text", str) | ("image", uint8 [H, W, 3]), …].
    `temperature`: MaskGIT confidence temperature (as in t2i); `text_temperature`: text sampling (0 = greedy)."""
    ids = [self.layout.bos_id] + self.text_tokenizer.encode([prompt])[0]
    cfg = mixed_lib.MixedConfig(
        text=autoregressive.SamplingConfig(max_new_tokens=max_text_tokens, eos_ids=(self.layout.eos_id,),
                                           pad_id=self.layout.pad_id, temperature=text_temperature),
        image=maskgit.MaskGitConfig.from_layout(self.layout, num_steps=steps, temperature=temperature,
                                                schedule=schedule),
        num_image_tokens=self.config.data.num_image_tokens, max_images=max_images)
    segments = mixed_lib.mixed_generate(self.cfg, self.params, np.asarray(ids, np.int32), jax.random.key(seed),
                                        self.layout, cfg)
    out = []
    for kind, value in segments:
      if kind == "text":
        out.append(("text", self.text_tokenizer.decode(value)))
      else:
        out.append(("image", self.decode(np.asarray(value)[None])[0] if self.image_tokenizer else value))
    return out
