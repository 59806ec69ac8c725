"""Image loading and the official preprocessing: PIL-computed expectations, colour modes, collections, bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from showo_jax.data import images


def _expected(image: Image.Image, res: int) -> np.ndarray:
  """torchvision Resize(res, BICUBIC) + CenterCrop(res) + ToTensor + Normalize(0.5, 0.5), written out with PIL."""
  rgb = image.convert("RGB")
  w, h = rgb.size
  if w <= h:
    size = (res, int(res * h / w))
  else:
    size = (int(res * w / h), res)
  if min(w, h) != res:
    rgb = rgb.resize(size, Image.BICUBIC)
  w, h = rgb.size
  top, left = int(round((h - res) / 2.0)), int(round((w - res) / 2.0))
  arr = np.asarray(rgb.crop((left, top, left + res, top + res)), np.float32)
  return (arr / 255.0 - 0.5) / 0.5


def _random(mode, size, seed=0):
  rng = np.random.default_rng(seed)
  w, h = size
  channels = {"RGBA": 4, "RGB": 3, "LA": 2}.get(mode)
  shape = (h, w, channels) if channels else (h, w)
  return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.mark.parametrize("mode, size", [("RGBA", (40, 24)), ("L", (24, 37)), ("LA", (33, 50)), ("RGB", (16, 20))])
def test_preprocess_matches_pil(tmp_path, mode, size):
  image = _random(mode, size)
  path = tmp_path / "x.png"
  image.save(path)
  got = images.preprocess(str(path), 16)
  assert got.shape == (16, 16, 3) and got.dtype == np.float32
  assert got.min() >= -1 and got.max() <= 1
  np.testing.assert_array_equal(got, _expected(Image.open(path), 16))


def test_grayscale_is_replicated_and_alpha_dropped():
  gray = images.load_image(_random("L", (20, 30)), 20, name="g")
  np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
  rgba = _random("RGBA", (16, 16))
  np.testing.assert_array_equal(images.load_image(rgba, 16), np.asarray(rgba)[..., :3])  # no compositing


def test_palette_image(tmp_path):
  image = _random("RGB", (30, 20)).convert("P", palette=Image.ADAPTIVE, colors=16)
  image.info["transparency"] = 0
  path = tmp_path / "p.png"
  image.save(path)
  np.testing.assert_array_equal(images.preprocess(str(path), 8), _expected(Image.open(path), 8))


def test_array_and_bytes_sources(tmp_path):
  arr = np.asarray(_random("RGB", (24, 24)))
  path = tmp_path / "a.png"
  Image.fromarray(arr).save(path)
  np.testing.assert_array_equal(images.load_image(arr, 24), arr)  # already the size: no resampling
  np.testing.assert_array_equal(images.load_image(path.read_bytes(), 24), arr)
  np.testing.assert_array_equal(images.load_image(arr[..., :1], 24), np.repeat(arr[..., :1], 3, -1))
  np.testing.assert_array_equal(images.to_float(np.array([0, 255], np.uint8)), [-1.0, 1.0])
  np.testing.assert_array_equal(images.to_uint8(np.array([-3.0, -1.0, 0.0, 1.0, 2.0])), [0, 0, 128, 255, 255])


def test_corrupt_and_missing_files_name_the_file(tmp_path):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
  with pytest.raises(images.ImageError, match=r"bad\.png: unreadable or corrupt image") as e:
    images.preprocess(str(bad), 16)
  assert "\n" not in str(e.value)
  good = tmp_path / "t.png"
  _random("RGB", (32, 32)).save(good)
  truncated = tmp_path / "truncated.png"
  truncated.write_bytes(good.read_bytes()[:200])
  with pytest.raises(images.ImageError, match=r"truncated\.png: unreadable or corrupt"):
    images.load_image(str(truncated), 16)
  with pytest.raises(images.ImageError, match=r"nope\.png: no such file"):
    images.load_image(str(tmp_path / "nope.png"), 16)
  with pytest.raises(images.ImageError, match=r"uint8"):
    images.load_image(np.zeros((4, 4, 3), np.float32), 4, name="arr")


def test_no_resize_refuses_bad_sizes():
  image = _random("RGB", (20, 18))
  with pytest.raises(images.ImageError, match=r"im\.png: size 20x18 \(WxH\) is not divisible by the tokenizer's "
                     r"downsampling factor 4 and resizing is off"):
    images.load_image(image, 16, resize=False, factor=4, name="im.png")
  with pytest.raises(images.ImageError, match=r"im\.png: size 20x16 \(WxH\) is not the required 16x16"):
    images.load_image(_random("RGB", (20, 16)), 16, resize=False, factor=4, name="im.png")
  kept = images.load_image(_random("RGB", (20, 16)), 16, resize=False, factor=4, exact=False)
  assert kept.shape == (16, 20, 3)


def test_folder_collection(tmp_path):
  (tmp_path / "sub").mkdir()
  for name, size in (("b.png", (20, 20)), ("a.jpg", (30, 20)), ("sub/c.PNG", (16, 40))):
    _random("RGB", size).save(tmp_path / name)
  (tmp_path / "notes.md").write_text("not an image")
  (tmp_path / "a.txt").write_text("caption from txt\n")
  (tmp_path / images.CAPTIONS_FILE).write_text(json.dumps({"file": "b.png", "caption": "bee", "label": 3}) + "\n")
  assert images.list_images(str(tmp_path)) == ["a.jpg", "b.png", "sub/c.PNG"]
  coll = images.open_collection(str(tmp_path), 16)
  assert len(coll) == 3
  fields = [coll.load(i)[1] for i in range(3)]
  assert fields == [{"caption": "caption from txt"}, {"caption": "bee", "label": 3}, {}]
  assert all(coll.load(i)[0].shape == (16, 16, 3) for i in range(3))
  batches = images.StepBatches(coll, 2, seed=1)
  assert batches.batch(0).shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(batches.batch(5), images.StepBatches(coll, 2, seed=1).batch(5))


def test_embedded_collection_carries_fields():
  coll = images.open_collection("embedded:test", 32)
  assert len(coll) == 500 and coll.in_memory
  image, fields = coll.load(0)
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8
  assert set(fields) == {"caption", "label", "question", "answer"}
  assert fields["question"] == "What digit is this?"
  assert fields["caption"] == f"a handwritten digit {fields['answer']}"


def test_bad_collection_specs(tmp_path):
  with pytest.raises(ValueError, match=r"image source 'nowhere': not an image folder"):
    images.open_collection("nowhere", 16)
  with pytest.raises(FileNotFoundError, match="no image files"):
    images.open_collection(str(tmp_path), 16)
  with pytest.raises(ValueError, match="unknown split"):
    images.open_collection("embedded:dev", 32)
  _random("RGB", (8, 8)).save(tmp_path / "x.png")
  (tmp_path / images.CAPTIONS_FILE).write_text("{broken\n")
  with pytest.raises(ValueError, match=r"captions\.jsonl:1: expected a JSON object"):
    images.open_collection(str(tmp_path), 8)


def test_pair_grid():
  a = np.zeros((5, 8, 8, 3), np.uint8)
  grid = images.pair_grid(a, a + 255, pairs_per_row=2, min_tile=16)  # tiles enlarged ×2 to 16 px
  assert grid.shape == (3 * 18 + 2, 2 * (32 + 6) + 2, 3)
  assert grid[2, 2].tolist() == [0, 0, 0] and grid[2, 2 + 16 + 2].tolist() == [255, 255, 255]


def test_embedded_augmented_copies_follow_their_affine_maps():
  from showo_jax.data import embedded  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  originals = rng.integers(0, 256, (6, 9, 9, 3), dtype=np.uint8)
  labels = np.arange(6)
  out, out_labels = embedded.augmented_copies(originals, labels, 4, seed=1)
  assert out.shape == (24, 9, 9, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:6], originals)
  np.testing.assert_array_equal(out_labels, np.tile(labels, 4))
  assert all(not np.array_equal(out[k], originals[k % 6]) for k in range(6, 24))
  # The identity map gives the originals back exactly (bilinear weights at integer points are 0/1).
  same, _ = embedded.augmented_copies(originals, labels, 2, max_shift=0, max_rotate_deg=0, scale_range=(1, 1),
                                      max_shear=0)
  np.testing.assert_array_equal(same[6:], originals)
  # Geometry: a 2×2 dot 8 px right of the centre of a 33×33 image, rotated by up to 20°, keeps its distance
  # from the centre and turns by at most 20°; shifted by up to 3 px, its centroid moves by at most 3 px per axis.
  dot = np.zeros((1, 33, 33, 1), np.uint8)
  dot[0, 16:18, 24:26] = 255
  cy, cx = 16.5, 24.5  # its centroid
  turned, _ = embedded.augmented_copies(dot, [0], 30, max_shift=0, max_rotate_deg=20, scale_range=(1, 1),
                                        max_shear=0, seed=2)
  shifted, _ = embedded.augmented_copies(dot, [0], 30, max_shift=3, max_rotate_deg=0, scale_range=(1, 1),
                                         max_shear=0, seed=3)
  ys, xs = np.mgrid[:33, :33]
  angles = []
  for img in turned[1:, ..., 0].astype(np.float64):
    y, x = (img * ys).sum() / img.sum(), (img * xs).sum() / img.sum()
    assert abs(np.hypot(y - 16, x - 16) - np.hypot(cy - 16, cx - 16)) < 0.3
    angles.append(np.degrees(np.arctan2(y - 16, x - 16) - np.arctan2(cy - 16, cx - 16)))
  assert max(abs(a) for a in angles) <= 20.5 and np.std(angles) > 5
  for img in shifted[1:, ..., 0].astype(np.float64):
    y, x = (img * ys).sum() / img.sum(), (img * xs).sum() / img.sum()
    assert abs(y - cy) <= 3.05 and abs(x - cx) <= 3.05
  collection = images.ImageCollection("embedded:train*2", 32)
  assert len(collection) == 2 * 4000  # the 4,000 training digits (validation and test held out)
  with pytest.raises(ValueError, match=r"copies after '\*'"):
    images.ImageCollection("embedded:train*0", 32)
