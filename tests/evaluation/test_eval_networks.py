"""The FID InceptionV3 and CLIP towers in Flax against golden outputs of their reference implementations
(pytorch-fid 0.3.0's InceptionV3, transformers' CLIPModel), recorded once by record_goldens.py with weights drawn
from a fixed numpy seed (golden_weights.py); the weights go through the same file loaders as real ones.
goldens/versions.json names the library versions that wrote each golden; a mismatch shows them."""

import json
import os
import pathlib
import pickle

import numpy as np
import pytest
import safetensors.numpy

from showo_jax.evaluation import clip
from showo_jax.evaluation import inception
from showo_jax.evaluation import torch_pickle
from showo_jax.evaluation import weight_files
from tests.evaluation import golden_weights

GOLDENS = pathlib.Path(__file__).resolve().parent / "goldens"


def _golden(name):
  with np.load(GOLDENS / name) as f:
    return {k: f[k] for k in f.files}


def _recorded_with(name) -> str:
  versions = json.loads((GOLDENS / "versions.json").read_text())[name]
  return f"{name} was recorded with " + ", ".join(f"{k} {v}" for k, v in versions.items())


def test_every_golden_names_the_versions_that_wrote_it():
  versions = json.loads((GOLDENS / "versions.json").read_text())
  files = sorted(p.name for p in GOLDENS.iterdir() if p.name != "versions.json")
  assert sorted(versions) == files
  needs = {"fid_inception.npz": ("pytorch-fid", "torchvision"), "clip.npz": ("transformers",)}
  for name in files:
    for package in ("torch", "numpy") + needs.get(name, ()):
      assert versions[name].get(package), f"{name}: no {package} version in versions.json"


def _assert_inputs_told_apart(got, want, name):
  """The golden rows (outputs of different inputs) differ by at least 30 %, and got's differences from row 0 are
  want's to 0.1 % of their size: a network that ignores its input (or most of it) fails here."""
  for i in range(1, len(want)):
    delta_want, delta_got = want[i] - want[0], got[i] - got[0]
    size = np.linalg.norm(delta_want)
    assert size > 0.3 * np.linalg.norm(want[0]), f"{_recorded_with(name)}: its inputs {i} and 0 hardly differ"
    error = np.linalg.norm(delta_got - delta_want) / size
    assert error < 1e-3, f"output {i} - output 0 is off by {error:.1%} of its size; {_recorded_with(name)}"


@pytest.fixture(scope="module")
def fid_golden():
  return _golden("fid_inception.npz")


@pytest.fixture(scope="module")
def inception_file(fid_golden, tmp_path_factory):
  path = tmp_path_factory.mktemp("inception") / "pt_inception.safetensors"
  safetensors.numpy.save_file(golden_weights.state_dict(json.loads(str(fid_golden["names"]))), str(path))
  return str(path)


def test_fid_inception_features_equal_pytorch_fid(fid_golden, inception_file):
  """uint8 images 48×40 → resized to 299² → pool features, as pytorch-fid computes them. Would fail on a wrong
  pool branch (the padding counted in an average, Mixed_7c average-pooled), a transposed kernel or BN eps."""
  variables = inception.load_weights(inception_file)
  got = np.asarray(inception.features(variables, fid_golden["images"]))
  want = fid_golden["features"]
  assert got.shape == (2, 2048)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max(),
                             err_msg=_recorded_with("fid_inception.npz"))
  assert np.abs(want).mean() > 0.1  # features of O(1): a pool branch average- instead of max-pooled moves them by ~5
  _assert_inputs_told_apart(got, want, "fid_inception.npz")  # images of noise and of a smooth ramp


def test_fid_resize_is_torch_bilinear_without_antialias(fid_golden):
  got = np.asarray(inception.preprocess(fid_golden["resize_input"], size=61))
  np.testing.assert_allclose(got, 2.0 * fid_golden["resize_61"] - 1.0, atol=1e-5)


