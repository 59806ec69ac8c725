"""Every bad input is one line (issue 17): a table of entry-point commands with a bad input each, run as a user
would. For each: a non-zero exit, exactly one `error:` line on stderr naming the bad thing, no traceback, and
the output it would have written absent."""

import importlib
import json
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from showo_jax.data import embedded
from showo_jax.data import records
from showo_jax.interop import conversion
from tests import train_fixtures

# One worker runs the whole module (setup.cfg: --dist loadgroup), so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("bad_input")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _read(path):
  raw = pathlib.Path(path).read_bytes()
  (n,) = struct.unpack("<Q", raw[:8])
  return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header_text: str, data: bytes):
  raw = header_text.encode()
  raw += b" " * (-len(raw) % 8)
  pathlib.Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A tiny trained workdir, its official export and damaged copies of it, record folders of the wrong kind."""
  root = tmp_path_factory.mktemp("bad_input")
  run = train_fixtures.shared_trained_workdir(tmp_path_factory, root)
  conversion.export_showo(run, str(root / "official"))
  weights = root / "official" / conversion.WEIGHTS
  header, data = _read(weights)
  meta = header.pop("__metadata__", None)
  big = max(header, key=lambda k: header[k]["data_offsets"][1] - header[k]["data_offsets"][0])

  def variant(name, entries, body=data, text=None):
    (root / name).mkdir()
    (root / name / "config.json").write_bytes((root / "official" / "config.json").read_bytes())
    path = root / name / conversion.WEIGHTS
    _write(path, text if text is not None else json.dumps(dict(entries, **({"__metadata__": meta} if meta else {}))),
           body)
    return str(path)

  relabelled = dict(header, **{big: dict(header[big], dtype="I32")})
  negative = dict(header, **{big: dict(header[big], data_offsets=[-8, header[big]["data_offsets"][1] -
                                                                  header[big]["data_offsets"][0] - 8])})
  start, end = header[big]["data_offsets"]
  nan_body = data[:start] + np.full((end - start) // 4, np.nan, np.float32).tobytes() + data[end:]
  same_size = sorted((k for k in header if k != big), key=lambda k: header[k]["data_offsets"][0])
  a = next(k for k in same_size if any(header[j]["data_offsets"][1] - header[j]["data_offsets"][0] ==
                                         header[k]["data_offsets"][1] - header[k]["data_offsets"][0]
                                         for j in same_size if j != k))
  b = next(j for j in same_size if j != a and header[j]["data_offsets"][1] - header[j]["data_offsets"][0] ==
           header[a]["data_offsets"][1] - header[a]["data_offsets"][0])
  overlapping = dict(header, **{b: dict(header[b], data_offsets=header[a]["data_offsets"])})
  entry = json.dumps(header[big])
  huge = dict(header, **{big: dict(header[big], shape=[2 ** 32, 2 ** 32])})
  for name, index in (("index_list", {"weight_map": []}), ("index_escape", {"weight_map": {big: "../../etc/passwd"}})):
    (root / name).mkdir()
    (root / name / "model.safetensors.index.json").write_text(json.dumps(index))
  np.savez(root / "pickled.npz", a=np.array([{"x": 1}], dtype=object))
  (root / "docs.jsonl").write_text('{"text": "a document"}\n')
  records.write_records(str(root / "empty_records"), [], meta={"codebook_bits": 6, "token_grid": [4, 4]})
  pngs = embedded.write_digit_folder(str(root / "digits"))
  bad_caption = pathlib.Path(pngs[0]).with_suffix(".txt")
  bad_caption.write_bytes(b"\xff\xfe not UTF-8")
  return {
      "png": pngs[1], "bad_caption": bad_caption.name,
      "root": str(root), "run": run, "data": str(root / "data"),
      "relabelled": variant("relabelled", relabelled), "negative": variant("negative", negative),
      "nan": variant("nan", header, nan_body),
      "duplicate": variant("duplicate", {}, text="{" + f'"{big}": {entry}, "{big}": {entry}' + "}"),
      "overlap": variant("overlap", overlapping), "list": variant("list", {}, text="[]"),
      "huge": variant("huge", huge), "index_list": str(root / "index_list"),
      "index_escape": str(root / "index_escape"), "pickled": str(root / "pickled.npz"),
  }


def _config(world, name, **data):
  """A CLI config file: the fixture's tiny config with data fields replaced."""
  lines = [f"c.data.{k} = {v!r}" for k, v in data.items()]
  return train_fixtures.cli_config_file(pathlib.Path(world["root"]) / f"{name}.py", world["data"], 2, *lines)


