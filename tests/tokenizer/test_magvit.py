"""MAGVIT-v2 tokenizer: parity with the official tiny model A, checkpoint import/export, config validation."""

import importlib.util
import json
import pathlib
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo_jax.config import base as config_base
from showo_jax.interop import magvit_keys
from showo_jax.tokenizer import codec
from showo_jax.tokenizer import config as tokenizer_config
from showo_jax.tokenizer import magvit

TOL = 1e-4  # max |ours − official| / max |official|
ROOT = pathlib.Path(__file__).resolve().parents[2]
SHAPES_FILE = ROOT.parent / "shared" / "parity" / "param_shapes_full.json"


def _rel_err(ours, ref):
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def _official(parity):
  return {k[len("param."):]: v for k, v in parity.items() if k.startswith("param.")}


@pytest.fixture(scope="module")
def loaded(parity_magvit):
  # The public loader: its config runs at precision "highest", so that parity also holds on accelerators.
  return magvit_keys.load_official_magvit(_official(parity_magvit))


@pytest.fixture(scope="module")
def encoded(loaded, parity_magvit):
  """Our (z, codes, indices) of the parity photos, NHWC."""
  params, config = loaded
  model = tokenizer_config.magvit_from_config(config)
  images = jnp.transpose(parity_magvit["pixel_values"], (0, 2, 3, 1))  # [3, 32, 32, 3]
  return jax.jit(lambda p, x: model.apply({"params": p}, x, method=magvit.MagvitV2.encode))(params, images)


def _nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


############################  Parity  ############################

def test_encoder_and_quantizer_match(encoded, parity_magvit):
  z, codes, indices = encoded
  assert z.shape == (3, 8, 8, 6) and indices.shape == (3, 8, 8)
  assert _rel_err(_nchw(z), parity_magvit["encoder_out"]) < TOL
  assert _rel_err(_nchw(codes), parity_magvit["quantized"]) < TOL
  assert _rel_err(_nchw(codes), parity_magvit["quantized_from_encode"]) < TOL
  np.testing.assert_array_equal(np.asarray(indices).reshape(3, -1), parity_magvit["indices"])
  np.testing.assert_array_equal(np.asarray(indices).reshape(3, -1), parity_magvit["indices_from_quantize_forward"])


def test_lfq_losses_of_our_latents_match(encoded, loaded, parity_magvit):
  from showo_jax.tokenizer import lfq  # pylint: disable=g-import-not-at-top
  z, codes, _ = encoded
  losses = jax.jit(lambda z, c: lfq.lfq_losses(z, c, loaded[1].lfq))(z, codes)
  np.testing.assert_allclose(losses["quantizer_loss"], parity_magvit["quantizer_loss"], rtol=1e-4)
  np.testing.assert_allclose(losses["entropy_loss"], parity_magvit["entropy_loss"], rtol=1e-4)


def test_codebook_entries(parity_magvit):
  from showo_jax.tokenizer import lfq  # pylint: disable=g-import-not-at-top
  codes = lfq.indices_to_codes(jnp.asarray(parity_magvit["indices"]).reshape(3, 8, 8), 6)
  assert _rel_err(_nchw(codes), parity_magvit["codebook_entries_of_indices"]) < TOL


def test_facade_encode_decode(loaded, parity_magvit):
  params, config = loaded
  indices = codec.magvit_encode(params, config, parity_magvit["pixel_values"])
  assert indices.shape == (3, 64) and jnp.issubdtype(indices.dtype, jnp.integer)
  np.testing.assert_array_equal(indices, parity_magvit["indices"])
  decoded = codec.magvit_decode({"params": params}, config, parity_magvit["indices"])
  assert decoded.shape == (3, 3, 32, 32) and decoded.dtype == jnp.float32
  assert _rel_err(decoded, parity_magvit["decoded"]) < TOL
  grid = codec.magvit_decode(params, config, parity_magvit["decode_grid_indices"])
  assert _rel_err(grid, parity_magvit["decoded_grid"]) < TOL


def test_decode_non_square_grid(loaded, parity_magvit):
  params, config = loaded
  rect = codec.magvit_decode(params, config, parity_magvit["decode_rect_indices"], shape=(4, 16))
  assert rect.shape == (1, 3, 16, 64)
  assert _rel_err(rect, parity_magvit["decoded_rect_4x16"]) < TOL
  with pytest.raises(ValueError, match="shape"):
    codec.magvit_decode(params, config, np.zeros((1, 60), np.int64))  # 60 is no square
  with pytest.raises(ValueError, match="does not hold"):
    codec.magvit_decode(params, config, np.zeros((1, 64), np.int64), shape=(4, 8))
  with pytest.raises(ValueError, match=r"\[0, 64\)"):
    codec.magvit_decode(params, config, np.full((1, 64), 64))


############################  Checkpoints  ############################

