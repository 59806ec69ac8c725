"""gs:// end to end against a real GCS server on 127.0.0.1 (the `gcs_bucket` fixture, fake-gcs-server): the
path layer, the tiny run with its workdir in the bucket killed with SIGKILL mid-run and resumed bit-exact
against the same run on local disk, `sample` and `evaluate` reading from and writing to the bucket, and a
dataset built into the bucket (build_dataset, tokenize_images) and trained from."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from showo_jax.common import paths
from showo_jax.data import records
from showo_jax.interop import checkpoints
from showo_jax.training import trainer
from tests import train_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(*args, timeout=300, **kwargs):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        **kwargs)


def _rows(workdir):
  return [json.loads(x)["step"] for x in paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines()]


def _saved_steps(folder):
  """The steps Orbax committed: in a bucket a step's folder fills in place and its commit file comes last."""
  return sorted(int(n) for n in paths.listdir(folder)
                if n.isdigit() and paths.exists(f"{folder}/{n}/commit_success.txt"))


def test_the_path_layer_on_a_bucket(gcs_bucket, tmp_path):
  base = f"{gcs_bucket}/layer"
  assert paths.resolve(base + "/") == base  # never os.path.abspath'd into ./gs:/...
  paths.write_text(f"{base}/a/b.txt", "hello")
  assert paths.read_text(f"{base}/a/b.txt") == "hello"
  assert paths.isdir(f"{base}/a") and paths.isfile(f"{base}/a/b.txt") and not paths.exists(f"{base}/nothing")
  assert paths.listdir(base) == ["a"] and paths.walk_files(base) == ["a/b.txt"]
  assert paths.create_exclusive(f"{base}/LOCK", b"first")
  assert not paths.create_exclusive(f"{base}/LOCK", b"second")  # the generation-0 precondition holds
  assert paths.read_text(f"{base}/LOCK") == "first"
  with open(paths.local_copy(f"{base}/a/b.txt")) as f:
    assert f.read() == "hello"
  paths.move(f"{base}/a", f"{base}/c")
  assert paths.walk_files(base) == ["LOCK", "c/b.txt"]
  paths.copy_tree(f"{base}/c", str(tmp_path / "down"))
  assert (tmp_path / "down" / "b.txt").read_text() == "hello"
  paths.remove(f"{base}/c")
  assert not paths.exists(f"{base}/c/b.txt")


def test_a_run_in_the_bucket_survives_kill_9_then_samples_and_evaluates_from_it(gcs_bucket, tmp_path):
  data, workdir = f"{gcs_bucket}/data", f"{gcs_bucket}/run"
  train_fixtures.make_records(data)  # the records, BPE and corpus written into the bucket
  cfg = train_fixtures.cli_config_file(tmp_path / "cfg.py", data, "int(arg or 6)", "c.train.checkpoint_every = 2")
  cmd = ["showo_jax.train", f"--config={cfg}:6", f"--workdir={workdir}"]
  proc = subprocess.Popen([sys.executable, "-m", *cmd], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while (not paths.exists(f"{workdir}/checkpoints/2/showo_manifest.json") and time.time() < deadline
         and proc.poll() is None):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL  # died of the kill: it neither finished nor failed before it
  saved = _saved_steps(f"{workdir}/checkpoints")
  assert saved and 2 <= saved[-1] < 6, saved  # killed before the last step's checkpoint
  r = _run(*cmd)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resuming at step {saved[-1]} of 6 steps" in r.stderr, r.stderr[-3000:]
  assert not (ROOT / "gs:").exists()  # no local folder named after the URL
  assert _rows(workdir) == list(range(1, 7))  # each step once, after the kill
  assert paths.exists(f"{workdir}/train.log") and paths.listdir(f"{workdir}/tensorboard")
  assert not paths.exists(f"{workdir}/LOCK")  # released at the end
  # The same run on local disk, uninterrupted: the same params, bit for bit.
  config = train_fixtures.tiny_config(str(tmp_path / "data"), steps=6)
  config.train.checkpoint_every = 2
  trainer.train_and_evaluate(config, str(tmp_path / "straight"))
  a, _ = checkpoints.load_checkpoint(workdir)
  b, _ = checkpoints.load_checkpoint(str(tmp_path / "straight"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)

  # sample and evaluate read the checkpoint (and a tokenizer beside it) from the bucket and write there.
  npz = tmp_path / "magvit.npz"
  train_fixtures.tiny_magvit_npz(str(npz))
  paths.write_bytes(f"{workdir}/tokenizer/magvit.npz", npz.read_bytes())
  r = _run("showo_jax.sample", "t2i", "--checkpoint", workdir, "--prompt", "a handwritten digit three", "--num", "2",
           "--out", f"{workdir}/three.png")
  assert r.returncode == 0, r.stderr[-3000:]
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  assert Image.open(io.BytesIO(paths.read_bytes(f"{workdir}/three.png"))).size[0] > 0
  r = _run("showo_jax.evaluate", f"--workdir={workdir}", "--per_class=1", "--steps=2")
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(paths.read_text(f"{workdir}/eval.json"))
  assert report["checkpoint"] == workdir and 0 <= report["test"]["mmu_accuracy"] <= 1
  assert paths.exists(f"{workdir}/eval.png")


def test_a_dataset_built_into_the_bucket_is_the_local_build_and_trains(gcs_bucket, tmp_path):
  npz = tmp_path / "magvit.npz"
  train_fixtures.tiny_magvit_npz(str(npz))
  built = {}
  for where, root in (("bucket", f"{gcs_bucket}/built"), ("local", str(tmp_path / "built"))):
    r = _run("showo_jax.build_dataset", "digits", "--output", f"{root}/digits")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run("showo_jax.tokenize_images", f"--checkpoint={npz}", f"--input={root}/digits",
             f"--output={root}/tokens", "--resolution=32")
    assert r.returncode == 0, r.stderr[-2000:]
    source = records.RecordSource(f"{root}/tokens")
    built[where] = [(s["caption"], np.asarray(s["image_tokens"])) for s in (source[i] for i in range(len(source)))]
  assert len(built["bucket"]) == 10
  for (ca, ta), (cb, tb) in zip(built["bucket"], built["local"]):
    assert ca == cb
    np.testing.assert_array_equal(ta, tb)
  # Trained from: the bucket's digit tokens as the t2i and (captioning) MMU records.
  data = f"{gcs_bucket}/built/data"
  config = train_fixtures.tiny_config(data, steps=2)
  config.data.update(t2i_records=f"{gcs_bucket}/built/tokens", mmu_records=f"{gcs_bucket}/built/tokens")
  final = trainer.train_and_evaluate(config, f"{gcs_bucket}/built/run")
  assert final["step"] == 2 and np.isfinite(final["loss"])
  assert os.path.basename(paths.glob(f"{gcs_bucket}/built/run/checkpoints", "*")[-1]) == "2"
