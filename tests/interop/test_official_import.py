"""Official Show-o import guesses nothing: every value the tensor shapes do not show comes from the keyword
arguments, the config.json beside the weights or the released checkpoints' known layout, else a one-line error."""

import json

import numpy as np
import pytest
from safetensors import numpy as st_numpy

from showo_jax import convert
from showo_jax import interop
from showo_jax.config import showo as showo_config
from showo_jax.interop import conversion
from showo_jax.interop import showo_keys
from tests import numpy_reference
from tests import parity_facts

_LLAMA_FIELDS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2}


def _phi_shapes(rows=175, hidden=64, layers=2, head_dim=16, inter=128, qk_norm=True):
  """Shapes only (infer_config reads no values) of an official-layout phi Show-o."""
  p = showo_keys.PREFIX
  s = {p + "model.embed_tokens.weight": (rows, hidden), p + "lm_head.weight": (rows, hidden),
       p + "lm_head.bias": (rows,), p + "model.final_layernorm.weight": (hidden,),
       p + "model.final_layernorm.bias": (hidden,)}
  for i in range(layers):
    l = f"{p}model.layers.{i}."
    for name in ("q_proj", "k_proj", "v_proj", "dense"):
      s[l + f"self_attn.{name}.weight"], s[l + f"self_attn.{name}.bias"] = (hidden, hidden), (hidden,)
    if qk_norm:
      for name in ("q_layernorm", "k_layernorm"):
        s[l + f"self_attn.{name}.weight"] = s[l + f"self_attn.{name}.bias"] = (head_dim,)
    s.update({l + "input_layernorm.weight": (hidden,), l + "input_layernorm.bias": (hidden,),
              l + "mlp.fc1.weight": (inter, hidden), l + "mlp.fc1.bias": (inter,),
              l + "mlp.fc2.weight": (hidden, inter), l + "mlp.fc2.bias": (hidden,)})
  return s


def _llama_state(seed=0, kv_heads=2):
  return numpy_reference.random_llama_state(np.random.default_rng(seed), vocab=175, hidden=64, layers=2, heads=4,
                                            kv_heads=kv_heads, inter=96)


def _folder(path, state, config_json=None):
  path.mkdir()
  st_numpy.save_file(state, str(path / "pytorch_model.safetensors"))
  if config_json is not None:
    (path / "config.json").write_text(json.dumps(config_json))
  return path


def test_llama_numerics_and_special_ids_come_from_config_json(parity_showo, tmp_path):
  state = _llama_state()
  src = _folder(tmp_path / "llama", state, {"_class_name": "Showo", "llm_vocab_size": 100, "codebook_size": 64,
                                            "llm_model_path": "", **_LLAMA_FIELDS})
  params, config = interop.load_official_showo(src)
  m = config.model
  # The old import took the tiny-llama preset's 500000 / 1e-6 and guessed BOS = EOS = 99.
  assert (m.rope_theta, m.norm_eps, m.rotary_fraction) == (10000.0, 1e-5, 1.0)
  assert (m.vocab.llm_vocab_size, m.vocab.codebook_size, m.vocab.bos_id, m.vocab.eos_id) == (100, 64, 1, 2)
  cfg = showo_config.transformer_config(config)
  assert (cfg.rope_theta, cfg.norm_eps) == (10000.0, 1e-5)
  # And the forward uses them: the float64 oracle at theta 10000 agrees, the one at the preset's 500000 does not.
  ids, allowed = parity_showo["input_ids"][:2], parity_showo["attention_allowed"][:2, 0]
  got = interop.showo_logits(params, config, ids, allowed)
  oracle = lambda theta: numpy_reference.forward(state, ids, allowed, family="llama", num_heads=4, num_kv_heads=2,
                                                 rotary_dim=16, theta=theta, eps=1e-5)
  want = oracle(10000.0)
  scale = np.abs(want).max()
  assert np.abs(got - want).max() <= 1e-4 * scale
  assert np.abs(got - oracle(500000.0)).max() > 1e-2 * scale