def test_round_trip_is_bit_identical(loaded, parity_magvit):
  original = _official(parity_magvit)
  exported = magvit_keys.params_to_official(*loaded)
  assert list(exported) == list(original)  # official order too
  for key, value in original.items():
    assert exported[key].dtype == value.dtype, key
    assert exported[key].shape == value.shape, key
    assert exported[key].tobytes() == value.tobytes(), key


def test_inferred_config_is_the_tiny_preset(loaded, parity_magvit):
  _, inferred = magvit_keys.params_from_official(_official(parity_magvit))
  assert inferred.to_dict() == tokenizer_config.magvit_config("tiny").to_dict()
  assert loaded[1].precision == "highest"  # the public loader's only change
  assert dict(loaded[1].to_dict(), precision="default") == inferred.to_dict()


def test_load_from_files(loaded, parity_magvit, tmp_path):
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  st_numpy.save_file(_official(parity_magvit), str(tmp_path / "pytorch_model.safetensors"))
  for source in (ROOT.parent / "shared" / "parity" / "parity_magvit_tiny_A.npz", tmp_path):
    params, config = magvit_keys.load_official_magvit(source)
    assert config.to_dict() == loaded[1].to_dict()
    jax.tree.map(np.testing.assert_array_equal, params, loaded[0])


def test_init_tree_matches_import(loaded):
  params, config = loaded
  shapes = jax.eval_shape(tokenizer_config.magvit_from_config(config).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert jax.tree.map(lambda x: x.shape, shapes["params"]) == jax.tree.map(lambda x: x.shape, params)


@pytest.mark.parametrize("edit, needle", [
    (lambda sd: sd.pop("decoder.mid.attn_1.k.bias"), "missing key decoder.mid.attn_1.k.bias"),
    (lambda sd: sd.pop("encoder.down.0.block.1.conv1.weight"), "missing key encoder.down.0.block.1.conv1.weight"),
    (lambda sd: sd.update({"encoder.mid.block_1.temb_proj.weight": np.zeros((64, 8), np.float32)}),
     "unexpected key encoder.mid.block_1.temb_proj.weight"),
    (lambda sd: sd.update({"decoder.up.1.block.0.conv2.weight": np.zeros((32, 32, 1, 1), np.float32)}),
     "decoder.up.1.block.0.conv2.weight has shape (32, 32, 1, 1), expected (32, 32, 3, 3)"),
    (lambda sd: sd.update({"quantize.power_vals": np.arange(6)}), "quantize.power_vals"),
    (lambda sd: sd.update({"encoder.down.0.block.0.conv1.weight": np.zeros((48, 32, 3, 3), np.float32)}),
     "encoder.down.0.block.0.conv1.weight"),
])
def test_bad_state_dicts_name_the_key(parity_magvit, edit, needle):
  sd = _official(parity_magvit)
  edit(sd)
  with pytest.raises(magvit_keys.CheckpointError) as info:
    magvit_keys.params_from_official(sd)
  assert needle in str(info.value) and "\n" not in str(info.value)


def test_export_rejects_wrong_tree(loaded):
  params, config = loaded
  flat = flax.traverse_util.flatten_dict(params)
  del flat[("decoder", "conv_out", "bias")]
  with pytest.raises(magvit_keys.CheckpointError, match="decoder/conv_out/bias"):
    magvit_keys.params_to_official(flax.traverse_util.unflatten_dict(flat), config)


def test_attention_levels_and_generic_architecture():
  """Attention inside levels (never in the released model) exports, re-imports and runs the same."""
  config = tokenizer_config.magvit_config("tiny")
  config.encoder.ch_mult = [1, 2, 3]  # 96 channels: no preset
  config.encoder.attn_resolutions = [16]  # encoder level 1
  config.decoder.attn_resolutions = [8]  # decoder level 2 (the coarsest)
  tokenizer_config.validate_magvit(config)
  model = tokenizer_config.magvit_from_config(config)
  # Random values on the init shapes: compiling `init` itself (many truncated-normal draws) takes ~10 s.
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), jnp.float32), shapes)
  sd = magvit_keys.params_to_official(params, config)
  assert "encoder.down.1.attn.0.q.weight" in sd and "decoder.up.2.attn.0.proj_out.bias" in sd
  assert not any(k.startswith(("encoder.down.0.attn", "decoder.up.0.attn")) for k in sd)
  params2, config2 = magvit_keys.params_from_official(sd)
  assert config2.encoder.ch_mult == [1, 2, 3]
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  images = jax.random.uniform(jax.random.key(1), (1, 3, 32, 32), minval=-1, maxval=1)
  np.testing.assert_array_equal(codec.magvit_encode(params, config, images),
                                codec.magvit_encode(params2, config2, images))


