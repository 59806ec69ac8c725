"""`python -m showo_jax.convert import|export|llm`: official PyTorch checkpoints ↔ showo_jax checkpoints.

  import --input FOLDER_OR_FILE --output CKPT_DIR [--kind showo|magvit] [--overwrite]
      An official Show-o (hub folder, .safetensors, sharded index, .npz, .bin with torch) becomes a checkpoint
      that `sample`, `evaluate` and `train --config.train.init_from=CKPT_DIR` load: CKPT_DIR/checkpoints/0/ with
      the `state` item ({"step", "params"[, "extras"]}) and the `config` item. Sizes and the vocabulary split come
      from the tensor shapes and the official config.json. The CLIP variant's `mm_projector.*` tensors go to
      state["extras"] and are named in config.model.extra_keys. A MAGVIT-v2 becomes a tokenizer checkpoint
      that `tokenizer_trainer.load_tokenizer` (and `sample --tokenizer`) reads.
  export --checkpoint CKPT_DIR --output FOLDER [--overwrite]
      The official layout back: config.json (SPEC §9 fields) + pytorch_model.safetensors ([out, in] weights).
      import → export gives back every tensor bit for bit (float32 sources).
  llm --input HF_FOLDER --output CKPT_DIR --config configs/showo.py:size=… [--qk-norm identity|init]
      A Phi-1.5 or LLaMA-family HF checkpoint as the backbone of a fresh Show-o (see `llm_to_showo`).

Memory: import reads and converts tensors one at a time into one host copy of the model, which Orbax writes in
place (no second copy), so its peak is about one model plus ~1 GB; export restores and writes a few hundred MB
of leaves at a time, so its peak does not grow with the model (`python -m showo_jax.bench convert`). Every
output is written in a temporary folder beside the target and renamed into place when complete; bad input
gives a one-line error and a non-zero exit.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from showo_jax import config_lib
from showo_jax.models import vocab as vocab_lib
from showo_jax.official import reader
from showo_jax.official import showo_keys
from showo_jax.official import streaming

CheckpointError = reader.CheckpointError
CHECKPOINTS = "checkpoints"
WEIGHTS = "pytorch_model.safetensors"
_MAGVIT_PREFIXES = ("encoder.", "decoder.", "quantize.")


###########################  Output folders  ###########################

def _holds_checkpoint(folder: str) -> bool:
  if not os.path.isdir(folder):
    return False
  names = set(os.listdir(folder))
  if CHECKPOINTS in names or any(n.isdigit() for n in names):
    return True
  return any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names)


@contextlib.contextmanager
def staged_output(output: str, overwrite: bool):
  """Yields a temporary folder beside `output`; on success its entries replace those of `output`.

  Nothing is left behind when the body raises, and an existing checkpoint is only replaced with `overwrite`.
  """
  output = os.path.abspath(output)
  if os.path.exists(output) and not os.path.isdir(output):
    raise CheckpointError(f"{output}: exists and is not a folder")
  if _holds_checkpoint(output) and not overwrite:
    raise CheckpointError(f"{output}: already holds a checkpoint (pass --overwrite to replace it)")
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.converting-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the output folder's mode
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if not os.path.exists(output):
    os.rename(tmp, output)
    return
  for name in os.listdir(tmp):
    dst = os.path.join(output, name)
    if os.path.exists(dst):  # move the old entry aside first so the swap is two renames
      old = f"{dst}.replaced-{os.getpid()}"
      os.rename(dst, old)
      os.rename(os.path.join(tmp, name), dst)
      shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
    else:
      os.rename(os.path.join(tmp, name), dst)
  os.rmdir(tmp)


def _nest(flat: dict) -> dict:
  """{"mm_projector.0.weight": a} → {"mm_projector": {"0": {"weight": a}}} (Orbax-friendly names)."""
  out = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def write_checkpoint(folder: str, params, config, extras=None):
  """Writes FOLDER/checkpoints/0 in the layout the trainer writes (params-only `state` + `config`).

  The numpy leaves are written where they lie (the Checkpointer's converter mode), 1 GB at a time: the save
  adds no second copy of the model.
  """
  from showo_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  state = {"step": np.zeros((), np.int32), "params": params}
  if extras:
    state["extras"] = _nest(extras)
  ckpt = checkpointing.Checkpointer(os.path.join(folder, CHECKPOINTS), async_save=False, save_concurrent_gb=1)
  try:
    ckpt.save(0, state, config=config)
  finally:
    ckpt.close()


###########################  import  ###########################

def _official_json(source: str) -> dict:
  path = os.fspath(source)
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  cfg_path = os.path.join(folder, "config.json")
  if not os.path.exists(cfg_path):
    return {}
  try:
    with open(cfg_path) as f:
      return json.load(f)
  except ValueError as e:
    raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None


def detect_kind(keys, description: str) -> str:
  keys = list(keys)
  if not keys:
    raise CheckpointError(f"{description}: holds no tensors")
  if any(k.startswith(showo_keys.PREFIX) for k in keys):
    return "showo"
  if all(k.startswith(_MAGVIT_PREFIXES) for k in keys):
    return "magvit"
  odd = sorted(k for k in keys if not k.startswith(_MAGVIT_PREFIXES + showo_keys.EXTRA_PREFIXES))
  raise CheckpointError(f"{description}: key {odd[0]!r} belongs to neither Show-o (showo.*) nor MAGVIT-v2 "
                        f"(encoder.*/decoder.*): another architecture? (for a plain LLM use `convert llm`)")


def import_showo(source: str, output: str, *, overwrite: bool = False):
  """Official Show-o → our checkpoint in `output`; returns the config."""
  state = streaming.open_state_dict(source)
  desc = getattr(state, "description", source)
  if detect_kind(state.keys(), desc) != "showo":
    raise CheckpointError(f"{desc}: a MAGVIT-v2 checkpoint, not a Show-o (use --kind magvit)")
  meta = _official_json(source)
  meta = meta if meta.get("_class_name") == "Showo" else {}
  try:
    config = showo_keys.infer_config(state.shapes(), llm_vocab_size=meta.get("llm_vocab_size"),
                                     codebook_size=meta.get("codebook_size"))
  except CheckpointError as e:
    raise CheckpointError(f"{desc}: {e}") from None
  if meta.get("num_vq_tokens"):
    config.data.num_image_tokens = int(meta["num_vq_tokens"])
    config.data.resolution = int(round(np.sqrt(config.data.num_image_tokens))) * config.data.downsample
  with staged_output(output, overwrite) as tmp:
    try:
      params, extras = showo_keys.params_from_official(state, config)
    except CheckpointError as e:
      raise CheckpointError(f"{desc}: {e}") from None
    if extras:
      config.model.extra_keys = sorted(extras)
    write_checkpoint(tmp, params, config, extras)
    del params, extras
  return config


def import_magvit(source: str, output: str, *, overwrite: bool = False):
  """Official MAGVIT-v2 → a tokenizer checkpoint (the layout `train_tokenizer` writes); returns the config."""
  from showo_jax.official import magvit_keys  # pylint: disable=g-import-not-at-top
  state = streaming.open_state_dict(source)
  desc = getattr(state, "description", source)
  if detect_kind(state.keys(), desc) != "magvit":
    raise CheckpointError(f"{desc}: a Show-o checkpoint, not a MAGVIT-v2 (use --kind showo)")
  try:
    params, config = magvit_keys.params_from_official(state)
  except CheckpointError as e:
    raise CheckpointError(f"{desc}: {e}") from None
  with staged_output(output, overwrite) as tmp:
    _write_tokenizer_checkpoint(tmp, params, config)
  return config


def _write_tokenizer_checkpoint(folder, params, arch_config):
  """A step-0 tokenizer training state around `params`, through the trainer's own state builder."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from showo_jax import config_magvit  # pylint: disable=g-import-not-at-top
  from showo_jax import sharding  # pylint: disable=g-import-not-at-top
  from showo_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from showo_jax.training import tokenizer_trainer  # pylint: disable=g-import-not-at-top
  config = config_magvit.add_training_fields(ml_collections.ConfigDict(arch_config.to_dict()))
  config.data.resolution = arch_config.resolution
  config.disc.enabled = False  # an imported tokenizer comes without a discriminator
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  run = tokenizer_trainer.TokenizerRun(config, mesh, with_feature_net=False)
  # Built directly rather than by run.init_state (which compiles a random init we would throw away); the
  # structure is the trainer's own, so its restore target (run.abstract_state) matches.
  jnp = jax.numpy
  params = jax.tree.map(lambda a, p: jnp.asarray(p, a.dtype), run.abstract_state.params, params)
  state = tokenizer_trainer.TokenizerState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=run.tx.init(params),
      ema_params=params if run.abstract_state.ema_params is not None else None, disc_params=None,
      disc_opt_state=None, lecam_ema=jnp.zeros((2,), jnp.float32))
  ckpt = checkpointing.Checkpointer(os.path.join(folder, tokenizer_trainer.CHECKPOINTS), async_save=False)
  try:
    ckpt.save(0, state, config=config)
  finally:
    ckpt.close()


