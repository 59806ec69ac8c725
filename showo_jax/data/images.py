"""Image loading, the official preprocessing, and image collections (folders, records, the embedded digits).

Preprocessing (SPEC §8, the official `image_transform`): PIL image → RGB → resize so that the shorter side is
`resolution` (bicubic, PIL's antialiasing resampler, as torchvision's `Resize` on PIL images; the longer side
becomes `int(resolution · long / short)`; an image whose shorter side already equals `resolution` is not
resampled) → center crop `resolution × resolution` (offsets `round((size − resolution) / 2)`) → uint8
[H, W, 3] → float32 in [−1, 1] by `(x / 255 − 0.5) / 0.5` (ToTensor + Normalize(0.5, 0.5)).

Layout: channels last everywhere (uint8 or float32 [H, W, 3], batches [B, H, W, 3]); the official code is
NCHW and `tokenizer/codec.py` transposes at that boundary.

Colour modes: everything goes through PIL's `convert("RGB")`, as the official code does: grayscale (L, 1, I,
I;16, F) is replicated to three channels (high-bit-depth values are clipped to 8 bits by PIL), palette (P)
images are expanded through their palette, and RGBA / LA / PA drop the alpha channel (transparent pixels keep
their stored colour; nothing is composited). CMYK and YCbCr are converted by PIL's colour matrices.

Errors: an unreadable or corrupt file raises `ImageError` with a one-line message naming the file. With
`resize=False` nothing is resampled: a size that is not a multiple of the tokenizer's downsampling factor (or
differs from the required size) raises `ImageError` naming the file and the numbers.
"""

import concurrent.futures
import io
import json
import logging
import os

import numpy as np
from PIL import Image

from showo_jax.common import paths
from showo_jax.data import embedded
from showo_jax.data import png

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
CAPTIONS_FILE = "captions.jsonl"  # sidecar of an image folder: {"file": "a/b.png", "caption": ..., "label": ...}


class ImageError(ValueError):
  """An image cannot be used; the one-line message names the file."""


def open_image(source, name: str = None) -> Image.Image:
  """A fully decoded PIL image from a path, bytes, a PIL image or a uint8 array ([H, W] / [H, W, C])."""
  name = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<image>")
  if isinstance(source, Image.Image):
    return source
  if isinstance(source, np.ndarray):
    array = source if source.ndim == 2 or source.shape[-1] != 1 else source[..., 0]
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
      raise ImageError(f"{name}: expected a uint8 [H, W] or [H, W, C] image array, got {array.dtype} "
                       f"{list(array.shape)}")
    return Image.fromarray(array)
  try:
    if isinstance(source, (str, os.PathLike)):
      source = paths.read_bytes(source)  # a local path or a cloud URL
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.load()  # decode now: truncated or corrupt data fails here, not later
  except FileNotFoundError:
    raise ImageError(f"{name}: no such file") from None
  except Exception as e:  # pylint: disable=broad-except
    raise ImageError(f"{name}: unreadable or corrupt image ({type(e).__name__}: {e})") from None
  return image


def to_rgb(image: Image.Image) -> Image.Image:
  """RGB as the official `Image.convert("RGB")` (see the module docstring for each mode)."""
  return image if image.mode == "RGB" else image.convert("RGB")