def test_hugging_face_llm_config_json_is_read_too():
  shapes = {k: v.shape for k, v in _llama_state().items()}
  meta = {"model_type": "llama", "num_attention_heads": 4, "vocab_size": 32000, **_LLAMA_FIELDS}
  config = showo_keys.infer_config(shapes, config_json=meta, codebook_size=64)
  m = config.model
  assert (m.rope_theta, m.norm_eps, m.vocab.bos_id, m.vocab.eos_id) == (10000.0, 1e-5, 1, 2)
  assert (m.vocab.llm_vocab_size, m.vocab.codebook_size) == (100, 64)  # the rest of the 175 rows
  # Keyword arguments override the file.
  config = showo_keys.infer_config(shapes, config_json=meta, codebook_size=64, rope_theta=250000.0, eos_id=7)
  assert (config.model.rope_theta, config.model.vocab.eos_id, config.model.vocab.bos_id) == (250000.0, 7, 1)


def test_bos_and_eos_come_from_config_json():
  meta = {"_class_name": "Showo", "llm_vocab_size": 100, "codebook_size": 64, "bos_token_id": 7, "eos_token_id": 8,
          "rope_theta": 20000.0, "layer_norm_eps": 1e-6, "partial_rotary_factor": 0.25}
  config = showo_keys.infer_config(_phi_shapes(), config_json=meta)
  m = config.model
  assert (m.vocab.bos_id, m.vocab.eos_id) == (7, 8)  # the old guess: 99 = llm_vocab_size - 1 for both
  assert (m.rope_theta, m.norm_eps, m.rotary_fraction, m.head_dim) == (20000.0, 1e-6, 0.25, 16)


def test_undeterminable_llama_names_every_missing_field(tmp_path):
  state = _llama_state()
  with pytest.raises(interop.CheckpointError) as e:
    interop.load_official_showo(_folder(tmp_path / "bare", state))
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith("the llama-family checkpoint does not say its llm_vocab_size, codebook_size, bos_id, "
                        "eos_id, rope_theta, norm_eps (cannot split the 175-row vocabulary into text and image "
                        "tokens): put llm_vocab_size, codebook_size, bos_token_id, eos_token_id, rope_theta, "
                        "rms_norm_eps in the config.json beside the weights"), msg
  assert "rope_theta=" in msg and "load_official_showo" in msg
  # A config.json with only the vocabulary split still leaves the LLM's numerics unknown.
  with pytest.raises(interop.CheckpointError, match=r"does not say its bos_id, eos_id, rope_theta, norm_eps: "
                                                    r"put bos_token_id, eos_token_id, rope_theta, rms_norm_eps in"):
    interop.load_official_showo(_folder(tmp_path / "split_only", state, {
        "_class_name": "Showo", "llm_vocab_size": 100, "codebook_size": 64}))


def test_parity_fixture_layout_is_not_built_in(parity_showo):
  """The tiny 175-row layout is the test fixture's, not a fact the import may know."""
  state = {k[len("param."):]: v for k, v in parity_showo.items() if k.startswith("param.")}
  with pytest.raises(interop.CheckpointError, match=r"does not say its llm_vocab_size, codebook_size, bos_id, "
                                                    r"eos_id, rope_theta, norm_eps, rotary_fraction \(cannot split "
                                                    r"the 175-row vocabulary"):
    interop.load_official_showo(state)
  config = showo_keys.infer_config(state, **parity_facts.TINY_PHI)
  assert (config.model.vocab.llm_vocab_size, config.model.vocab.bos_id, config.model.head_dim) == (100, 99, 16)