def test_official_shapes_and_parameter_count():
  if not SHAPES_FILE.exists():
    pytest.skip(f"{SHAPES_FILE} is absent")
  full = json.loads(SHAPES_FILE.read_text())
  official = {k: tuple(v) for k, v in full["magvitv2"].items()}
  config = tokenizer_config.magvit_config("official")
  layout = {key: shape for key, _, shape, _ in magvit_keys.official_layout(config)}
  assert list(layout) == [k for k in official if k not in magvit_keys.BUFFER_KEYS]
  assert all(official[k] == s for k, s in layout.items())
  assert official["quantize.embedding"] == (8192, 13) and official["quantize.power_vals"] == (13,)
  inferred = magvit_keys.config_from_state_dict({k: jax.ShapeDtypeStruct(s, jnp.float32)
                                                 for k, s in official.items()})
  assert inferred.to_dict() == config.to_dict()
  shapes = jax.eval_shape(tokenizer_config.magvit_from_config(config).init, jax.random.key(0), jnp.zeros((1, 256, 256, 3)))
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)) == full["magvitv2 n_params"] == 95_387_004


def test_bfloat16_activations_run(loaded, parity_magvit):
  params, config = loaded
  config = tokenizer_config.magvit_config("tiny")
  config.dtype = "bfloat16"
  config.precision = "highest"
  decoded = codec.magvit_decode(params, config, parity_magvit["indices"][:1])
  assert decoded.dtype == jnp.float32
  assert _rel_err(decoded, parity_magvit["decoded"][:1]) < 0.1


@pytest.mark.parametrize("precision, want", [("default", "DEFAULT"), ("high", "HIGH"), ("highest", "HIGHEST")])
def test_precision_reaches_every_conv_and_product(precision, want):
  """config.precision (the backbone's config.model.matmul_precision) on every conv and attention einsum of
  the lowered forward + backward (StableHLO names DEFAULT when none is given)."""
  config = tokenizer_config.magvit_config("tiny")
  config.precision = precision
  model = tokenizer_config.magvit_from_config(config)
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
  loss = lambda p, x: jnp.sum(model.apply({"params": p}, x) ** 2)
  text = jax.jit(jax.value_and_grad(loss)).lower(params, images).as_text()
  convs = re.findall(r"stablehlo\.convolution.*precision_config = \[#stablehlo<precision (\w+)>, "
                     r"#stablehlo<precision (\w+)>\]", text)
  dots = re.findall(r"stablehlo\.dot_general.*precision = \[(\w+), (\w+)\]", text)
  assert len(convs) == text.count("stablehlo.convolution") > 0
  assert len(dots) == text.count("stablehlo.dot_general") > 0  # the mid-block attention, forward and backward
  assert set(convs) | set(dots) == {(want, want)}


############################  Config  ############################

def test_presets_validate():
  for size in tokenizer_config.MAGVIT_PRESETS:
    tokenizer_config.validate_magvit(tokenizer_config.magvit_config(size))
  official = tokenizer_config.magvit_config("official")
  assert official.encoder.ch_mult == [1, 2, 2, 4, 4] and official.decoder.num_res_blocks == [4, 4, 3, 4, 3]
  assert official.codebook_bits == 13 and official.resolution == 256
  with pytest.raises(config_base.ConfigError, match="unknown magvit size"):
    tokenizer_config.magvit_config("huge")


@pytest.mark.parametrize("field, value, needle", [
    ("encoder.ch", 48, "config.encoder.ch"),
    ("decoder.ch_mult", [1, 1, 1.5], "config.decoder.ch"),
    ("encoder.num_res_blocks", [2, 1], "config.encoder.num_res_blocks"),
    ("decoder.ch_mult", [1, 1], "config.decoder.num_res_blocks"),
    ("codebook_bits", 31, "config.codebook_bits"),
    ("lfq.entropy_form", "joint", "config.lfq.entropy_form"),
    ("lfq.entropy_temperature", 0.0, "config.lfq.entropy_temperature"),
    ("dtype", "float64", "config.dtype"),
    ("resolution", 30, "config.resolution"),
])
def test_validate_names_the_field(field, value, needle):
  config = tokenizer_config.magvit_config("tiny")
  *parents, leaf = field.split(".")
  node = config
  for name in parents:
    node = node[name]
  node[leaf] = value
  with pytest.raises(config_base.ConfigError, match=needle.replace(".", r"\.")):
    tokenizer_config.validate_magvit(config)


def test_exact_entropy_bit_limit():
  config = tokenizer_config.magvit_config("official")
  config.lfq.entropy_form = "exact"
  tokenizer_config.validate_magvit(config)  # 13 bits: fine
  config.codebook_bits = 21
  with pytest.raises(config_base.ConfigError, match="config.codebook_bits=21"):
    tokenizer_config.validate_magvit(config)


def test_config_file():
  spec = importlib.util.spec_from_file_location("magvit2_config", ROOT / "configs" / "magvit2.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.get_config("").to_dict() == tokenizer_config.magvit_config("tiny").to_dict()
  assert module.get_config("size=official").codebook_bits == 13
  with pytest.raises(config_base.ConfigError):
    module.get_config("bits=3")
