"""FID and CLIP score of image folders (`evaluate fid`, `evaluate clipscore`).

FID follows pytorch-fid: every image under the folder as RGB in [0, 1], resized to 299² bilinearly inside the
network, pool features of the FID InceptionV3, mean and covariance in float64, the Fréchet distance. CLIP score
is torchmetrics' definition: 100 · max(cos(image, caption), 0), averaged over the pairs (Hessel et al.'s
CLIP-S is 2.5 · max(cos, 0)). Captions come from GenEval folders (each sample's prompt, in its folder's
metadata.jsonl), else from captions.jsonl or a `.txt` beside each image.
"""

import io
import json

import numpy as np
from PIL import Image

from showo_jax.common import paths
from showo_jax.data import images as images_lib
from showo_jax.evaluation import clip
from showo_jax.evaluation import frechet
from showo_jax.evaluation import inception


def _open_rgb(folder: str, rel: str) -> Image.Image:
  path = paths.join(folder, rel)
  try:
    with Image.open(io.BytesIO(paths.read_bytes(path))) as image:
      return image.convert("RGB")
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable image ({e})") from None


def _batches(items, size):
  for k in range(0, len(items), size):
    yield items[k:k + size]


def inception_features(folder: str, variables, *, batch_size: int = 50, log=print) -> np.ndarray:
  """[N, 2048] pool features of every image under `folder`, read batch by batch (30k images never sit in memory
  at once). A batch holds consecutive images of one size and is padded to `batch_size`, so that each image size
  compiles once."""
  files = images_lib.list_images(folder)
  if not files:
    raise FileNotFoundError(f"{folder}: no image files ({', '.join(images_lib.IMAGE_EXTENSIONS)})")
  out = np.zeros((len(files), inception.FEATURES), np.float64)
  batch, start = [], 0

  def flush():
    x = np.stack(batch)
    pad = batch_size - len(x)
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    out[start:start + len(batch)] = np.asarray(inception.features(variables, x))[:len(batch)]

  for i, rel in enumerate(files):
    image = np.asarray(_open_rgb(folder, rel))
    if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
      flush()
      batch, start = [], i
      if start // batch_size % 20 == 0:
        log(f"fid: {folder}: {start}/{len(files)} images")
    batch.append(image)
  flush()
  return out


def folder_statistics(spec: str, variables, *, batch_size: int = 50, log=print):
  """(mu, sigma) of a folder, or those stored in a .npz."""
  if spec.endswith(".npz"):
    if not paths.isfile(spec):
      raise FileNotFoundError(f"{spec}: no such statistics file")
    return frechet.load_statistics(spec)
  if not paths.isdir(spec):
    raise FileNotFoundError(f"{spec}: no such image folder")
  return frechet.statistics(inception_features(spec, variables, batch_size=batch_size, log=log))


def fid(real: str, fake: str, inception_weights: str, *, save_real_stats: str = "", batch_size: int = 50,
        log=print) -> dict:
  for name, spec in (("--real", real), ("--fake", fake)):
    if not (paths.isfile(spec) if spec.endswith(".npz") else paths.isdir(spec)):
      raise FileNotFoundError(f"{name} {spec}: no such {'statistics file' if spec.endswith('.npz') else 'folder'}")
  if fake.endswith(".npz"):
    raise ValueError(f"--fake {fake}: give the generated images' folder")
  for name, spec in (("--real", real), ("--fake", fake)):
    if not spec.endswith(".npz") and not images_lib.list_images(spec):
      raise FileNotFoundError(f"{name} {spec}: no image files ({', '.join(images_lib.IMAGE_EXTENSIONS)})")
  variables = inception.load_weights(inception_weights)
  mu_r, sigma_r = folder_statistics(real, variables, batch_size=batch_size, log=log)
  if save_real_stats:
    frechet.save_statistics(save_real_stats, mu_r, sigma_r)
  features = inception_features(fake, variables, batch_size=batch_size, log=log)
  mu_f, sigma_f = frechet.statistics(features)
  return {"fid": frechet.distance(mu_r, sigma_r, mu_f, sigma_f), "fake_images": len(features), "real": real,
          "fake": fake}


def captioned_images(folder: str) -> list:
  """[(relative path, caption)] of a GenEval folder tree or a captioned image folder; ValueError naming the
  first image without a caption."""
  if not paths.isdir(folder):
    raise FileNotFoundError(f"--folder {folder}: no such folder")
  prompts = {}
  for name in paths.listdir(folder):
    meta = paths.join(folder, name, "metadata.jsonl")
    if paths.isfile(meta):
      prompts[name] = json.loads(paths.read_text(meta).splitlines()[0])["prompt"]
  if prompts:  # GenEval layout: NNNNN/samples/*.png, the caption is the prompt
    pairs = [(f"{name}/samples/{rel}", prompt) for name, prompt in sorted(prompts.items())
             if paths.isdir(paths.join(folder, name, "samples"))
             for rel in images_lib.list_images(paths.join(folder, name, "samples"))]
    if not pairs:
      raise FileNotFoundError(f"--folder {folder}: GenEval folders with no images in their samples/")
    return pairs
  pairs = []
  for rel, fields in images_lib.folder_items(folder):
    caption = fields.get("caption")
    if not isinstance(caption, str):
      raise ValueError(f"{paths.join(folder, rel)}: no caption (a .txt beside it, or captions.jsonl)"
                       if caption is None else f"{paths.join(folder, rel)}: caption is not UTF-8 text")
    pairs.append((rel, caption))
  return pairs


def clip_score(folder: str, clip_folder: str, *, batch_size: int = 32, log=print) -> dict:
  pairs = captioned_images(folder)
  model = clip.ClipModel(clip_folder)
  scores = []
  for k, batch in enumerate(_batches(pairs, batch_size)):
    n = len(batch)
    batch = batch + [batch[-1]] * (batch_size - n)  # one compile per tower: the last batch is padded
    image = model.image_embeddings([_open_rgb(folder, rel) for rel, _ in batch])[:n]
    text = model.text_embeddings([caption for _, caption in batch])[:n]
    cos = np.sum(image * text, -1) / (np.linalg.norm(image, axis=-1) * np.linalg.norm(text, axis=-1))
    scores.extend(np.maximum(cos, 0.0).tolist())
    if k % 10 == 0:
      log(f"clipscore: {len(scores)}/{len(pairs)} images")
  return {"clip_score": 100.0 * float(np.mean(scores)), "images": len(scores), "folder": folder}
