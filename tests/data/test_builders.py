"""Dataset builders: record contents against the tokenizer applied directly, bad input counted and skipped,
resume without duplicates, the per-process split, and the records feeding the training pipelines."""

import io
import json
import os
import re
import signal
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from showo_jax import build_dataset
from showo_jax.config import showo as showo_config
from showo_jax.data import builders
from showo_jax.data import embedded
from showo_jax.data import images
from showo_jax.data import pipeline
from showo_jax.data import prompting
from showo_jax.data import records
from showo_jax.data import text_tokenizer
from showo_jax.data.builders import common
from showo_jax.tokenizer import config as tokenizer_config
from showo_jax.tokenizer import magvit
from showo_jax.tokenizer import pretokenize

RES = 16  # images are encoded at 16 px by a 2-level tokenizer: 8 x 8 = 64 tokens of a 16-code book


pytestmark = pytest.mark.usefixtures("fast_compiles")  # unoptimised XLA: faster compiles


@pytest.fixture(scope="module")
def tokenizer():
  """(params, config) of a randomly initialised micro MAGVIT-v2, and its direct encode of uint8 images."""
  c = tokenizer_config.magvit_config("tiny")
  for tower in (c.encoder, c.decoder):
    tower.ch, tower.ch_mult, tower.num_res_blocks = 8, [1, 2], [1, 1]
  c.norm_groups, c.codebook_bits, c.resolution = 8, 4, RES
  c.data.resolution = RES  # the size the pre-tokenizer resizes to
  model = tokenizer_config.magvit_from_config(c)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, RES, RES, 3)))["params"]
  apply = jax.jit(lambda p, x: model.apply({"params": p}, images.to_float(x), method=magvit.MagvitV2.encode)[2])

  def encode(pixels):  # uint8 [n, RES, RES, 3] → int [n, 64], in batches of 8 (one compile)
    out = []
    for i in range(0, len(pixels), 8):
      part = pixels[i:i + 8]
      padded = np.concatenate([part, np.zeros((8 - len(part),) + part.shape[1:], np.uint8)])
      out.append(np.asarray(apply(params, padded)).reshape(8, -1)[:len(part)])
    return np.concatenate(out)

  return (params, c), encode


def _build(kind, inputs, output, *, checkpoint=None, batch_size=64, resolution=0, **kwargs):
  """builders.build with the encoder of a (params, config) tokenizer, as the build_dataset CLI makes it."""
  encoder = pretokenize.Encoder(*checkpoint, batch_size, resolution) if checkpoint is not None else None
  return builders.build(kind, inputs, output, encoder=encoder, **kwargs)


def _png(seed: int, size=(20, 24)) -> bytes:
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def _write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


def _pixels(sources) -> np.ndarray:
  return np.stack([images.load_image(s, RES) for s in sources])


def _rows(folder) -> list:
  source = records.open_source(str(folder))
  return [source[i] for i in range(len(source))]