###########################  export  ###########################

def _open_checkpoint(checkpoint: str):
  """(Checkpointer, step, config) of our checkpoint (a workdir, checkpoints folder or step folder)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from showo_jax import checkpoint_io  # pylint: disable=g-import-not-at-top
  from showo_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  found = checkpoint_io._checkpoint_dir(checkpoint) if os.path.exists(checkpoint) else None  # pylint: disable=protected-access
  if found is None:
    raise CheckpointError(f"{checkpoint}: no showo_jax checkpoint here (expected DIR/checkpoints/STEP)")
  folder, step = found
  ckpt = checkpointing.Checkpointer(folder, async_save=False)
  try:
    return ckpt, step, ml_collections.ConfigDict(ckpt.saved_config(step))
  except BaseException:
    ckpt.close()
    raise


def official_config_json(config) -> dict:
  """The hub config.json of SPEC §9 for a Show-o config."""
  layout = vocab_lib.VocabLayout.from_config(config)
  return {"_class_name": "Showo", "codebook_size": layout.codebook_size,
          "llm_model_path": "microsoft/phi-1_5" if config.model.family == "phi" else "",
          "llm_vocab_size": layout.llm_vocab_size, "load_from_showo": True,
          "mask_token_id": int(config.model.vocab_size) - 1, "num_vq_tokens": int(config.data.num_image_tokens),
          "vocab_size": int(config.model.vocab_size), "w_clip_vit": bool(config.model.get("extra_keys"))}


# Bytes of saved leaves restored per Orbax call by the export: bounds its memory (a leaf larger than this is read
# alone). One Phi-1.5 layer is ~200 MB, so this is about one layer per call.
EXPORT_BATCH_BYTES = 256 * 2**20


def _export_plan(config, saved: dict, checkpoint: str):
  """[(official key, saved leaf path, layer index or None, to_torch)]: the params rows, then the extras."""
  plan = [(key, ("params",) + path, index, to_torch)
          for key, path, index, to_torch in showo_keys.official_plan(config)]
  for _, leaf, _, _ in plan:
    if leaf not in saved:
      raise CheckpointError(f"{checkpoint}: the checkpoint has no param {'/'.join(leaf[1:])} that its config "
                            f"needs (not a Show-o checkpoint?)")
  ident = lambda x, *_: x
  extras = sorted((".".join(map(str, p[1:])), p) for p in saved if p[0] == "extras")
  return plan + [(key, path, None, ident) for key, path in extras]


def _batches(plan, saved: dict, budget: int):
  """Consecutive plan rows whose distinct leaves add up to at most `budget` bytes (a larger leaf goes alone)."""
  size = lambda leaf: int(np.prod(saved[leaf][0], dtype=np.int64)) * np.dtype(saved[leaf][1]).itemsize
  rows, leaves, nbytes = [], {}, 0
  for row in plan:
    leaf = row[1]
    if leaf not in leaves and rows and nbytes + size(leaf) > budget:
      yield rows, leaves
      rows, leaves, nbytes = [], {}, 0
    if leaf not in leaves:
      leaves[leaf], nbytes = saved[leaf], nbytes + size(leaf)
    rows.append(row)
  if rows:
    yield rows, leaves


def export_showo(checkpoint: str, output: str, *, overwrite: bool = False):
  """Our checkpoint → official folder (config.json + pytorch_model.safetensors), streamed.

  The saved params are restored a batch of leaves at a time (EXPORT_BATCH_BYTES), converted and written; the
  header comes first, from the saved shapes alone. Memory: one batch plus a tensor, not the model.
  """
  ckpt, step, config = _open_checkpoint(checkpoint)
  try:
    saved = ckpt.saved_leaves(step)
    plan = _export_plan(config, saved, checkpoint)

    def convert(value, index, to_torch):
      return showo_keys.to_official(value, index, to_torch, config)

    # Zero-stride stand-ins of the saved shapes: the (view-producing) converters give each official shape
    # without touching any data.
    stand_in = lambda leaf: np.broadcast_to(np.zeros((), saved[leaf][1]), saved[leaf][0])
    specs = []
    for key, leaf, index, to_torch in plan:
      out = convert(stand_in(leaf), index, to_torch)
      specs.append((key, (tuple(out.shape), out.dtype)))

    def tensors():
      for rows, leaves in _batches(plan, saved, EXPORT_BATCH_BYTES):
        values = ckpt.restore_leaves(step, leaves)
        for key, leaf, index, to_torch in rows:
          yield key, convert(values[leaf], index, to_torch)
        del values

    with staged_output(output, overwrite) as tmp:
      streaming.write_safetensors(os.path.join(tmp, WEIGHTS), specs, tensors())
      with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(official_config_json(config), f, indent=2)
  finally:
    ckpt.close()


###########################  llm  ###########################

def load_config_file(spec: str):
  """`configs/showo.py:size=tiny` → get_config("size=tiny")."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such config file")
  module_spec = importlib.util.spec_from_file_location("_convert_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _hf_family(keys, desc):
  if "model.final_layernorm.weight" in keys:
    return "phi"
  if "model.norm.weight" in keys:
    return "llama"
  if any(k.startswith(showo_keys.PREFIX) for k in keys):
    raise CheckpointError(f"{desc}: this is a Show-o checkpoint; use `convert import`")
  raise CheckpointError(f"{desc}: neither a Phi (model.final_layernorm.weight) nor a LLaMA-family "
                        f"(model.norm.weight) Hugging Face checkpoint (first key {sorted(keys)[0]!r})")


class _ShowoView(dict):
  """Official Show-o keys over an HF LLM state dict: renamed lazily, resized/created tensors precomputed."""

  def __init__(self, hf, made):
    super().__init__()
    self._hf, self._made = hf, made
    for key in hf:
      if not key.endswith("rotary_emb.inv_freq"):  # old LLaMA checkpoints store this recomputable buffer
        dict.__setitem__(self, showo_keys.PREFIX + key, None)
    for key in made:
      dict.__setitem__(self, key, None)

  def __getitem__(self, key):
    if key in self._made:
      return self._made.pop(key)  # handed over once: no second copy stays here
    return self._hf[key[len(showo_keys.PREFIX):]]


def _resized(rows, new_rows, std, rng, bias=False):
  out = np.zeros((new_rows,) + rows.shape[1:], np.float32) if bias else (
      rng.standard_normal((new_rows,) + rows.shape[1:]) * std).astype(np.float32)
  keep = min(len(rows), new_rows)
  out[:keep] = rows[:keep]
  return out


def llm_to_showo(source: str, output: str, config, *, qk_norm: str = "identity", seed: int = 0,
                 overwrite: bool = False):
  """A Phi-1.5 / LLaMA-family HF checkpoint as the backbone of a fresh Show-o.

  Backbone sizes come from the LLM (its tensors and config.json) and override `config.model`'s; the vocabulary
  layout (`config.model.vocab`) stays. Embedding and head rows: the LLM's first `vocab_size` rows are kept
  (as the official `resize_token_embeddings` does: phi-1.5's padding rows 50295…51199 stay), all further rows
  — special tokens, codebook, [MASK] — are N(0, init_std), new head biases 0. `qk_norm="identity"` adds no
  norm (config.model.qk_norm=False), so text logits equal the LLM's; "init" adds a freshly initialised one
  (weight 1, bias 0, as the official recipe does — which changes the logits). An LLM that has QK-norm keeps it.
  """
  hf = streaming.open_state_dict(source)
  desc = getattr(hf, "description", source)
  shapes = hf.shapes()
  family = _hf_family(shapes, desc)
  meta = _official_json(source)
  m = config.model
  heads = int(meta.get("num_attention_heads") or 0)
  if not heads:
    raise CheckpointError(f"{source}: config.json with num_attention_heads is needed beside the weights")
  hidden = shapes["model.embed_tokens.weight"][1]
  head_dim = int(meta.get("head_dim") or hidden // heads)
  layers = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("model.layers."))
  l0 = "model.layers.0."
  m.family, m.hidden_size, m.num_layers, m.num_heads = family, int(hidden), int(layers), heads
  m.head_dim = 0 if head_dim * heads == hidden else head_dim
  m.num_kv_heads = shapes[l0 + "self_attn.k_proj.weight"][0] // head_dim
  m.intermediate_size = shapes[l0 + ("mlp.fc1.weight" if family == "phi" else "mlp.gate_proj.weight")][0]
  m.rope_theta = float(meta.get("rope_theta", 10000.0))
  if family == "phi":
    m.rotary_fraction, m.norm_eps = float(meta.get("partial_rotary_factor", 0.5)), float(meta.get("layer_norm_eps", 1e-5))
    qn = ("self_attn.q_layernorm.weight", "self_attn.q_layernorm.bias", "self_attn.k_layernorm.weight",
          "self_attn.k_layernorm.bias")
  else:
    m.rotary_fraction, m.norm_eps = 1.0, float(meta.get("rms_norm_eps", 1e-6))
    qn = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
    if meta.get("rope_scaling"):
      raise CheckpointError(f"{source}: rope_scaling {meta['rope_scaling']} is not supported")
  has_qk = l0 + qn[0] in shapes
  if qk_norm not in ("identity", "init"):
    raise CheckpointError(f"--qk-norm={qk_norm!r}: use 'identity' or 'init'")
  m.qk_norm = has_qk or qk_norm == "init"
  layout = vocab_lib.VocabLayout.from_config(config)
  m.vocab_size = layout.vocab_size
  config_lib.validate(config)
  rows = shapes["model.embed_tokens.weight"][0]
  if rows < layout.llm_vocab_size:
    raise CheckpointError(f"{desc}: model.embed_tokens.weight has {rows} rows, fewer than "
                          f"config.model.vocab.llm_vocab_size={layout.llm_vocab_size}")
  rng = np.random.default_rng(seed)
  made = {}
  p = showo_keys.PREFIX
  with staged_output(output, overwrite) as tmp:
    made[p + "model.embed_tokens.weight"] = _resized(hf["model.embed_tokens.weight"], m.vocab_size, m.init_std, rng)
    head = hf["lm_head.weight"] if "lm_head.weight" in shapes else hf["model.embed_tokens.weight"]  # tied
    made[p + "lm_head.weight"] = _resized(head, m.vocab_size, m.init_std, rng)
    del head
    if family == "phi":
      bias = hf["lm_head.bias"] if "lm_head.bias" in shapes else np.zeros((rows,), np.float32)
      made[p + "lm_head.bias"] = _resized(bias, m.vocab_size, 0.0, rng, bias=True)
    if m.qk_norm and not has_qk:
      d = config_lib.head_dim(m)
      for i in range(layers):
        for name in qn:
          made[f"{p}model.layers.{i}.{name}"] = (np.ones if name.endswith("weight") else np.zeros)((d,), np.float32)
    view = _ShowoView(hf, made)
    try:
      params, extras = showo_keys.params_from_official(view, config)
    except CheckpointError as e:
      raise CheckpointError(f"{desc}: {e}") from None
    write_checkpoint(tmp, params, config, extras)
  return config


###########################  CLI  ###########################

def _parser():
  parser = argparse.ArgumentParser(prog="python -m showo_jax.convert", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="cmd", required=True)
  imp = sub.add_parser("import", help="official Show-o / MAGVIT-v2 → showo_jax checkpoint")
  imp.add_argument("--input", required=True, help="hub folder, .safetensors, index.json, .npz or .bin")
  imp.add_argument("--output", required=True)
  imp.add_argument("--kind", choices=["showo", "magvit"], default=None, help="default: detected from the keys")
  exp = sub.add_parser("export", help="showo_jax checkpoint → official folder")
  exp.add_argument("--checkpoint", required=True)
  exp.add_argument("--output", required=True)
  llm = sub.add_parser("llm", help="HF Phi / LLaMA-family LLM → fresh Show-o checkpoint")
  llm.add_argument("--input", required=True)
  llm.add_argument("--output", required=True)
  llm.add_argument("--config", required=True, help="e.g. configs/showo.py:size=phi-1.5")
  llm.add_argument("--qk-norm", choices=["identity", "init"], default="identity")
  llm.add_argument("--seed", type=int, default=0, help="for the new embedding and head rows")
  for p in (imp, exp, llm):
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --output")
  return parser


def run(args) -> str:
  if args.cmd == "import":
    kind = args.kind
    if kind is None:
      state = streaming.open_state_dict(args.input)
      kind = detect_kind(state.keys(), getattr(state, "description", args.input))
      del state
    (import_showo if kind == "showo" else import_magvit)(args.input, args.output, overwrite=args.overwrite)
    return f"imported {kind} {args.input} → {args.output}"
  if args.cmd == "export":
    export_showo(args.checkpoint, args.output, overwrite=args.overwrite)
    return f"exported {args.checkpoint} → {args.output}"
  llm_to_showo(args.input, args.output, load_config_file(args.config), qk_norm=args.qk_norm, seed=args.seed,
               overwrite=args.overwrite)
  return f"converted LLM {args.input} → {args.output}"


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    print(run(args))
  except (CheckpointError, config_lib.ConfigError, OSError) as e:
    print(f"convert: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
