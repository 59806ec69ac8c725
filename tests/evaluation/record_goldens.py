"""Records the golden outputs of the evaluation networks from their reference implementations, once:

  python -m venv /tmp/venv_golden && /tmp/venv_golden/bin/pip install torch==2.13.0 torchvision==0.28.0 \
      pytorch-fid==0.3.0 transformers==5.25.0 numpy
  /tmp/venv_golden/bin/python tests/evaluation/record_goldens.py     # from the repo root; writes goldens/*

Weights come from golden_weights.draw (a fixed numpy seed per parameter name), so the tests rebuild them without
torch. Nothing is downloaded: pytorch-fid's weight download is replaced by those drawn weights, and CLIP is a tiny
random configuration of transformers' CLIPModel. The tests (test_eval_networks.py) need only the golden files,
and goldens/versions.json, which records the versions of the libraries that wrote each of them.
"""

import importlib.metadata
import json
import pathlib
import platform
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import golden_weights  # pylint: disable=g-import-not-at-top,wrong-import-position

OUT = pathlib.Path(__file__).resolve().parent / "goldens"
CLIP_CONFIG = {
    "projection_dim": 24,
    "text_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                    "vocab_size": 100, "max_position_embeddings": 16, "hidden_act": "quick_gelu",
                    "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
    "vision_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                      "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
}


PACKAGES = {"torch": "torch", "torchvision": "torchvision", "pytorch-fid": "pytorch_fid",
            "transformers": "transformers", "numpy": "numpy", "pillow": "PIL"}  # distribution: module


def _record_versions(*files):
  """Writes the versions of the libraries in this environment into goldens/versions.json for `files`: a module's
  own __version__ where it was imported (it names the build, e.g. 2.13.0+cpu), else the installed distribution's."""
  path = OUT / "versions.json"
  versions = json.loads(path.read_text()) if path.exists() else {}
  mine = {"python": platform.python_version()}
  for package, module in PACKAGES.items():
    try:
      mine[package] = getattr(sys.modules.get(module), "__version__", None) or importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      mine[package] = None
  versions.update({name: mine for name in files})
  path.write_text(json.dumps(dict(sorted(versions.items())), indent=2) + "\n")


def _import_torchvision():
  """torchvision, for its model definitions only. Its PyPI wheels are CUDA builds: next to the CPU torch its
  compiled detection ops (nms, roi_align) do not load and their meta registrations fail at import; they are
  skipped, and nothing used here calls them."""
  import torch.library  # pylint: disable=g-import-not-at-top
  register_fake = torch.library.register_fake
  try:
    import torchvision  # pylint: disable=g-import-not-at-top,unused-import
  except RuntimeError:
    for name in [m for m in sys.modules if m.startswith("torchvision")]:
      del sys.modules[name]
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    try:
      import torchvision  # pylint: disable=g-import-not-at-top,unused-import,redefined-outer-name
    finally:
      torch.library.register_fake = register_fake
  return sys.modules["torchvision"]


def _float_shapes(module):
  return [(k, tuple(v.shape)) for k, v in module.state_dict().items() if v.dtype.is_floating_point]


