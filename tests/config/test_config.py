"""Config presets, validation errors that name the field, command-line overrides, bad checkpoints."""

import pathlib

from absl import flags
import numpy as np
import pytest

from showo_jax import interop
from showo_jax.config import base as config_base
from showo_jax.config import showo as showo_config
from showo_jax.interop import showo_keys
from showo_jax.models import vocab as vocab_lib
from tests import parity_facts

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_official_phi_presets_match_spec():
  for res, tokens in ((256, 256), (512, 1024)):
    c = showo_config.validate(showo_config.showo_config("phi-1.5", res=res))
    assert c.data.num_image_tokens == tokens and c.data.max_text_len == 128
    assert showo_config.seq_len(c) == 128 + tokens + 3
    assert (c.model.hidden_size, c.model.num_layers, c.model.num_heads, c.model.intermediate_size) == (
        2048, 24, 32, 8192)
    assert showo_config.rotary_dim(c.model) == 32 and c.model.vocab_size == 58498


def test_official_vocabulary_layout():
  layout = showo_config.vocab_layout(showo_config.showo_config("phi-1.5"))
  assert (layout.pad_id, layout.soi_id, layout.eoi_id, layout.sov_id, layout.eov_id) == (
      50295, 50296, 50297, 50298, 50299)
  assert (layout.t2i_id, layout.mmu_id, layout.t2v_id, layout.v2v_id, layout.lvg_id) == (
      50300, 50301, 50302, 50303, 50304)
  assert (layout.image_offset, layout.mask_id, layout.vocab_size) == (50305, 58497, 58498)
  np.testing.assert_array_equal(layout.image_ids([0, 8191]), [50305, 58496])
  with pytest.raises(ValueError, match="image code 8192"):
    layout.image_ids([8192])


def test_tiny_layout_matches_parity(parity_json):
  layout = showo_config.vocab_layout(showo_config.showo_config("tiny"))
  ids = parity_json["tiny_showo"]["special_token_ids"]
  for token in vocab_lib.SPECIAL_TOKENS:
    assert layout.special_id(token) == ids[token]
  assert layout.pad_id == ids["<|pad|>"] and layout.bos_id == ids["<|sot|>"]
  assert layout.image_offset == parity_json["tiny_showo"]["image_token_offset"]
  assert layout.mask_id == parity_json["tiny_showo"]["mask_token_id"]


@pytest.mark.parametrize("field,value,message", [
    ("model.num_heads", 5, "config.model.num_heads=5 does not divide config.model.hidden_size=64"),
    ("model.num_kv_heads", 3, "config.model.num_kv_heads=3 does not divide config.model.num_heads=4"),
    ("model.vocab_size", 170, "config.model.vocab_size=170 is smaller than the vocabulary layout"),
    ("model.family", "gpt", "config.model.family='gpt'"),
    ("model.dtype", "float8", "config.model.dtype='float8'"),
    ("model.remat_policy", "some", "config.model.remat_policy='some'"),
    ("model.rotary_fraction", 0.1, "config.model.rotary_fraction=0.1"),
    ("loss.mask_schedule", "cosin", "config.loss.mask_schedule"),
    ("loss.cond_dropout_prob", -0.1, "config.loss.cond_dropout_prob=-0.1"),
    ("data.max_text_len", 0, "config.data.max_text_len=0"),
    ("model.vocab.bos_id", 100, "bos_id=100 is not a text id"),
    ("model.image_conv", 2, "config.model.image_conv=2 must be 0 (off) or an odd kernel size"),
])
def test_validate_names_the_bad_field(field, value, message):
  config = showo_config.showo_config("tiny")
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(config_base.ConfigError) as e:
    showo_config.validate(config)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_image_conv_needs_a_square_grid():
  config = showo_config.showo_config("tiny")
  config.model.image_conv = 3
  showo_config.validate(config)
  assert showo_config.transformer_config(config).image_grid == 8
  config.data.num_image_tokens = 72
  with pytest.raises(config_base.ConfigError, match="image_conv=3 needs a square token grid; config.data.num_image_tokens=72 is not a square"):
    showo_config.validate(config)


def _parse_flags(argv):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


