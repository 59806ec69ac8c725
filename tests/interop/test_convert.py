"""`python -m showo_jax.convert`: official ↔ showo_jax checkpoints, LLM backbones, bad input, streaming IO."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors import numpy as st_numpy

from showo_jax import convert
from showo_jax import interop
from showo_jax.config import showo as showo_config
from showo_jax.interop import checkpoints
from showo_jax.interop import conversion
from showo_jax.interop import streaming
from tests import numpy_reference

# The official fields (SPEC §9) and the LLM's, which the official file leaves to its `llm_model_path`; these
# are the parity model's (SPEC §2, tiny_phi_config_A/config.json), and the export writes them too.
_OFFICIAL_JSON = {"_class_name": "Showo", "codebook_size": 64, "llm_model_path": "tiny_phi_config_A",
                  "llm_vocab_size": 100, "load_from_showo": True, "mask_token_id": 174, "num_vq_tokens": 64,
                  "vocab_size": 175, "w_clip_vit": False, "bos_token_id": 99, "eos_token_id": 99,
                  "rope_theta": 10000.0, "layer_norm_eps": 1e-5, "partial_rotary_factor": 0.5, "head_dim": 16}
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(parity):
  return {k[len("param."):]: v for k, v in parity.items() if k.startswith("param.")}


def _official_folder(path, state, config_json=None):
  os.makedirs(path, exist_ok=True)
  st_numpy.save_file(state, os.path.join(path, "pytorch_model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_json or _OFFICIAL_JSON, f)
  return str(path)


def _leftovers(parent):
  return [n for n in os.listdir(parent) if ".converting-" in n or ".replaced-" in n]


@pytest.fixture(scope="module")
def imported(parity_showo, tmp_path_factory):
  """Parity set A as an official folder, imported once: (official folder, checkpoint dir)."""
  root = tmp_path_factory.mktemp("convert")
  src = _official_folder(root / "official", _state(parity_showo))
  out = str(root / "ckpt")
  assert convert.main(["import", "--input", src, "--output", out]) == 0
  return src, out


###########################  import / export parity  ###########################

def test_import_gives_parity_logits(imported, parity_showo):
  params, config = checkpoints.load_checkpoint(imported[1])
  assert (config.model.vocab.llm_vocab_size, config.model.vocab.codebook_size) == (100, 64)
  logits = interop.showo_logits(params, config, parity_showo["input_ids"], parity_showo["attention_allowed"])
  want = parity_showo["logits"]
  assert np.max(np.abs(logits - want)) <= 1e-4 * np.max(np.abs(want))


def test_export_round_trips_bit_for_bit(imported, parity_showo, tmp_path):
  out = tmp_path / "exported"
  assert convert.main(["export", "--checkpoint", imported[1], "--output", str(out)]) == 0
  got = st_numpy.load_file(str(out / conversion.WEIGHTS))  # read by the reference library, not our reader
  want = _state(parity_showo)
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key
  with open(out / "config.json") as f:
    assert json.load(f) == {**_OFFICIAL_JSON, "llm_model_path": "microsoft/phi-1_5"}


@pytest.mark.parametrize("scan", [False, True], ids=["layers", "scanned"])
def test_export_merge_lora_round_trips_through_import(tmp_path, capsys, scan):
  """A LoRA fine-tune exported with --merge-lora and imported back: the merged model's logits equal the adapted
  model's within 1e-5 (float32); without the flag the export is refused in one line (it would drop the
  adapters), and the flag on a checkpoint without adapters too."""
  from showo_jax.training import trainer  # pylint: disable=g-import-not-at-top
  from tests import train_fixtures  # pylint: disable=g-import-not-at-top
  config = train_fixtures.tiny_config(str(tmp_path / "data"), steps=3)
  config.model.scan_layers = scan
  config.model.lora.update(rank=2, alpha=8.0, targets="q,k,v,o,fc1,fc2")
  config.train.trainable = "lora"
  config.optimizer.update(lr=3e-2, warmup_steps=0)  # B far enough from 0 that a dropped adapter would show
  workdir = str(tmp_path / "lora_run")
  trainer.train_and_evaluate(config, workdir)
  capsys.readouterr()  # the training's own output
  params, saved_config = checkpoints.load_checkpoint(workdir)
  ids = np.random.default_rng(0).integers(0, saved_config.model.vocab_size - 1, (2, 24))
  allowed = interop.attention_mask(ids, "t2i", saved_config)
  adapted = interop.showo_logits(params, saved_config, ids, allowed)
  base_config = saved_config.copy_and_resolve_references()
  base_config.model.lora.rank = 0
  base = _without_adapters(params)
  unadapted = interop.showo_logits(base, base_config, ids, allowed)
  assert np.abs(adapted - unadapted).max() > 1e-3 * np.abs(adapted).max()  # the adapters matter

  out = str(tmp_path / "merged")
  _fails(capsys, ["export", "--checkpoint", workdir, "--output", out], "holds LoRA adapters", "--merge-lora")
  assert convert.main(["export", "--checkpoint", workdir, "--output", out, "--merge-lora"]) == 0
  assert not any("lora" in k for k in st_numpy.load_file(os.path.join(out, conversion.WEIGHTS)))
  back = str(tmp_path / "back")
  assert convert.main(["import", "--input", out, "--output", back]) == 0
  merged_params, merged_config = checkpoints.load_checkpoint(back)
  assert int(merged_config.model.lora.rank) == 0
  merged = interop.showo_logits(merged_params, merged_config, ids, allowed)
  assert np.abs(merged - adapted).max() <= 1e-5 * np.abs(adapted).max()
  _fails(capsys, ["export", "--checkpoint", back, "--output", str(tmp_path / "again"), "--merge-lora"],
         "holds no LoRA adapters")


def test_export_refuses_image_conv(tmp_path_factory, tmp_path, capsys):
  """A model with the image-grid convolution trains here, but the official layout has no place for it: export
  is one line, and nothing is written."""
  from tests import train_fixtures  # pylint: disable=g-import-not-at-top
  workdir = train_fixtures.shared_trained_workdir(tmp_path_factory, tmp_path, image_conv=3)
  capsys.readouterr()
  out = str(tmp_path / "official")
  _fails(capsys, ["export", "--checkpoint", workdir, "--output", out], "config.model.image_conv=3")
  assert not os.path.exists(out)


def _without_adapters(params):
  import flax  # pylint: disable=g-import-not-at-top
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({k: v for k, v in flat.items() if k[-1] not in ("lora_a", "lora_b")})


def test_sharded_input_and_clip_projector(parity_showo, tmp_path):
  state = _state(parity_showo)
  rng = np.random.default_rng(0)
  proj = {"mm_projector.0.weight": rng.standard_normal((64, 32)).astype(np.float32),
          "mm_projector.0.bias": rng.standard_normal(64).astype(np.float32),
          "mm_projector.2.weight": rng.standard_normal((64, 64)).astype(np.float32),
          "mm_projector.2.bias": rng.standard_normal(64).astype(np.float32)}
  state.update(proj)
  keys = sorted(state)
  shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
  src = tmp_path / "sharded"
  src.mkdir()
  for name, names in shards.items():
    st_numpy.save_file({k: state[k] for k in names}, str(src / name))
  with open(src / "model.safetensors.index.json", "w") as f:
    json.dump({"weight_map": {k: n for n, names in shards.items() for k in names}}, f)
  with open(src / "config.json", "w") as f:
    json.dump({**_OFFICIAL_JSON, "w_clip_vit": True}, f)
  ckpt, out = str(tmp_path / "ckpt"), tmp_path / "exported"
  assert convert.main(["import", "--input", str(src), "--output", ckpt]) == 0
  _, config = checkpoints.load_checkpoint(ckpt)
  assert list(config.model.extra_keys) == sorted(proj)
  assert convert.main(["export", "--checkpoint", ckpt, "--output", str(out)]) == 0
  got = st_numpy.load_file(str(out / conversion.WEIGHTS))
  assert sorted(got) == keys and all(np.array_equal(got[k], state[k]) for k in keys)
  assert json.load(open(out / "config.json"))["w_clip_vit"] is True


def test_streaming_writer_matches_reference_reader(tmp_path):
  rng = np.random.default_rng(1)
  tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": np.arange(7, dtype=np.int64),
             "c": np.zeros((0, 4), np.float16)}
  path = str(tmp_path / "x.safetensors")
  streaming.write_safetensors(path, [(k, (v.shape, v.dtype)) for k, v in tensors.items()], tensors.items())
  got = st_numpy.load_file(path)
  lazy = streaming.open_state_dict(path)
  for k, v in tensors.items():
    assert np.array_equal(got[k], v) and np.array_equal(lazy[k], v) and lazy.shapes()[k] == v.shape


###########################  bad input  ###########################

def _fails(capsys, argv, *needles):
  assert convert.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  for needle in needles:
    assert needle in err, err
  return err


def test_bad_inputs_give_one_line_errors(parity_showo, tmp_path, capsys):
  state = _state(parity_showo)
  empty = tmp_path / "empty"
  empty.mkdir()
  out = str(tmp_path / "out")
  _fails(capsys, ["import", "--input", str(empty), "--output", out], "no recognisable checkpoint")
  other = tmp_path / "other"
  _official_folder(other, {"vision_model.embeddings.weight": np.zeros((2, 2), np.float32)})
  _fails(capsys, ["import", "--input", str(other), "--output", out], "vision_model.embeddings.weight")
  # Truncated file: the header promises more bytes than the file has.
  trunc = tmp_path / "trunc"
  _official_folder(trunc, state)
  path = trunc / "pytorch_model.safetensors"
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  _fails(capsys, ["import", "--input", str(path), "--output", out], str(path), "truncated")
  path.write_bytes(b"\xff" * 64)
  _fails(capsys, ["import", "--input", str(path), "--output", out], str(path))
  # One tensor of the wrong shape: the error names it, and nothing is left behind.
  bad = dict(state)
  bad["showo.model.layers.1.mlp.fc1.weight"] = np.zeros((96, 64), np.float32)
  _fails(capsys, ["import", "--input", _official_folder(tmp_path / "bad", bad), "--output", out],
         "showo.model.layers.1.mlp.fc1")
  assert not os.path.exists(out) and not _leftovers(tmp_path)
  bin_path = tmp_path / "pytorch_model.bin"
  bin_path.write_bytes(b"not really")
  if "torch" not in sys.modules:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      _fails(capsys, ["import", "--input", str(bin_path), "--output", out], str(bin_path), "torch")
  _fails(capsys, ["export", "--checkpoint", str(empty), "--output", out], str(empty))


def test_existing_checkpoint_needs_overwrite(imported, tmp_path, capsys):
  src, ckpt = imported
  out = tmp_path / "out"
  assert convert.main(["import", "--input", src, "--output", str(out)]) == 0
  (out / "notes.txt").write_text("kept")
  _fails(capsys, ["import", "--input", src, "--output", str(out)], "--overwrite")
  assert convert.main(["import", "--input", src, "--output", str(out), "--overwrite"]) == 0
  assert (out / "notes.txt").read_text() == "kept" and not _leftovers(tmp_path) and not _leftovers(out)
  exp = tmp_path / "exp"
  assert convert.main(["export", "--checkpoint", ckpt, "--output", str(exp)]) == 0
  _fails(capsys, ["export", "--checkpoint", ckpt, "--output", str(exp)], "--overwrite")


def test_cli_exit_status(tmp_path):
  """The real entry point: non-zero exit, one line on stderr, no traceback."""
  proc = subprocess.run([sys.executable, "-m", "showo_jax.convert", "import", "--input", str(tmp_path / "nope"),
                         "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=_ROOT,
                        check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such file or folder"]


###########################  llm  ###########################

def _hf_llm(rng, family, vocab, hidden=64, layers=2, heads=4, kv_heads=4, inter=128):
  """A tiny HF-layout LLM (no QK-norm) and its config.json."""
  n = lambda *s, scale=None: (rng.standard_normal(s) * (scale or 1 / np.sqrt(s[-1]))).astype(np.float32)
  gain = lambda d: (1 + 0.2 * rng.standard_normal(d)).astype(np.float32)
  d = hidden // heads
  s = {"model.embed_tokens.weight": n(vocab, hidden, scale=1.0), "lm_head.weight": n(vocab, hidden)}
  for i in range(layers):
    p = f"model.layers.{i}."
    for name, rows in (("q_proj", heads * d), ("k_proj", kv_heads * d), ("v_proj", kv_heads * d)):
      s[p + f"self_attn.{name}.weight"] = n(rows, hidden)
      if family == "phi":
        s[p + f"self_attn.{name}.bias"] = 0.1 * n(rows, scale=1.0)
    s[p + "input_layernorm.weight"] = gain(hidden)
    if family == "phi":
      s.update({p + "input_layernorm.bias": 0.1 * n(hidden, scale=1.0), p + "self_attn.dense.weight": n(hidden, hidden),
                p + "self_attn.dense.bias": 0.1 * n(hidden, scale=1.0), p + "mlp.fc1.weight": n(inter, hidden),
                p + "mlp.fc1.bias": 0.1 * n(inter, scale=1.0), p + "mlp.fc2.weight": n(hidden, inter),
                p + "mlp.fc2.bias": 0.1 * n(hidden, scale=1.0)})
    else:
      s.update({p + "post_attention_layernorm.weight": gain(hidden), p + "self_attn.o_proj.weight": n(hidden, hidden),
                p + "mlp.gate_proj.weight": n(inter, hidden), p + "mlp.up_proj.weight": n(inter, hidden),
                p + "mlp.down_proj.weight": n(hidden, inter)})
  if family == "phi":
    s.update({"model.final_layernorm.weight": gain(hidden), "model.final_layernorm.bias": 0.1 * n(hidden, scale=1.0),
              "lm_head.bias": 0.1 * n(vocab, scale=1.0)})
    meta = {"model_type": "phi", "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "partial_rotary_factor": 0.5, "rope_theta": 10000.0, "layer_norm_eps": 1e-5}
  else:
    s["model.norm.weight"] = gain(hidden)
    meta = {"model_type": "llama", "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "rope_theta": 500000.0, "rms_norm_eps": 1e-6}
  return s, meta


def _reference_no_qk_norm(state, ids, *, family, heads, kv_heads, rotary_dim, theta, eps):
  """float64 causal forward of an HF-layout LLM without QK-norm (numpy_reference.forward always applies it)."""
  ln, rms, rope = (numpy_reference._layer_norm, numpy_reference._rms_norm,  # pylint: disable=protected-access
                   numpy_reference._rope)  # pylint: disable=protected-access
  g = lambda k: np.asarray(state[k], np.float64)
  lin = lambda h, name, bias: h @ g(name + ".weight").T + (g(name + ".bias") if bias else 0.0)
  x = g("model.embed_tokens.weight")[ids]
  b, l, e = x.shape
  d = e // heads
  pos = np.broadcast_to(np.arange(l, dtype=np.float64), (b, l))
  causal = np.tril(np.ones((l, l), bool))
  phi = family == "phi"
  for i in range(1 + max(int(k.split(".")[2]) for k in state if k.startswith("model.layers."))):
    p = f"model.layers.{i}."
    h = ln(x, g(p + "input_layernorm.weight"), g(p + "input_layernorm.bias"), eps) if phi else rms(
        x, g(p + "input_layernorm.weight"), eps)
    split = lambda t, n: t.reshape(b, l, n, d).transpose(0, 2, 1, 3)
    q = rope(split(lin(h, p + "self_attn.q_proj", phi), heads), pos, rotary_dim, theta)
    k = rope(split(lin(h, p + "self_attn.k_proj", phi), kv_heads), pos, rotary_dim, theta)
    v = split(lin(h, p + "self_attn.v_proj", phi), kv_heads)
    k, v = np.repeat(k, heads // kv_heads, 1), np.repeat(v, heads // kv_heads, 1)
    w = np.where(causal, q @ k.transpose(0, 1, 3, 2) / np.sqrt(d), -np.inf)
    w = np.exp(w - w.max(-1, keepdims=True))
    a = ((w / w.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, l, e)
    if phi:
      f = lin(h, p + "mlp.fc1", True)
      gelu = 0.5 * f * (1 + np.tanh(np.sqrt(2 / np.pi) * (f + 0.044715 * f**3)))
      x = x + lin(a, p + "self_attn.dense", True) + lin(gelu, p + "mlp.fc2", True)
    else:
      x = x + lin(a, p + "self_attn.o_proj", False)
      h2 = rms(x, g(p + "post_attention_layernorm.weight"), eps)
      gate = lin(h2, p + "mlp.gate_proj", False)
      x = x + lin(gate / (1 + np.exp(-gate)) * lin(h2, p + "mlp.up_proj", False), p + "mlp.down_proj", False)
  if phi:
    return lin(ln(x, g("model.final_layernorm.weight"), g("model.final_layernorm.bias"), eps), "lm_head", True)
  return lin(rms(x, g("model.norm.weight"), eps), "lm_head", False)


@pytest.mark.parametrize("family", ["phi", "llama"])
def test_llm_backbone_keeps_text_logits(family, tmp_path):
  rng = np.random.default_rng(7)
  rows = 104  # 100 text tokens + 4 padding rows, like phi-1.5's 51200 rows for 50295 tokens
  state, meta = _hf_llm(rng, family, rows, kv_heads=4 if family == "phi" else 2)
  src = tmp_path / "hf"
  src.mkdir()
  st_numpy.save_file(state, str(src / "model.safetensors"))
  (src / "config.json").write_text(json.dumps(meta))
  out = str(tmp_path / "ckpt")
  size = "tiny" if family == "phi" else "tiny-llama"
  argv = ["llm", "--input", str(src), "--output", out, "--config", os.path.join(_ROOT, f"configs/showo.py:size={size}")]
  assert convert.main(argv) == 0
  params, config = checkpoints.load_checkpoint(out)
  assert config.model.vocab_size == 175 and not config.model.qk_norm
  ids = rng.integers(0, 100, (2, 12))
  allowed = np.tril(np.ones((12, 12), bool))[None].repeat(2, 0)
  got = interop.showo_logits(params, config, ids, allowed)
  want = _reference_no_qk_norm(state, ids, family=family, heads=4, kv_heads=meta["num_key_value_heads"],
                               rotary_dim=showo_config.rotary_dim(config.model), theta=meta["rope_theta"],
                               eps=config.model.norm_eps)
  assert np.max(np.abs(got[..., :rows] - want)) <= 1e-4 * np.max(np.abs(want))
  emb = params["embed"]["embedding"]
  assert np.array_equal(emb[:rows], state["model.embed_tokens.weight"])
  assert 0.01 < np.std(emb[rows:]) < 0.03  # the new rows: N(0, 0.02)


###########################  MAGVIT import, then sampling from the imported pair  ###########################

def test_magvit_import_and_sampling(imported, parity_magvit, parity_json, tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from showo_jax import sample  # pylint: disable=g-import-not-at-top
  from showo_jax.data import text_tokenizer  # pylint: disable=g-import-not-at-top
  from showo_jax.interop import magvit_keys  # pylint: disable=g-import-not-at-top
  from showo_jax.tokenizer import trainer as tokenizer_trainer  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  src = tmp_path / "magvit"
  src.mkdir()
  st_numpy.save_file(_state(parity_magvit), str(src / "pytorch_model.safetensors"))
  tok = str(tmp_path / "tokenizer")
  assert convert.main(["import", "--input", str(src), "--output", tok]) == 0
  params, config = tokenizer_trainer.load_tokenizer(tok)
  want, _ = magvit_keys.load_official_magvit(str(src))
  assert config.codebook_bits == 6
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)))
  text = tmp_path / "tokenizer.json"
  text.write_text(text_tokenizer.word_level_tokenizer_json(parity_json["tiny_showo"]["tokenizer_vocab"]))
  common = ["--checkpoint", imported[1], "--tokenizer", tok, "--text-tokenizer", str(text)]
  grid = tmp_path / "t2i.png"
  assert sample.main(["t2i", *common, "--prompt", "a photo of a cat", "--steps", "2", "--out", str(grid)]) == 0
  assert Image.open(grid).size[0] >= 32
  photo = tmp_path / "photo.png"
  Image.fromarray(parity_magvit["images_u8"][0]).save(photo)
  capsys.readouterr()
  assert sample.main(["mmu", *common, "--image", str(photo), "--question", "what is this",
                      "--max-new-tokens", "3", "--json"]) == 0
  answers = json.loads(capsys.readouterr().out)
  assert len(answers) == 1 and isinstance(answers[0]["answer"], str)