def resize_and_crop(image: Image.Image, resolution: int) -> Image.Image:
  """torchvision Resize(resolution, BICUBIC) then CenterCrop(resolution), on a PIL image."""
  w, h = image.size
  short, long = (w, h) if w <= h else (h, w)
  if short != resolution:
    new_short, new_long = resolution, int(resolution * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    image = image.resize((new_w, new_h), Image.BICUBIC)
  w, h = image.size
  top, left = int(round((h - resolution) / 2.0)), int(round((w - resolution) / 2.0))
  return image.crop((left, top, left + resolution, top + resolution))


def check_size(size_hw, factor: int, name: str, resolution: int = 0):
  """ImageError unless H and W are multiples of `factor` (and equal `resolution` when it is given)."""
  h, w = size_hw
  if h % factor or w % factor:
    raise ImageError(f"{name}: size {w}x{h} (WxH) is not divisible by the tokenizer's downsampling factor "
                     f"{factor} and resizing is off")
  if resolution and (h, w) != (resolution, resolution):
    raise ImageError(f"{name}: size {w}x{h} (WxH) is not the required {resolution}x{resolution} and resizing "
                     "is off")


def load_image(source, resolution: int, *, resize: bool = True, factor: int = 1, name: str = None,
               exact: bool = True) -> np.ndarray:
  """Any image source → uint8 [H, W, 3] RGB, resized + center-cropped to `resolution` unless resize=False.

  With resize=False the image keeps its size, which must be a multiple of `factor` (and equal `resolution`
  when `exact`); otherwise ImageError.
  """
  name = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<image>")
  image = open_image(source, name)
  if not resize:
    check_size((image.size[1], image.size[0]), factor, name, resolution if exact else 0)
  try:
    image = to_rgb(image)
    return np.asarray(resize_and_crop(image, resolution) if resize else image, dtype=np.uint8)
  except Exception as e:  # pylint: disable=broad-except
    raise ImageError(f"{name}: cannot convert the {image.mode} image to RGB ({type(e).__name__}: {e})") from None


def to_float(images):
  """uint8 [..., H, W, 3] → float32 in [−1, 1], exactly ToTensor + Normalize(0.5, 0.5). numpy or jax."""
  return (images.astype(np.float32) / 255.0 - 0.5) / 0.5


def preprocess(source, resolution: int, *, resize: bool = True, factor: int = 1) -> np.ndarray:
  """The official image_transform: any image source → float32 [resolution, resolution, 3] in [−1, 1]."""
  return to_float(load_image(source, resolution, resize=resize, factor=factor))


def to_uint8(images) -> np.ndarray:
  """Decoder output float [..., 3] (unbounded, [−1, 1] nominal) → uint8, as the official clamp((x+1)/2)·255."""
  x = np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)
  return np.round(x * 255.0).astype(np.uint8)