def _add(tar: tarfile.TarFile, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


CORRUPT = b"\x89PNG\r\n\x1a\n not really"


# ------------------------------------------------------------------------------------------------ text


def test_text_jsonl_and_parquet(tmp_path):
  lines = [{"content": "first doc"}, {"text": "second doc"}, "not json {", {"content": ""}, {"content": 7},
           {"url": "x"}, {"content": "  third doc  "}]
  with open(tmp_path / "a.jsonl", "w") as f:
    for row in lines:
      f.write((row if isinstance(row, str) else json.dumps(row)) + "\n\n")
  inputs = [str(tmp_path / "a.jsonl")]
  want = ["first doc", "second doc", "third doc"]
  try:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    pq.write_table(pa.table({"content": ["p one", None, "p two", "p three"]}), str(tmp_path / "b.parquet"),
                   row_group_size=2)
    inputs.append(str(tmp_path / "b.parquet"))
    want += ["p one", "p two", "p three"]
  except ImportError:
    pass
  stats = _build("text", inputs, str(tmp_path / "out"), records_per_shard=4)
  assert [r["text"] for r in _rows(tmp_path / "out")] == want
  assert stats["num_records"] == len(want)
  skipped = {"bad json line": 1, "empty text": 1, "non-text text": 1, "no text": 1}
  if len(inputs) == 2:
    skipped["non-text text"] += 1  # the parquet null
  assert stats["skipped"] == skipped
  assert stats["skipped_examples"]["bad json line"] == [f"{inputs[0]}:5: not a JSON object"]  # line numbers


def test_text_parquet_without_pyarrow_is_one_line(tmp_path, monkeypatch):
  _write(str(tmp_path / "c.parquet"), b"PAR1")
  monkeypatch.setitem(sys.modules, "pyarrow", None)
  monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
  with pytest.raises(ValueError, match=r"c\.parquet: reading parquet needs pyarrow, which is not installed"):
    _build("text", [str(tmp_path / "c.parquet")], str(tmp_path / "out"))


# ------------------------------------------------------------------------------------------------ imagenet


def test_imagenet_class_folders(tokenizer, tmp_path):
  checkpoint, encode = tokenizer
  root = tmp_path / "train"
  files = [_write(str(root / "n01440764" / f"{i}.JPEG"), _png(i)) for i in range(2)]
  files.append(_write(str(root / "n01443537" / "0.png"), _png(5, (30, 17))))
  _write(str(root / "n01443537" / "bad.png"), CORRUPT)
  names = tmp_path / "LOC_synset_mapping.txt"
  names.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
  stats = _build("imagenet", [str(root)], str(tmp_path / "out"), checkpoint=checkpoint,
                         class_names=str(names), batch_size=8)
  rows = _rows(tmp_path / "out")
  assert [(r["caption"], r["label"]) for r in rows] == [("tench", 0), ("tench", 0), ("goldfish", 1)]
  np.testing.assert_array_equal(np.stack([r["image_tokens"] for r in rows]), encode(_pixels(files)))
  assert stats["skipped"] == {"corrupt image": 1} and "bad.png" in stats["skipped_examples"]["corrupt image"][0]
  meta = records.read_meta(str(tmp_path / "out"))
  assert meta["token_grid"] == [8, 8] and meta["fields"] == ["caption", "image_tokens", "label"]
  # Class folders with plain names are their own prompts; WordNet ids need a names file.
  plain = tmp_path / "plain"
  _write(str(plain / "golden_retriever" / "a.png"), _png(7))
  _write(str(plain / "acorn" / "b.png"), _png(8))
  _build("imagenet", [str(plain)], str(tmp_path / "out2"), checkpoint=checkpoint, batch_size=8)
  assert [(r["caption"], r["label"]) for r in _rows(tmp_path / "out2")] == [("acorn", 0), ("golden retriever", 1)]
  with pytest.raises(ValueError, match=r"no --class-names file to name class n01440764"):
    _build("imagenet", [str(root)], str(tmp_path / "out3"), checkpoint=checkpoint)


def test_imagenet_tfds_manual_layout(tokenizer, tmp_path):
  checkpoint, encode = tokenizer
  manual = tmp_path / "manual"
  manual.mkdir()
  inner = {}
  for wnid, seeds in (("n01440764", (1, 2)), ("n01443537", (3,))):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
      for s in seeds:
        _add(t, f"{wnid}_{s}.JPEG", _png(s))
    inner[wnid] = buf.getvalue()
  with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as t:
    for wnid, data in inner.items():
      _add(t, f"{wnid}.tar", data)
  with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as t:
    for i in (3, 1, 2):  # tfds pairs the sorted names with its validation_labels.txt
      _add(t, f"ILSVRC2012_val_0000000{i}.JPEG", _png(10 + i))
  names = tmp_path / "imagenet_label_mapping"
  names.write_text("0: tench\n1: goldfish\n65: sea snake\n230: Shetland sheepdog\n970: alp\n")
  stats = _build("imagenet", [str(manual)], str(tmp_path / "train"), checkpoint=checkpoint,
                         class_names=str(names), batch_size=8)
  rows = _rows(tmp_path / "train")
  assert stats["num_records"] == 3 and stats["corrupt"] == 0
  assert [(r["caption"], r["label"]) for r in rows] == [("tench", 0), ("tench", 0), ("goldfish", 1)]
  np.testing.assert_array_equal(np.stack([r["image_tokens"] for r in rows]),
                                encode(_pixels([_png(1), _png(2), _png(3)])))
  _build("imagenet", [str(manual)], str(tmp_path / "val"), checkpoint=checkpoint, class_names=str(names),
                 split="validation", batch_size=8)
  rows = _rows(tmp_path / "val")  # archive order 3, 1, 2; labels n01751748, n09193705, n02105855 for 1, 2, 3
  assert [(r["caption"], r["label"]) for r in rows] == [("Shetland sheepdog", 230), ("sea snake", 65), ("alp", 970)]


# ------------------------------------------------------------------------------------------------ pairs


def test_pairs_webdataset_shards(tokenizer, tmp_path):
  checkpoint, encode = tokenizer
  good = {"000": _png(0), "001": _png(1, (40, 16))}
  with tarfile.open(tmp_path / "shard-000.tar", "w") as t:
    _add(t, "000.jpg", good["000"])
    _add(t, "000.txt", b"a red square\n")
    _add(t, "001.png", good["001"])
    _add(t, "001.json", json.dumps({"caption": "two cats", "width": 40}).encode())
    _add(t, "002.jpg", CORRUPT)  # corrupt member
    _add(t, "002.txt", b"broken")
    _add(t, "003.txt", b"caption without an image")
    _add(t, "004.jpg", _png(4))  # no caption
    _add(t, "005.jpg", _png(5))
    _add(t, "005.txt", b"   ")  # empty caption
    _add(t, "006.jpg", _png(6))
    _add(t, "006.json", b'{"caption": 5}')  # not text
    _add(t, "007.png", _png(7))
    _add(t, "007.txt", b"\xff\xfe bad utf-8")
  with tarfile.open(tmp_path / "shard-001.tar", "w") as t:
    _add(t, "sub/010.jpg", _png(10))
    _add(t, "sub/010.txt", b"kept")
    _add(t, "sub/011.jpg", _png(11))
    _add(t, "sub/011.txt", b"cut short")
  with tarfile.open(tmp_path / "shard-001.tar") as t:
    cut = t.getmember("sub/011.txt").offset_data + 4
  data = (tmp_path / "shard-001.tar").read_bytes()
  (tmp_path / "shard-001.tar").write_bytes(data[:cut])  # the archive ends inside sub/011.txt
  stats = _build("pairs", [str(tmp_path)], str(tmp_path / "out"), checkpoint=checkpoint, batch_size=8,
                         records_per_shard=3)
  rows = _rows(tmp_path / "out")
  assert [r["caption"] for r in rows] == ["a red square", "two cats", "kept"]
  np.testing.assert_array_equal(np.stack([r["image_tokens"] for r in rows]),
                                encode(_pixels([good["000"], good["001"], _png(10)])))
  assert rows[0]["image_tokens"].dtype == np.int16 and set(rows[0]) == {"image_tokens", "caption"}
  assert stats["skipped"] == {"corrupt image": 1, "no image member": 1, "no caption member": 1, "empty caption": 1,
                              "non-text caption": 2, "corrupt tar member": 1, "corrupt tar": 1}
  examples = stats["skipped_examples"]
  assert "shard-000.tar:002.jpg: unreadable or corrupt image" in examples["corrupt image"][0]
  assert "shard-001.tar:sub/011.txt: truncated (4 of 9 bytes)" in examples["corrupt tar member"][0]
  assert "shard-001.tar: damaged tar after 4 members" in examples["corrupt tar"][0]


def test_pairs_manifest_and_folder(tokenizer, tmp_path):
  checkpoint, encode = tokenizer
  imgs = tmp_path / "imgs"
  a, b = _write(str(imgs / "a.png"), _png(1)), _write(str(imgs / "d" / "b.png"), _png(2))
  _write(str(imgs / "bad.png"), CORRUPT)
  with open(tmp_path / "pairs.jsonl", "w") as f:
    for row in ({"image": "a.png", "caption": "apple"}, {"image": "gone.png", "caption": "lost"},
                {"image": "d/b.png", "text": "banana"}, {"image": "bad.png", "caption": "x"},
                {"image": "a.png", "caption": ["not", "text"]}, {"caption": "no image"}):
      f.write(json.dumps(row) + "\n")
  folder = tmp_path / "folder"
  c = _write(str(folder / "c.png"), _png(3))
  _write(str(folder / "c.txt"), b"cherry\n")
  _write(str(folder / "e.png"), _png(4))  # no caption
  stats = _build("pairs", [str(tmp_path / "pairs.jsonl"), str(folder)], str(tmp_path / "out"),
                         checkpoint=checkpoint, image_root=str(imgs), batch_size=8)
  rows = _rows(tmp_path / "out")
  assert [r["caption"] for r in rows] == ["apple", "banana", "cherry"]
  np.testing.assert_array_equal(np.stack([r["image_tokens"] for r in rows]), encode(_pixels([a, b, c])))
  assert stats["skipped"] == {"missing file": 1, "corrupt image": 1, "non-text caption": 1, "no image path": 1,
                              "no caption": 1}
  assert stats["skipped_examples"]["missing file"] == [f"{imgs / 'gone.png'}: no such file"]


def test_image_paths_outside_their_root_are_refused_and_counted(tokenizer, tmp_path, monkeypatch):
  """Manifest and LLaVA image paths that are absolute or climb out with `..` are never opened."""
  checkpoint, _ = tokenizer
  imgs = tmp_path / "imgs"
  _write(str(imgs / "a.png"), _png(1))
  outside = tmp_path / "outside.png"
  _write(str(outside), _png(2))  # a real image, so only the path check can keep it out
  escapes = [str(outside), "../outside.png", "d/../../outside.png"]
  opened = []
  real = common.image_file
  monkeypatch.setattr(common, "image_file", lambda path, res: opened.append(path) or real(path, res))
  with open(tmp_path / "pairs.jsonl", "w") as f:
    for rel in ["a.png"] + escapes:
      f.write(json.dumps({"image": rel, "caption": "c"}) + "\n")
  stats = _build("pairs", [str(tmp_path / "pairs.jsonl")], str(tmp_path / "out"), checkpoint=checkpoint,
                 image_root=str(imgs), batch_size=8)
  assert stats["num_records"] == 1 and stats["skipped"] == {"path outside the root": 3}
  assert all(str(outside) not in p and ".." not in p for p in opened), opened
  assert any("'../outside.png' is absolute or leaves" in m for m in stats["skipped_examples"]["path outside the root"])
  entries = [{"id": str(i), "image": rel, "conversations": [{"from": "human", "value": "q"},
                                                             {"from": "gpt", "value": "a"}]}
             for i, rel in enumerate(["a.png"] + escapes)]
  (tmp_path / "llava.json").write_text(json.dumps(entries))
  stats = _build("llava", [str(tmp_path / "llava.json")], str(tmp_path / "out_llava"), checkpoint=checkpoint,
                 image_root=str(imgs), batch_size=8)
  assert stats["num_records"] == 1 and stats["skipped"] == {"path outside the root": 3}


# ------------------------------------------------------------------------------------------------ llava


def _llava(tmp_path):
  """A conversation JSON with 3 usable entries and 6 bad ones; returns (json path, image root, usable pairs)."""
  root = tmp_path / "llava_images"
  _write(str(root / "00000" / "a.jpg"), _png(1))
  _write(str(root / "00000" / "b.jpg"), _png(2))
  _write(str(root / "broken.jpg"), CORRUPT)
  h = lambda v: {"from": "human", "value": v}  # pylint: disable=unnecessary-lambda-assignment
  g = lambda v: {"from": "gpt", "value": v}  # pylint: disable=unnecessary-lambda-assignment
  entries = [
      {"id": "p1", "image": "00000/a.jpg", "conversations": [h("<image>\nDescribe the photo."), g("A red box.")]},
      {"id": "p2", "image": "00000/b.jpg", "conversations": [
          g("stray greeting"), h("What colour?\n<image>"), g("Blue."), h("And the shape?"), g("Round."),
          h("unanswered")]},
      {"id": "t1", "conversations": [h("text only"), g("no image")]},
      {"id": "n1", "image": "00000/a.jpg", "conversations": [h("<image>\nHello?")]},
      {"id": "m1", "image": "00000/missing.jpg", "conversations": [h("q"), g("a")]},
      {"id": "c1", "image": "broken.jpg", "conversations": [h("q"), g("a")]},
      {"id": "e1", "image": "00000/a.jpg", "conversations": [h("q"), g("  ")]},
      {"id": "o1", "image": "00000/a.jpg", "conversations": [h("q"), h("q again"), g("a")]},
      {"id": "p3", "image": "00000/b.jpg", "conversations": [h("Count them."), g("Three.")]},
  ]
  path = tmp_path / "llava.json"
  path.write_text(json.dumps(entries))
  pairs = [[["Describe the photo.", "A red box."]], [["What colour?", "Blue."], ["And the shape?", "Round."]],
           [["Count them.", "Three."]]]
  return str(path), str(root), pairs


def test_llava_conversations(tokenizer, tmp_path):
  checkpoint, encode = tokenizer
  path, root, pairs = _llava(tmp_path)
  stats = _build("llava", [path], str(tmp_path / "out"), checkpoint=checkpoint, image_root=root,
                         batch_size=8)
  rows = _rows(tmp_path / "out")
  assert [json.loads(r["conversation"]) for r in rows] == pairs
  assert [r["id"] for r in rows] == ["p1", "p2", "p3"]
  files = [os.path.join(root, "00000", n) for n in ("a.jpg", "b.jpg", "b.jpg")]
  np.testing.assert_array_equal(np.stack([r["image_tokens"] for r in rows]), encode(_pixels(files)))
  assert stats["skipped"] == {"no image (text-only)": 1, "no assistant turn": 1, "missing file": 1,
                              "corrupt image": 1, "empty turn": 1, "turns out of order": 1}
  assert "(id n1): no assistant turn" in stats["skipped_examples"]["no assistant turn"][0]


# ------------------------------------------------------------------------------------------------ jsonl


def _own_jsonl(tmp_path):
  """A fine-tuning JSONL of caption, conversation and both-kinds lines plus 7 bad lines; returns (path, root)."""
  root = tmp_path / "mine"
  _write(str(root / "img" / "a.png"), _png(11))
  _write(str(root / "img" / "b.png"), _png(12))
  _write(str(root / "broken.png"), CORRUPT)
  chat = [{"from": "human", "value": "<image>\nIs it upside down?"}, {"from": "gpt", "value": "Yes."}]
  lines = [
      {"id": "cap", "image": "img/a.png", "caption": " a red square "},
      {"image": "img/b.png", "conversations": chat},
      {"id": "both", "image": "img/a.png", "caption": "a square", "conversations": chat[:1] + [
          {"from": "gpt", "value": "No."}, {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Red."}]},
      {"id": "x1", "image": "img/a.png"},  # neither
      {"id": "x2", "image": "img/missing.png", "caption": "c"},
      {"id": "x3", "image": "broken.png", "caption": "c"},
      {"id": "x4", "image": "img/a.png", "caption": "   "},
      {"id": "x5", "image": "img/a.png", "conversations": chat[:1]},
      {"id": "x6", "caption": "no image"},
  ]
  path = root / "data.jsonl"
  path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n[1, 2]\n")
  return str(path), str(root)


def test_jsonl_captions_and_conversations(tokenizer, tmp_path):
  checkpoint, encode = tokenizer
  path, root = _own_jsonl(tmp_path)
  stats = _build("jsonl", [path], str(tmp_path / "out"), checkpoint=checkpoint, batch_size=8)  # root: the file's
  rows = _rows(tmp_path / "out")
  assert [r["id"] for r in rows] == ["cap", "1", "both"]
  assert [r.get("caption") for r in rows] == ["a red square", None, "a square"]
  assert [json.loads(r["conversation"]) if "conversation" in r else None for r in rows] == [
      None, [["Is it upside down?", "Yes."]], [["Is it upside down?", "No."], ["Colour?", "Red."]]]
  files = [os.path.join(root, "img", n) for n in ("a.png", "b.png", "a.png")]
  np.testing.assert_array_equal(np.stack([r["image_tokens"] for r in rows]), encode(_pixels(files)))
  assert stats["skipped"] == {"no caption or conversations": 1, "missing file": 1, "corrupt image": 1,
                              "empty caption": 1, "no assistant turn": 1, "no image path": 1, "bad json line": 1}
  assert any("data.jsonl:11: not a JSON object" in m for m in stats["skipped_examples"]["bad json line"])
  meta = records.read_meta(str(tmp_path / "out"))
  assert meta["field_counts"] == {"image_tokens": 3, "id": 3, "caption": 2, "conversation": 2}


def test_jsonl_records_train_understanding_and_refuse_t2i_without_captions(tokenizer, tmp_path):
  """The mixed folder feeds mmu (captions as captioning, conversations turn by turn); as a t2i source the
  preflight refuses it in one line, naming how many records lack a caption."""
  checkpoint, _ = tokenizer
  config = _showo_config(tmp_path)
  layout = showo_config.vocab_layout(config)
  tok = text_tokenizer.TextTokenizer(config.text_tokenizer.path, layout)
  path, _ = _own_jsonl(tmp_path)
  out = str(tmp_path / "out")
  _build("jsonl", [path], out, checkpoint=checkpoint, batch_size=8)
  source = records.open_source(out)
  datasets = pipeline.task_datasets({"mmu": source}, {"mmu": 3}, tok, layout, config, seed=0)
  mmu = next(iter(datasets["mmu"]))
  order = pipeline._global_order(source, 2000)  # pylint: disable=protected-access
  for row_ids, row_labels, rec in zip(mmu["input_ids"], mmu["labels"], [order[i] for i in range(3)]):
    kept = row_labels != prompting.IGNORE_ID
    answer = tok.decode(row_labels[kept])
    if "conversation" in rec:
      assert answer == "".join(f" {a}" for _, a in json.loads(rec["conversation"]))
    else:
      # captioning as the official mmu rows: the whole text is the target (SPEC §3.3)
      assert answer.endswith(f"Please describe this image. ASSISTANT: {rec['caption']}")
  from showo_jax.training import preflight  # pylint: disable=g-import-not-at-top
  from showo_jax.config import base as config_base  # pylint: disable=g-import-not-at-top
  config.data.update(source="records", mmu_records=out)
  preflight.check_before_work(config)  # mmu: fine
  config.data.t2i_records = out
  with pytest.raises(config_base.ConfigError, match=r"t2i_records=.*/out: 1 of its 3 records have no caption"):
    preflight.check_before_work(config)


# ------------------------------------------------------------------------------------------------ pipelines


def _showo_config(tmp_path, max_text_len=80):
  tok = str(tmp_path / "text_tokenizer.json")
  embedded.train_text_tokenizer(tok, vocab_size=300)
  c = showo_config.showo_config("tiny")
  c.model.vocab.update(llm_vocab_size=300, codebook_size=16, bos_id=0, eos_id=0)
  c.model.vocab_size = 384
  c.data.update(num_image_tokens=64, max_text_len=max_text_len, lm_window_chars=200)
  c.text_tokenizer.path = tok
  return showo_config.validate(c)


def test_built_records_feed_the_pipelines(tokenizer, tmp_path):
  checkpoint, _ = tokenizer
  config = _showo_config(tmp_path)
  layout = showo_config.vocab_layout(config)
  tok = text_tokenizer.TextTokenizer(config.text_tokenizer.path, layout)
  path, root, pairs = _llava(tmp_path)
  _build("llava", [path], str(tmp_path / "llava"), checkpoint=checkpoint, image_root=root, batch_size=8)
  folder = tmp_path / "pairs"
  for i, caption in enumerate(["one two", "three"]):
    _write(str(folder / f"{i}.png"), _png(i))
    _write(str(folder / f"{i}.txt"), caption.encode())
  _build("pairs", [str(folder)], str(tmp_path / "pairs_out"), checkpoint=checkpoint, batch_size=8)
  with open(tmp_path / "docs.jsonl", "w") as f:
    f.write(json.dumps({"content": "a document about nothing"}) + "\n")
  _build("text", [str(tmp_path / "docs.jsonl")], str(tmp_path / "text"))
  sources = {"t2i": records.open_source(str(tmp_path / "pairs_out")),
             "mmu": records.open_source(str(tmp_path / "llava")), "lm": records.open_source(str(tmp_path / "text"))}
  sizes = {"t2i": 2, "lm": 1, "mmu": 3}
  datasets = pipeline.task_datasets(sources, sizes, tok, layout, config, seed=0)
  batch = next(pipeline.MultiTaskIterator(datasets))
  assert batch["input_ids"].shape == (6, showo_config.seq_len(config))
  np.testing.assert_array_equal(batch["task_ids"], [0, 0, 1, 2, 2, 2])
  # mmu rows: exactly llava_prompt of the record; labels on the answers (and their EOS) only.
  mmu = next(iter(datasets["mmu"]))
  order = pipeline._global_order(sources["mmu"], 2000)  # pylint: disable=protected-access
  recs = [order[i] for i in range(3)]
  want_ids, want_labels = prompting.llava_prompt(
      layout.image_ids(np.stack([r["image_tokens"] for r in recs]).astype(np.int64)),
      [[tuple(p) for p in json.loads(r["conversation"])] for r in recs], tok.encode_one, layout,
      config.data.max_text_len)
  np.testing.assert_array_equal(mmu["input_ids"], want_ids)
  np.testing.assert_array_equal(mmu["labels"], want_labels)
  for row_ids, row_labels, rec in zip(mmu["input_ids"], mmu["labels"], recs):
    kept = row_labels != prompting.IGNORE_ID
    np.testing.assert_array_equal(row_labels[kept], row_ids[kept])
    answers = [a for _, a in json.loads(rec["conversation"])]
    assert tok.decode(row_labels[kept]) == "".join(f" {a}" for a in answers)  # EOS ids decode to nothing
    assert (row_labels[kept] == layout.eos_id).sum() == len(answers)  # one EOS after each answer
    questions = tok.decode(row_ids[~kept])
    assert all(q in questions for q, _ in json.loads(rec["conversation"]))


# ------------------------------------------------------------------------------------------------ resume, split


class _Interrupt(Exception):
  pass


def test_interrupted_build_resumes_without_duplicates(tokenizer, tmp_path, monkeypatch):
  checkpoint, _ = tokenizer
  folder = tmp_path / "imgs"
  for i in range(7):
    _write(str(folder / f"{i}.png"), _png(i))
    _write(str(folder / f"{i}.txt"), f"caption {i}".encode())
  clean = _build("pairs", [str(folder)], str(tmp_path / "clean"), checkpoint=checkpoint, batch_size=8,
                         records_per_shard=2)
  real = common.image_file

  def flaky(path, resolution):
    if path.endswith("6.png"):  # the last shard (inputs 5, 6; shards are [0,1) [1,3) [3,5) [5,7)) dies half-way
      raise _Interrupt(path)
    return real(path, resolution)

  monkeypatch.setattr(common, "image_file", flaky)
  with pytest.raises(_Interrupt):
    _build("pairs", [str(folder)], str(tmp_path / "out"), checkpoint=checkpoint, batch_size=8,
                   records_per_shard=2)
  assert not os.path.exists(tmp_path / "out" / records.META)  # not readable as a complete dataset
  monkeypatch.setattr(common, "image_file", real)
  again = _build("pairs", [str(folder)], str(tmp_path / "out"), checkpoint=checkpoint, batch_size=8,
                         records_per_shard=2)
  assert again["shards_skipped"] == 3 and again["num_records"] == clean["num_records"] == 7
  got, want = _rows(tmp_path / "out"), _rows(tmp_path / "clean")
  assert [r["caption"] for r in got] == [f"caption {i}" for i in range(7)]
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g["image_tokens"], w["image_tokens"])
  (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n')
  with pytest.raises(ValueError, match=r"holds a pre-tokenization with builder='pairs', not 'text'"):
    _build("text", [str(tmp_path / "docs.jsonl")], str(tmp_path / "out"))  # another dataset's folder


def test_processes_split_the_shards(tmp_path):
  with open(tmp_path / "docs.jsonl", "w") as f:
    for i in range(9):
      f.write(json.dumps({"text": f"doc {i}"}) + "\n")
  out = str(tmp_path / "out")
  first = _build("text", [str(tmp_path / "docs.jsonl")], out, records_per_shard=2, process_index=1,
                         process_count=2)
  assert not first["complete"] and not os.path.exists(os.path.join(out, records.META))
  last = _build("text", [str(tmp_path / "docs.jsonl")], out, records_per_shard=2, process_index=0,
                        process_count=2)
  assert last["complete"] and last["num_records"] == 9 and last["shards_skipped"] == 2  # process 1's shards
  assert [r["text"] for r in _rows(out)] == [f"doc {i}" for i in range(9)]


def test_cli_reports_and_one_line_errors(tmp_path, capsys):
  with open(tmp_path / "docs.jsonl", "w") as f:
    f.write('{"content": "kept"}\n{"content": ""}\n')
  assert build_dataset.main(["text", "--input", str(tmp_path / "docs.jsonl"), "--output", str(tmp_path / "out")]) == 0
  out = capsys.readouterr().out
  assert "1 records in 1 shards" in out and "skipped 1 (empty text)" in out and "docs.jsonl:2: empty text" in out
  assert build_dataset.main(["text", "--input", str(tmp_path / "nowhere.jsonl"), "--output",
                             str(tmp_path / "o2")]) == 2
  assert re.match(r"^error: .*nowhere\.jsonl: no such file", capsys.readouterr().err)
  assert build_dataset.main(["pairs", "--input", str(tmp_path / "docs.jsonl"), "--output", str(tmp_path / "o3")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: the following arguments are required: --tokenizer-checkpoint") and err.count("\n") == 1


def test_pretokenize_runs_on_the_shared_writer(tokenizer, tmp_path):
  """pretokenize.pretokenize (now a source fed to write_sharded) keeps its counts, fields and resume."""
  checkpoint, encode = tokenizer
  folder = tmp_path / "imgs"
  files = [_write(str(folder / f"{i}.png"), _png(i)) for i in range(3)]
  _write(str(folder / "broken.png"), CORRUPT)
  _write(str(folder / "1.txt"), b"one\n")
  stats = pretokenize.pretokenize(checkpoint, str(folder), str(tmp_path / "out"), batch_size=8,
                                      records_per_shard=2)
  assert stats["num_records"] == 3 and stats["corrupt"] == 1 and stats["skipped"] == {"unusable image": 1}
  assert "broken.png: unreadable or corrupt image" in stats["corrupt_examples"][0]
  rows = _rows(tmp_path / "out")
  assert [r.get("caption") for r in rows] == [None, "one", None]
  np.testing.assert_array_equal(np.stack([r["image_tokens"] for r in rows]), encode(_pixels(files)))
  again = pretokenize.pretokenize(checkpoint, str(folder), str(tmp_path / "out"), batch_size=8,
                                      records_per_shard=2)
  assert again["shards_skipped"] == 2 and again["num_records"] == 3 and again["corrupt"] == 1


def test_a_signal_stops_the_build_after_the_current_shard_and_the_rerun_finishes_it(tmp_path, monkeypatch):
  """Ctrl-C while shard 0 is written: shard 0 is kept, the build stops (interrupts.Interrupted), and the rerun
  writes only the other shards."""
  from showo_jax.common import interrupts  # pylint: disable=g-import-not-at-top
  with open(tmp_path / "docs.jsonl", "w") as f:
    for i in range(6):
      f.write(json.dumps({"text": f"doc {i}"}) + "\n")
  out = str(tmp_path / "out")
  text_source = builders.source_module("text").Source
  real_load = text_source.load

  def load_and_press_ctrl_c(self, i):
    if i == 0:
      os.kill(os.getpid(), signal.SIGINT)  # delivered to the handler installed by interrupts.handling()
    return real_load(self, i)

  monkeypatch.setattr(text_source, "load", load_and_press_ctrl_c)
  with interrupts.handling():
    with pytest.raises(interrupts.Interrupted, match=r"^Ctrl-C: .*out: 1 of 3 shards written; rerun"):
      _build("text", [str(tmp_path / "docs.jsonl")], out, records_per_shard=2)
  assert not os.path.exists(os.path.join(out, records.META))
  monkeypatch.setattr(text_source, "load", real_load)
  again = _build("text", [str(tmp_path / "docs.jsonl")], out, records_per_shard=2)
  assert again["shards_skipped"] == 1 and [r["text"] for r in _rows(out)] == [f"doc {i}" for i in range(6)]