def test_convert_import_without_config_json_is_one_line(tmp_path, capsys):
  src = _folder(tmp_path / "bare", _llama_state())
  out = tmp_path / "out"
  assert convert.main(["import", "--input", str(src), "--output", str(out)]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  assert str(src) in err and "rms_norm_eps" in err and "cannot split the 175-row vocabulary" in err, err
  assert not out.exists()


def test_released_layout_stays_recognised():
  config = showo_keys.infer_config(_phi_shapes(rows=58498, hidden=2048, layers=24, head_dim=64, inter=8192))
  m = config.model
  assert (m.vocab.llm_vocab_size, m.vocab.codebook_size, m.vocab.bos_id, m.vocab.eos_id) == (50295, 8192, 50256,
                                                                                               50256)
  assert (m.rope_theta, m.norm_eps, m.rotary_fraction, m.num_heads) == (10000.0, 1e-5, 0.5, 32)
  # llm_model_path "microsoft/phi-1_5" (the official config.json) says the same of any phi-layout vocabulary.
  config = showo_keys.infer_config(_phi_shapes(), config_json={
      "_class_name": "Showo", "llm_model_path": "microsoft/phi-1_5", "llm_vocab_size": 100, "codebook_size": 64,
      "bos_token_id": 99, "eos_token_id": 99})
  assert (config.model.rope_theta, config.model.norm_eps, config.model.vocab.bos_id) == (10000.0, 1e-5, 99)
  # A config.json naming another LLM turns the released facts off.
  with pytest.raises(interop.CheckpointError, match=r"does not say its llm_vocab_size, codebook_size, bos_id, "
                                                    r"eos_id, rope_theta, norm_eps, rotary_fraction \(cannot split "
                                                    r"the 58498-row"):
    showo_keys.infer_config(_phi_shapes(rows=58498), config_json={"_class_name": "Showo",
                                                                  "llm_model_path": "someone/phi-2"})


def test_head_dim_without_qk_norm_is_not_guessed():
  shapes = _phi_shapes(qk_norm=False)
  facts = dict(parity_facts.TINY_PHI)
  with pytest.raises(interop.CheckpointError, match=r"does not say its head_dim: put head_dim \(or "
                                                    r"num_attention_heads\) in the config.json"):
    showo_keys.infer_config(shapes, **facts)
  assert showo_keys.infer_config(shapes, head_dim=32, **facts).model.num_heads == 2
  meta = {"model_type": "phi", "num_attention_heads": 8}
  assert showo_keys.infer_config(shapes, config_json=meta, **facts).model.num_heads == 8  # the old guess: 4


def test_bad_and_contradictory_values_name_the_field():
  facts = dict(parity_facts.TINY_PHI)
  meta = {"_class_name": "Showo", "rope_theta": "fast"}
  with pytest.raises(interop.CheckpointError, match=r"^config.json rope_theta='fast' is not a positive number$"):
    showo_keys.infer_config(_phi_shapes(), config_json=meta, **{**facts, "rope_theta": None})
  with pytest.raises(interop.CheckpointError, match=r"^bos_id=-1 is not a non-negative integer$"):
    showo_keys.infer_config(_phi_shapes(), **{**facts, "bos_id": -1})
  with pytest.raises(interop.CheckpointError, match=r"^head_dim gives head_dim=32, but 'showo.model.layers.0"
                                                    r".self_attn.q_layernorm.weight' is 16 wide$"):
    showo_keys.infer_config(_phi_shapes(), head_dim=32, **facts)
  with pytest.raises(interop.CheckpointError, match=r"^config.json model_type 'llama' does not match the "
                                                    r"phi-family tensors$"):
    showo_keys.infer_config(_phi_shapes(), config_json={"model_type": "llama"}, **facts)
  with pytest.raises(interop.CheckpointError, match=r"^config.json rope_scaling \{'type': 'linear'"):
    showo_keys.infer_config(_phi_shapes(), config_json={"model_type": "phi", "rope_scaling": {"type": "linear"}})
  with pytest.raises(interop.CheckpointError, match=r"^codebook_size=200 leaves no llm_vocab_size in the 175-row"):
    showo_keys.infer_config(_phi_shapes(), **{**facts, "llm_vocab_size": None, "codebook_size": 200})
  with pytest.raises(TypeError, match="rope_base"):
    interop.load_official_showo({}, rope_base=1.0)


def test_export_config_json_carries_what_import_needs():
  shapes = {k: v.shape for k, v in _llama_state().items()}
  config = showo_keys.infer_config(shapes, **{**parity_facts.TINY_LLAMA, "rope_theta": 123.0, "eos_id": 5})
  meta = conversion.official_config_json(config)
  assert (meta["rope_theta"], meta["rms_norm_eps"], meta["bos_token_id"], meta["eos_token_id"]) == (123.0, 1e-6,
                                                                                                     99, 5)
  back = showo_keys.infer_config(shapes, config_json=meta)
  assert back.model.to_dict() == config.model.to_dict()