def image_grid(images: np.ndarray, cols: int = 10) -> np.ndarray:
  """uint8 [B, H, W, 3] → one uint8 image with `cols` columns (1-pixel gaps)."""
  b, h, w, c = images.shape
  rows = -(-b // cols)
  out = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for i, img in enumerate(images):
    r, k = divmod(i, cols)
    out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = img
  return out


def pair_grid(originals: np.ndarray, reconstructions: np.ndarray, *, pairs_per_row: int = 4,
              min_tile: int = 64) -> np.ndarray:
  """uint8 [N, H, W, 3] twice → one uint8 image: rows of (original | reconstruction) pairs, 2-px gaps.

  Small images are enlarged (nearest neighbour) to at least `min_tile` pixels so that digits stay visible.
  """
  n, h, w, _ = originals.shape
  scale = max(1, -(-min_tile // max(h, w)))
  originals, reconstructions = (np.repeat(np.repeat(a, scale, 1), scale, 2) for a in (originals, reconstructions))
  h, w, gap = h * scale, w * scale, 2
  rows = -(-n // pairs_per_row)
  grid = np.full((rows * (h + gap) + gap, pairs_per_row * (2 * w + 3 * gap) + gap, 3), 255, np.uint8)
  for i in range(n):
    r, c = divmod(i, pairs_per_row)
    y, x = gap + r * (h + gap), gap + c * (2 * w + 3 * gap)
    grid[y:y + h, x:x + w] = originals[i]
    grid[y:y + h, x + w + gap:x + 2 * w + gap] = reconstructions[i]
  return grid


# Defined in png.py so that embedded.py writes its digit folders without importing this module, which reads them.
save_png = png.save_png


###########################  Collections  ###########################

def list_images(folder: str) -> list[str]:
  """Image files under `folder` (recursive, by extension, case-insensitive), as sorted relative paths."""
  if not paths.isdir(folder):
    raise FileNotFoundError(f"{folder}: no such image folder")
  return [rel for rel in paths.walk_files(folder)
          if rel.lower().endswith(IMAGE_EXTENSIONS) and not paths.basename(rel).startswith(".")]


def _folder_annotations(folder: str) -> dict:
  """{relative path: {"caption": ..., "label": ...}} from captions.jsonl, if present."""
  path = paths.join(folder, CAPTIONS_FILE)
  if not paths.exists(path):
    return {}
  out = {}
  for n, line in enumerate(paths.read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      key = next(row[k] for k in ("file", "image", "file_name") if k in row)
    except (ValueError, StopIteration):
      raise ValueError(f"{path}:{n}: expected a JSON object with a 'file' and a 'caption'") from None
    out[os.path.normpath(key)] = {k: row[k] for k in ("caption", "label") if k in row}
  return out


def folder_items(folder: str) -> list:
  """[(relative path, {"caption", "label"} as given)] of an image folder: captions from captions.jsonl, else a
  `.txt` beside the image (a caption that is not UTF-8 is the UnicodeDecodeError itself, for the caller to
  report). FileNotFoundError naming the folder when it holds no image."""
  files = list_images(folder)
  if not files:
    raise FileNotFoundError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
  notes = _folder_annotations(folder)
  out = []
  for rel in files:
    fields = dict(notes.get(os.path.normpath(rel), {}))
    txt = paths.join(folder, os.path.splitext(rel)[0] + ".txt")
    if "caption" not in fields and paths.exists(txt):
      try:
        fields["caption"] = paths.read_text(txt).strip()
      except UnicodeDecodeError as e:
        fields["caption"] = e
    out.append((rel, fields))
  return out


class ImageCollection:
  """Random access to (uint8 [H, W, 3] image, carried fields) pairs; `load` raises ImageError when unusable."""

  def __init__(self, spec: str, resolution: int, *, resize: bool = True, factor: int = 1,
               image_field: str = "image", exact: bool = True):
    self.spec, self.resolution, self.resize, self.factor, self.exact = spec, resolution, resize, factor, exact
    self.image_field = image_field
    self._array = None  # in-memory uint8 [N, H, W, 3] (embedded data)
    self._fields = None  # list of carried-field dicts for in-memory / folder sources
    self._files = None
    self._records = None
    if spec.startswith("embedded:"):
      self._open_embedded(spec.partition(":")[2])
    elif spec.startswith(("records:", "tfds:")) or paths.exists(paths.join(spec, "meta.json")):
      from showo_jax.data import records  # pylint: disable=g-import-not-at-top
      self._records = records.open_source(spec[len("records:"):] if spec.startswith("records:") else spec)
    elif paths.isdir(spec):
      self._open_folder(spec)
    else:
      raise ValueError(f"image source {spec!r}: not an image folder, records:FOLDER, tfds:NAME[:SPLIT]@DIR, "
                       "embedded:SPLIT[*K][:VIEW] (e.g. embedded:train, embedded:test:sideways)")

  def _open_embedded(self, source: str):
    images, self._fields = embedded.open_source(source)
    if images.shape[1] != self.resolution and self.resize:
      images = np.stack([load_image(im, self.resolution) for im in images])
    elif images.shape[1] != self.resolution:
      check_size(images.shape[1:3], self.factor, self.spec, self.resolution if self.exact else 0)
    self._array = images

  def _open_folder(self, folder: str):
    items = folder_items(folder)
    self._files = [rel for rel, _ in items]
    self._fields, self._unusable = [], {}  # index -> (skip reason, message)
    for rel, fields in items:
      if isinstance(fields.get("caption"), UnicodeDecodeError):  # skipped and counted when loaded, as build_dataset does
        txt = paths.join(folder, os.path.splitext(rel)[0] + ".txt")
        self._unusable[len(self._fields)] = ("non-text caption", f"{txt}: caption is not UTF-8 text")
        fields = {k: v for k, v in fields.items() if k != "caption"}
      self._fields.append(fields)

  def __len__(self) -> int:
    if self._array is not None:
      return len(self._array)
    return len(self._files) if self._files is not None else len(self._records)

  @property
  def in_memory(self) -> bool:
    return self._array is not None

  def name(self, index: int) -> str:
    if self._files is not None:
      return paths.join(self.spec, self._files[index])
    return f"{self.spec}[{index}]"

  def load(self, index: int):
    """(uint8 [H, W, 3], carried fields dict); ImageError names the file/record when it is unusable."""
    if self._array is not None:
      return self._array[index], dict(self._fields[index])
    kw = dict(resize=self.resize, factor=self.factor, name=self.name(index), exact=self.exact)
    if self._files is not None:
      if index in self._unusable:
        reason, message = self._unusable[index]
        error = ImageError(message)
        error.reason = reason  # counted under it by the sharded writer
        raise error
      return load_image(paths.join(self.spec, self._files[index]), self.resolution, **kw), dict(
          self._fields[index])
    try:
      record = self._records[index]
    except Exception as e:  # pylint: disable=broad-except
      raise ImageError(f"{self.name(index)}: unreadable record ({type(e).__name__}: {e})") from None
    if record is None or self.image_field not in record:
      raise ImageError(f"{self.name(index)}: corrupt record or no {self.image_field!r} field")
    raw = record[self.image_field]
    image = load_image(np.asarray(raw) if not isinstance(raw, bytes) else raw, self.resolution, **kw)
    fields = {k: _plain(v) for k, v in record.items() if k != self.image_field and _plain(v) is not None}
    return image, fields

  def load_array(self, indices) -> np.ndarray:
    """uint8 [len(indices), H, W, 3] of in-memory sources (fast path for training)."""
    return self._array[np.asarray(indices)]


def _plain(value):
  """A carried field as str / int / float, or None for arrays and other non-scalars."""
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return None
  if isinstance(value, (str, int, float)):
    return value
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return value.item()
  if isinstance(value, np.generic):
    return value.item()
  return None


class StepBatches:
  """uint8 batches that are a pure function of (seed, step): no iterator state to checkpoint.

  The batch of step s holds rows [s·B, (s+1)·B) of an endless stream that visits the collection in a fresh
  seeded permutation every epoch; each process takes its own B / process_count rows. An unusable image is
  replaced by the next usable one of the collection (deterministically) and counted in `skipped`.
  """

  def __init__(self, collection, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
    self.collection, self.seed = collection, seed
    self.local = batch_size // process_count
    self.offset = process_index * self.local
    self.batch_size, self.skipped = batch_size, set()
    self._perms = {}
    self._pool = None

  def _index(self, position: int) -> int:
    epoch, i = divmod(position, len(self.collection))
    if epoch not in self._perms:
      if len(self._perms) > 1:  # a batch spans at most two epochs
        self._perms.pop(min(self._perms))
      self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.collection))
    return int(self._perms[epoch][i])

  def load(self, index: int):
    for k in range(len(self.collection)):  # an unusable image is replaced by the next usable one
      j = (index + k) % len(self.collection)
      try:
        return self.collection.load(j)[0]
      except ImageError as e:
        if j not in self.skipped:
          logging.warning("skipping image: %s", e)
          self.skipped.add(j)
    raise ImageError(f"{self.collection.spec}: no usable image")

  def batch(self, step: int) -> np.ndarray:
    start = step * self.batch_size + self.offset
    idx = [self._index(p) for p in range(start, start + self.local)]
    if self.collection.in_memory:
      return self.collection.load_array(idx)
    self._pool = self._pool or concurrent.futures.ThreadPoolExecutor(8)  # decoding releases the GIL
    return np.stack(list(self._pool.map(self.load, idx)))


def open_collection(spec: str, resolution: int, *, resize: bool = True, factor: int = 1,
                    image_field: str = "image", exact: bool = True) -> ImageCollection:
  """An image collection from a spec: an image folder (captions from captions.jsonl or per-image .txt),
  `records:FOLDER` / a record folder, `tfds:NAME[:SPLIT]@DATA_DIR`, or `embedded:train|validation|test`.
  With resize=False images keep their size: a multiple of `factor`, equal to `resolution` when `exact`."""
  logging.info("opening images %s at %d px (resize=%s)", spec, resolution, resize)
  return ImageCollection(spec, resolution, resize=resize, factor=factor, image_field=image_field, exact=exact)