def test_command_line_overrides():
  showo_py = ROOT / "configs" / "showo.py"
  c = showo_config.validate(_parse_flags([
      "prog", f"--config={showo_py}:size=phi-1.5,res=512", "--config.model.num_layers=3",
      "--config.loss.lm_coeff=0.25", "--config.model.scan_layers=True"]))
  assert (c.model.num_layers, c.loss.lm_coeff, c.model.scan_layers) == (3, 0.25, True)
  assert c.data.num_image_tokens == 1024
  with pytest.raises(Exception, match="unknown config arg 'sz'"):
    _parse_flags(["prog", f"--config={showo_py}:sz=tiny"])
  with pytest.raises(config_base.ConfigError, match="config.model.num_heads=3 does not divide"):
    showo_config.validate(_parse_flags(["prog", f"--config={showo_py}", "--config.model.num_heads=3"]))


def test_parse_arg_types_and_errors():
  args = config_base.parse_arg("size=phi-1.5,res=512,runlocal=true", size="tiny", res=256, runlocal=False)
  assert (args.size, args.res, args.runlocal) == ("phi-1.5", 512, True)
  with pytest.raises(config_base.ConfigError, match="unknown config arg 'colour'"):
    config_base.parse_arg("colour=red", size="tiny")


def _state(parity):
  return {k[len("param."):]: v for k, v in parity.items() if k.startswith("param.")}


def test_bad_state_dicts_name_the_key(parity_showo):
  state = _state(parity_showo)
  missing = dict(state)
  del missing["showo.model.layers.1.mlp.fc2.bias"]
  with pytest.raises(interop.CheckpointError, match=r"missing key 'showo.model.layers.1.mlp.fc2.bias'"):
    interop.load_official_showo(missing, **parity_facts.TINY_PHI)
  extra = dict(state, **{"showo.model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros(4, np.float32)})
  with pytest.raises(interop.CheckpointError, match=r"unexpected key 'showo.model.layers.0.self_attn.rotary_emb"):
    interop.load_official_showo(extra, **parity_facts.TINY_PHI)
  bad = dict(state, **{"showo.model.layers.0.mlp.fc1.bias": np.zeros(127, np.float32)})
  with pytest.raises(interop.CheckpointError, match=r"key 'showo.model.layers.0.mlp.fc1.bias' has shape \(127,\)"):
    interop.load_official_showo(bad, **parity_facts.TINY_PHI)


def test_checkpoint_files_and_bad_ids(parity_showo, tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  state = _state(parity_showo)
  save_file(state, str(tmp_path / "pytorch_model.safetensors"))
  params, config = interop.load_official_showo(tmp_path, **parity_facts.TINY_PHI)  # a hub-layout folder
  ref_params, _ = interop.load_official_showo(state, **parity_facts.TINY_PHI)
  np.testing.assert_array_equal(params["lm_head"]["kernel"], ref_params["lm_head"]["kernel"])
  ids = parity_showo["input_ids"].copy()
  ids[1, 5] = 175
  with pytest.raises(ValueError, match=r"token id 175 at input_ids\[1, 5\] is outside the vocabulary"):
    interop.showo_logits(params, config, ids, parity_showo["attention_allowed"])
  (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
  with pytest.raises(interop.CheckpointError, match="broken.safetensors: unreadable safetensors"):
    interop.load_official_showo(tmp_path / "broken.safetensors")
  with pytest.raises(interop.CheckpointError, match="no such file"):
    interop.load_official_showo(tmp_path / "nothing.npz")


def test_vocab_split_comes_from_official_config_json(parity_showo, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  np.savez(tmp_path / "weights.npz", **_state(parity_showo))
  (tmp_path / "config.json").write_text(json.dumps(
      {"_class_name": "Showo", "llm_vocab_size": 100, "codebook_size": 64, "num_vq_tokens": 64,
       "bos_token_id": 99, "eos_token_id": 99, "rope_theta": 10000.0, "layer_norm_eps": 1e-5,
       "partial_rotary_factor": 0.5}))
  _, config = interop.load_official_showo(tmp_path / "weights.npz")
  assert (config.model.vocab.llm_vocab_size, config.model.vocab.codebook_size) == (100, 64)
  state = dict(_state(parity_showo))
  with pytest.raises(interop.CheckpointError, match="cannot split the 300-row vocabulary"):
    showo_keys.infer_config({**state, "showo.model.embed_tokens.weight": np.zeros((300, 64), np.float32)})