def record_inception():
  torchvision = _import_torchvision()
  from pytorch_fid import inception as fid_inception  # pylint: disable=g-import-not-at-top
  shapes = _float_shapes(torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                                         init_weights=False))
  state = {k: torch.from_numpy(v) for k, v in golden_weights.state_dict(shapes).items()}
  fid_inception.load_state_dict_from_url = lambda *a, **k: state  # no download: the drawn weights instead
  net = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  rng = np.random.default_rng(1)
  # Two images of different structure, noise and a smooth ramp (features 48 % apart): with random weights the pool
  # features of two noise images are 2 % apart, too little to check how the features depend on the input.
  yy, xx = np.mgrid[0:48, 0:40]
  ramp = np.stack([yy * 5, xx * 6, (yy + xx) * 2], axis=-1).astype(np.uint8)
  images = np.stack([rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), ramp])  # resized to 299² inside
  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    feats = net(x)[0][:, :, 0, 0].numpy()
    small = torch.from_numpy(rng.uniform(0, 1, (1, 3, 90, 40)).astype(np.float32))
    resized = F.interpolate(small, size=(61, 61), mode="bilinear", align_corners=False)
  np.savez_compressed(OUT / "fid_inception.npz", names=json.dumps(shapes), images=images, features=feats,
                      resize_input=small.permute(0, 2, 3, 1).numpy(), resize_61=resized.permute(0, 2, 3, 1).numpy())
  _record_versions("fid_inception.npz")
  print("fid_inception.npz: features", feats.shape, "mean |f|", float(np.abs(feats).mean()),
        "|f0 - f1| / |f0|", float(np.linalg.norm(feats[0] - feats[1]) / np.linalg.norm(feats[0])))


def record_clip():
  _import_torchvision()  # transformers 5 resizes with it
  import transformers  # pylint: disable=g-import-not-at-top
  config = transformers.CLIPConfig(text_config=CLIP_CONFIG["text_config"], vision_config=CLIP_CONFIG["vision_config"],
                                   projection_dim=CLIP_CONFIG["projection_dim"])
  model = transformers.CLIPModel(config).eval()
  shapes = [(k, s) for k, s in _float_shapes(model)]
  model.load_state_dict({k: torch.from_numpy(v) for k, v in golden_weights.state_dict(shapes).items()}, strict=False)
  rng = np.random.default_rng(2)
  pixels = rng.normal(0, 1, (2, 32, 32, 3)).astype(np.float32)
  ids = rng.integers(3, 90, (3, 16)).astype(np.int64)
  ids[0, 5], ids[1, 15], ids[2, 0] = 99, 99, 99  # the end token (the largest id) at three places
  with torch.no_grad():
    img = model.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    txt = model.get_text_features(input_ids=torch.from_numpy(ids))
  img = getattr(img, "pooler_output", img).numpy()
  txt = getattr(txt, "pooler_output", txt).numpy()
  processor = transformers.CLIPImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16})
  photo = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
  processed = processor(images=[photo], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  np.savez_compressed(OUT / "clip.npz", names=json.dumps(shapes), config=json.dumps(CLIP_CONFIG), pixels=pixels,
                      ids=ids, image_embeds=img, text_embeds=txt, photo=photo, processed=processed)
  _record_versions("clip.npz")
  print("clip.npz: image", img.shape, "text", txt.shape)


def record_torch_files():
  """A state dict in both torch.save formats, with what the reader must get right: a transposed (strided)
  tensor, two tensors sharing one storage at different offsets, a scalar, float64 and int64."""
  rng = np.random.default_rng(4)
  base = torch.from_numpy(rng.normal(size=(4, 6)).astype(np.float32))
  state = {"conv.weight": torch.from_numpy(rng.normal(size=(3, 2, 3, 3)).astype(np.float32)),
           "fc.weight": base.t(), "shared.a": base.view(-1)[2:8], "shared.b": base.view(-1)[10:14].view(2, 2),
           "scale": torch.tensor(1.5), "double": torch.from_numpy(rng.normal(size=(5,))),
           "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64)}
  torch.save(state, OUT / "torch_zip.pth")
  torch.save(state, OUT / "torch_legacy.pth", _use_new_zipfile_serialization=False)
  np.savez(OUT / "torch_files.npz", **{k: v.numpy() for k, v in state.items()})
  _record_versions("torch_zip.pth", "torch_legacy.pth", "torch_files.npz")
  print("torch_zip.pth, torch_legacy.pth:", sorted(state))


RECORDERS = {"inception": record_inception, "clip": record_clip, "torch_files": record_torch_files}

if __name__ == "__main__":
  OUT.mkdir(exist_ok=True)
  for name in sys.argv[1:] or RECORDERS:  # e.g. `record_goldens.py clip` records only clip.npz
    RECORDERS[name]()