# (id, argv with {placeholders} from `world`, text the error line must hold, the output that must not appear)
CASES = [
    ("import a relabelled dtype", "convert import --input {relabelled} --output {root}/o1 --kind showo",
     "is int32, but the official layout holds it in floating point", "o1"),
    ("import negative offsets", "convert import --input {negative} --output {root}/o2", "negative shape or offsets",
     "o2"),
    ("import NaN weights", "convert import --input {nan} --output {root}/new/o3 --kind showo", "non-finite values",
     "new"),  # refused while the tensors are read: not even the new parent folder is left
    ("import duplicate keys", "convert import --input {duplicate} --output {root}/o4", "duplicate key", "o4"),
    ("import overlapping tensors", "convert import --input {overlap} --output {root}/o5", "overlap", "o5"),
    ("import a list header", "convert import --input {list} --output {root}/o6", "a JSON list, not an object", "o6"),
    ("import a 2^64-element shape", "convert import --input {huge} --output {root}/o7",
     "offsets do not match its shape", "o7"),
    ("import an index of a list", "convert import --input {index_list} --output {root}/o8", "weight_map must map",
     "o8"),
    ("import an index escaping its folder", "convert import --input {index_escape} --output {root}/o9",
     "is not a file beside the index", "o9"),
    ("import pickled npz", "convert import --input {pickled} --output {root}/o10", "pickled object arrays", "o10"),
    ("records per shard 0", "build_dataset text --input {root}/docs.jsonl --output {root}/o11 --records-per-shard 0",
     "--records-per-shard must be >= 1", "o11"),
    ("batch size 0", "build_dataset pairs --input {root}/digits --output {root}/o12 --tokenizer-checkpoint "
     "{run}/tokenizer --batch-size 0", "--batch-size must be >= 1", "o12"),
    ("resolution 7", "build_dataset pairs --input {root}/digits --output {root}/o13 --tokenizer-checkpoint "
     "{run}/tokenizer --resolution 7", "--resolution 7 is not a multiple of the tokenizer's downsampling factor",
     "o13"),
    ("t2i steps unbounded", "sample t2i --checkpoint {run} --prompt x --out {root}/o14.png --steps 100000",
     "--steps 100000: at most 16", "o14.png"),
    ("mmu tokens unbounded", "sample mmu --checkpoint {run} --image {png} --question q "
     "--max-new-tokens 100000", "--max-new-tokens 100000: at most", None),
    ("a tokenizer as the checkpoint", "sample t2i --checkpoint {run}/tokenizer --prompt x --out {root}/o15.png",
     "official weights, not a showo_jax checkpoint", "o15.png"),
    ("no config", "train --workdir {root}/o16", "--config is required", "o16"),
    ("a misspelt field", "train --config {cfg_plain} --workdir {root}/o17 --config.train.step=3",
     "has no field 'train.step' (did you mean train.steps?)", "o17"),
    ("a workdir that is a file", "train --config {cfg_plain} --workdir {png}",
     "is a file, not a folder", None),
    ("empty records", "train --config {cfg_empty} --workdir {root}/o18", "holds no records", "o18"),
    ("text records as t2i", "train --config {cfg_text} --workdir {root}/o19", "not image-token records", "o19"),
    ("splash attention", "train --config {cfg_plain} --workdir {root}/o20 --config.model.attention_impl=splash",
     "use 'flash'", "o20"),
    ("cudnn in float32", "train --config {cfg_plain} --workdir {root}/o21 --config.model.attention_impl=cudnn",
     "needs config.model.dtype bfloat16 or float16", "o21"),
    ("an unknown activation dtype", "train --config {cfg_plain} --workdir {root}/o22 "
     "--config.model.activation_dtype=fp8", "activation_dtype='fp8' is not 'auto'", "o22"),
    ("a negative LoRA rank", "train --config {cfg_plain} --workdir {root}/o23 --config.model.lora.rank=-2",
     "config.model.lora.rank=-2 must be >= 0", "o23"),
    ("an unknown LoRA target", "train --config {cfg_plain} --workdir {root}/o24 --config.model.lora.rank=4 "
     "--config.model.lora.targets=q,gate", "gate not a projection of the phi family", "o24"),
    ("a missing JSONL file", "build_dataset jsonl --input {root}/nope.jsonl --output {root}/o25 "
     "--tokenizer-checkpoint {run}/tokenizer", "nope.jsonl: no such file, folder or matching jsonl files", "o25"),
    ("a trainable pattern matching nothing", "train --config {cfg_plain} --workdir {root}/o26 "
     "--config.train.trainable=lora", "matches no parameter", "o26"),
]