def test_inception_weights_of_the_wrong_shape_are_one_line_errors(fid_golden, tmp_path):
  state = golden_weights.state_dict(json.loads(str(fid_golden["names"])))
  state["Mixed_6b.branch7x7_2.conv.weight"] = state["Mixed_6b.branch7x7_2.conv.weight"][:, :, :, :3]
  bad = tmp_path / "bad.safetensors"
  safetensors.numpy.save_file(state, str(bad))
  with pytest.raises(ValueError, match=r"Mixed_6b.branch7x7_2.conv.weight has shape \(128, 128, 1, 3\), "
                                       r"the FID InceptionV3 needs \(128, 128, 1, 7\)"):
    inception.load_weights(str(bad))
  del state["Mixed_6b.branch7x7_2.conv.weight"]
  safetensors.numpy.save_file(state, str(bad))
  with pytest.raises(ValueError, match=r"missing Mixed_6b.branch7x7_2.conv.weight"):
    inception.load_weights(str(bad))
  (tmp_path / "w.pth").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"w.pth: not a readable torch.save state dict"):
    inception.load_weights(str(tmp_path / "w.pth"))


@pytest.mark.parametrize("name", ["torch_zip.pth", "torch_legacy.pth"])
def test_torch_save_files_read_without_torch(name):
  """Both torch.save formats (recorded by torch itself): strided and storage-sharing tensors, a scalar, dtypes."""
  got = weight_files.read_state_dict(str(GOLDENS / name))
  want = _golden("torch_files.npz")
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
    np.testing.assert_array_equal(got[key], value)


def test_a_weights_pickle_cannot_run_code(tmp_path):
  class Exploit:
    def __reduce__(self):
      return (os.system, ("touch " + str(tmp_path / "ran"),))
  data = b"".join(pickle.dumps(x, protocol=2) for x in (torch_pickle.LEGACY_MAGIC, 1001, {}, Exploit()))
  (tmp_path / "evil.pth").write_bytes(data)
  with pytest.raises(ValueError, match=r"evil.pth: not a readable torch.save state dict .*system is not allowed"):
    weight_files.read_state_dict(str(tmp_path / "evil.pth"))
  assert not (tmp_path / "ran").exists()


@pytest.fixture(scope="module")
def clip_golden():
  return _golden("clip.npz")


def _clip_params(golden):
  config = clip.ClipConfig.from_json(str(golden["config"]))
  state = golden_weights.state_dict(json.loads(str(golden["names"])))
  return config, clip.params_from_hf(state, config, "golden"), state


def test_clip_towers_equal_transformers(clip_golden):
  """Would fail on a wrong pooling position (the end token is at 3 different places), a missing causal mask,
  pre_layrnorm skipped, gelu for quick_gelu, or an untransposed projection."""
  config, params, _ = _clip_params(clip_golden)
  model = clip.CLIP(config)
  img = model.apply({"params": params}, clip_golden["pixels"], method=clip.CLIP.encode_image)
  txt = model.apply({"params": params}, clip_golden["ids"].astype(np.int32), method=clip.CLIP.encode_text)
  np.testing.assert_allclose(np.asarray(img), clip_golden["image_embeds"], rtol=1e-4, atol=1e-5,
                             err_msg=_recorded_with("clip.npz"))
  np.testing.assert_allclose(np.asarray(txt), clip_golden["text_embeds"], rtol=1e-4, atol=1e-5,
                             err_msg=_recorded_with("clip.npz"))
  _assert_inputs_told_apart(np.asarray(img), clip_golden["image_embeds"], "clip.npz")
  _assert_inputs_told_apart(np.asarray(txt), clip_golden["text_embeds"], "clip.npz")


def test_clip_preprocessing_equals_clip_image_processor(clip_golden):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pre = clip.Preprocess(size=20, crop=16)
  got = pre(Image.fromarray(clip_golden["photo"]))
  # In 8-bit levels: transformers 5 resizes with torchvision's bicubic, which rounds the odd pixel one level away
  # from PIL's (the original CLIP's); a wrong size, crop offset or normalization moves most pixels.
  std = np.asarray(pre.std)
  diff = np.abs((got - clip_golden["processed"][0]) * std) * 255.0
  assert diff.max() < 1.01 and np.mean(diff > 0.01) < 0.01, (diff.max(), np.mean(diff > 0.01))


def test_clip_weights_of_the_wrong_shape_are_one_line_errors(clip_golden):
  config, _, state = _clip_params(clip_golden)
  state = dict(state)
  state["text_projection.weight"] = state["text_projection.weight"][:-1]
  with pytest.raises(ValueError, match=r"text_projection/kernel has shape \(32, 23\)"):
    clip.params_from_hf(state, config, "w")
  state["vision_model.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"unexpected entry 'vision_model.extra.weight'"):
    clip.params_from_hf(state, config, "w")