# argparse entry points run in-process (their main(argv) prints the one line and returns the status); `train`, whose
# absl flags are global, and its config checks run as the command itself.
IN_PROCESS = ("convert", "build_dataset", "sample")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(world, case):
  name, command, expected, output = case
  fields = dict(world, cfg_plain=_config(world, "plain"),
                cfg_empty=_config(world, "empty", t2i_records=os.path.join(world["root"], "empty_records")),
                cfg_text=_config(world, "text", t2i_records=os.path.join(world["data"], "text")))
  tool, *args = command.format(**fields).split()
  if tool in IN_PROCESS:  # the same main(argv) the command runs, without a new interpreter per case
    code, _, stderr = train_fixtures.run_main(importlib.import_module(f"showo_jax.{tool}").main, *args)
  else:
    r = subprocess.run([sys.executable, "-m", f"showo_jax.{tool}", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    code, stderr = r.returncode, r.stderr
  errors = [x for x in stderr.splitlines() if x.startswith("error:")]
  assert code != 0, (name, stderr[-2000:])
  assert "Traceback" not in stderr, (name, stderr[-3000:])
  assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], (name, stderr[-2000:])
  assert expected in errors[0], (name, errors[0])
  if output:
    assert not os.path.exists(os.path.join(world["root"], output)), (name, output)


def test_tokenize_images_skips_and_names_a_non_utf8_caption(world, tmp_path):
  out = tmp_path / "tokens"
  r = subprocess.run([sys.executable, "-m", "showo_jax.tokenize_images", f"--checkpoint={world['run']}/tokenizer",
                      f"--input={world['root']}/digits", f"--output={out}", "--resolution=32"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  meta = records.read_meta(str(out))
  assert meta["num_records"] == 9 and meta["skipped"] == {"non-text caption": 1}
  assert f"{world['bad_caption']}: caption is not UTF-8 text" in json.dumps(meta["skipped_examples"])


def test_an_interrupted_conversion_leaves_nothing_on_the_next_run(world):
  """`convert import` killed mid-run leaves its hidden staging folder; the next conversion into the same output
  removes it (its process is gone) and leaves only the checkpoint."""
  root = pathlib.Path(world["root"])
  stale = root / ".reimported.converting-999999999-abc"  # no such pid
  (stale / "checkpoints").mkdir(parents=True)
  r = subprocess.run([sys.executable, "-m", "showo_jax.convert", "import", "--input", str(root / "official"),
                      "--output", str(root / "reimported")], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert not stale.exists()
  assert [p.name for p in root.iterdir() if p.name.startswith(".reimported")] == []
  assert (root / "reimported" / "checkpoints" / "0").is_dir()
