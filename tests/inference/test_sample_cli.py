"""`python -m showo_jax.sample` end to end on a 2-step tiny model and a random tiny MAGVIT: every mode, the
output files and formats, determinism, and each kind of bad input (one `error:` line, non-zero exit)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from showo_jax import sample
from showo_jax.training import trainer

from tests import train_fixtures

# One worker runs the whole module (setup.cfg: --dist loadgroup), so its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("sample_cli")

RES = 32  # showo_config("tiny") resolution; the tokenizer below downsamples by 8 → a 4×4 grid = 16 tokens


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir (2 steps) with the image tokenizer at its default place, WORKDIR/tokenizer/."""
  return train_fixtures.shared_trained_workdir(tmp_path_factory, tmp_path_factory.mktemp("sample_cli"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """Input files: RGB at the model size, grayscale / RGBA / palette of other sizes, a corrupt file."""
  d = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  paths = {}
  paths["rgb"] = str(d / "rgb.png")
  Image.fromarray(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)).save(paths["rgb"])
  paths["gray"] = str(d / "gray.png")
  Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), "L").save(paths["gray"])
  paths["rgba"] = str(d / "rgba.png")
  Image.fromarray(rng.integers(0, 256, (100, 64, 4), dtype=np.uint8), "RGBA").save(paths["rgba"])
  paths["palette"] = str(d / "palette.gif")
  Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).convert("P").save(paths["palette"])
  paths["mask"] = str(d / "mask.png")  # another size than the image: left half white
  mask = np.zeros((60, 90), np.uint8)
  mask[:, :45] = 255
  Image.fromarray(mask, "L").save(paths["mask"])
  paths["corrupt"] = str(d / "corrupt.png")
  with open(paths["corrupt"], "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n this is not a png")
  paths["missing"] = str(d / "missing.png")
  return paths


def _run(*argv):
  return train_fixtures.run_main(sample.main, *argv)


def _ok(*argv):
  code, out, err = _run(*argv)
  assert code == 0, err
  return out, err


def _png(path):
  return np.asarray(Image.open(path))


def test_t2i_out_dir_and_grid_deterministic(workdir, tmp_path):
  args = ["t2i", "--checkpoint", workdir, "--prompt", "a handwritten digit seven", "--prompt", "", "--num", 2,
          "--steps", 2, "--guidance", 1.5, "--seed", 3]
  _ok(*args, "--out-dir", tmp_path / "a", "--out", tmp_path / "grid.png")
  files = sorted(os.listdir(tmp_path / "a"))
  assert files == ["000.png", "001.png", "002.png", "003.png"]
  first = [_png(tmp_path / "a" / f) for f in files]
  assert all(x.shape == (RES, RES, 3) and x.dtype == np.uint8 for x in first)
  assert _png(tmp_path / "grid.png").shape == (RES + 2, 4 * (RES + 1) + 1, 3)  # one row of 4, 1-px gaps
  _ok(*args, "--out-dir", tmp_path / "b")
  for f, want in zip(files, first):
    np.testing.assert_array_equal(_png(tmp_path / "b" / f), want)


def test_t2i_long_prompt_is_truncated_with_a_warning(workdir, tmp_path):
  _, err = _ok("t2i", "--checkpoint", workdir, "--prompt", " ".join(["seven"] * 40), "--steps", 2,
               "--out", tmp_path / "x.png")
  assert "warning:" in err and "truncated" in err and "text budget is 10" in err  # T = 12: <|t2i|>, BOS, 10 ids, EOS
  assert _png(tmp_path / "x.png").shape == (RES + 2, RES + 2, 3)


def test_mmu_one_answer_per_image_in_order_and_json(workdir, images):
  paths = [images["rgb"], images["gray"], images["rgba"]]  # non-RGB and other sizes are converted
  out, _ = _ok("mmu", "--checkpoint", workdir, "--image", *paths, "--question", "What digit is this?",
               "--max-new-tokens", 4)
  lines = out.rstrip("\n").split("\n")
  assert len(lines) == 3
  out, _ = _ok("mmu", "--checkpoint", workdir, "--image", *paths, "--question", "What digit is this?",
               "--max-new-tokens", 4, "--json")
  rows = json.loads(out)
  assert [r["image"] for r in rows] == paths and [r["answer"] for r in rows] == lines
  assert all(set(r) == {"image", "answer"} and isinstance(r["answer"], str) for r in rows)


def test_inpaint_with_a_mask_of_another_size(workdir, images, tmp_path):
  _ok("inpaint", "--checkpoint", workdir, "--image", images["palette"], "--mask", images["mask"], "--prompt",
      "a handwritten digit one", "--steps", 2, "--out", tmp_path / "in.png")
  assert _png(tmp_path / "in.png").shape == (RES, RES, 3)


@pytest.mark.parametrize("direction,shape", [("left", (RES, 48)), ("right", (RES, 48)), ("up", (48, RES)),
                                             ("down", (48, RES))])
def test_extrapolate_grows_by_half_along_the_direction(workdir, images, tmp_path, direction, shape):
  _ok("extrapolate", "--checkpoint", workdir, "--image", images["rgb"], "--direction", direction, "--prompt",
      "a digit", "--steps", 2, "--out", tmp_path / "ex.png")
  assert _png(tmp_path / "ex.png").shape == shape + (3,)


def test_mixed_writes_text_and_images(workdir, tmp_path):
  _ok("mixed", "--checkpoint", workdir, "--prompt", "one two three", "--steps", 2, "--max-text-tokens", 4,
      "--out", tmp_path / "mix")
  assert os.path.exists(tmp_path / "mix" / "text.txt")
  for name in os.listdir(tmp_path / "mix"):
    if name.endswith(".png"):
      assert _png(tmp_path / "mix" / name).shape == (RES, RES, 3)


def test_mixed_temperatures_are_used_and_seeded(workdir, tmp_path):
  base = ["mixed", "--checkpoint", workdir, "--prompt", "one two", "--steps", 2, "--max-text-tokens", 6]
  texts = []
  for name, extra in (("a", ["--seed", 1]), ("b", ["--seed", 1]), ("c", ["--seed", 2])):
    _ok(*base, "--text-temperature", 5.0, *extra, "--out", tmp_path / name)
    with open(tmp_path / name / "text.txt") as f:
      texts.append(f.read())
  assert texts[0] == texts[1]  # the same seed gives the same sample
  assert texts[2] != texts[0]  # another seed samples other text: the temperature is sampling, not greedy
  _ok(*base, "--out", tmp_path / "greedy")  # greedy text, MaskGIT temperature 1
  _ok(*base, "--temperature", 0.0, "--out", tmp_path / "cold")
  with open(tmp_path / "greedy" / "text.txt") as f, open(tmp_path / "cold" / "text.txt") as g:
    greedy = f.read()
    assert greedy == g.read()  # the MaskGIT temperature does not touch greedy text
  assert greedy not in texts  # --text-temperature 5 changed what was sampled


def test_evaluate_writes_the_report(workdir):
  from showo_jax.evaluation import measures  # pylint: disable=g-import-not-at-top
  from showo_jax.evaluation import embedded_report  # pylint: disable=g-import-not-at-top
  from showo_jax.data import embedded  # pylint: disable=g-import-not-at-top
  from showo_jax.inference.pipeline import Pipeline  # pylint: disable=g-import-not-at-top
  report = embedded_report.evaluate(workdir, steps=2, guidance=1.0, per_class=1)
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f) == json.loads(json.dumps(report))
  assert report["guidance"] == 1.0 and report["maskgit_steps"] == 2
  pipe = Pipeline.from_checkpoint(workdir)
  images, _ = embedded.load_mnist()
  for split in ("validation", "test"):
    r = report[split]
    for key in ("mmu_accuracy", "t2i_class_consistency", "classifier_accuracy", "tokenizer_codebook_usage",
                "t2i_near_copies"):
      assert 0.0 <= r[key] <= 1.0, (split, key)
    assert r["classifier_accuracy"] >= 0.88  # the judge itself is trustworthy
    assert len(r["mmu_examples"]) == 10 and r["t2i_diversity"] >= 0.0
    assert 1.0 < r["lm_perplexity"] < 1e6
    # Cross-check the tokenizer figures with the pipeline used directly, on that split's digits.
    held_out = images[embedded.split_indices(len(images), split)]
    codes = pipe.encode(held_out)
    assert r["tokenizer_codebook_usage"] == measures.codebook_usage(codes, pipe.layout.codebook_size)
    assert abs(r["tokenizer_psnr"] - measures.psnr(held_out, pipe.decode(codes))) < 1e-3
  assert report["validation"]["mmu_examples"] != report["test"]["mmu_examples"] or \
      report["validation"]["tokenizer_psnr"] != report["test"]["tokenizer_psnr"]  # two different splits
  summary = _png(os.path.join(workdir, "eval.png"))
  assert summary.shape == (3 * 3 * (RES + 2), 3 * 10 * (RES + 2), 3)  # 1 sample row + originals + recon, ×3


def _bad_cases(wd, im, tmp):
  t2i = ["t2i", "--checkpoint", wd, "--prompt", "x", "--out", tmp / "o.png"]
  return {
      "missing image": (["mmu", "--checkpoint", wd, "--image", im["rgb"], im["missing"], "--question", "q"],
                        "missing.png: no such file"),
      "corrupt image": (["mmu", "--checkpoint", wd, "--image", im["corrupt"], "--question", "q"],
                        "corrupt.png: unreadable or corrupt image"),
      "corrupt mask": (["inpaint", "--checkpoint", wd, "--image", im["rgb"], "--mask", im["corrupt"], "--prompt",
                        "x", "--out", tmp / "o.png"], "corrupt.png: unreadable or corrupt image"),
      "steps 0": (t2i + ["--steps", "0"], "--steps must be >= 1, got 0"),
      "negative guidance": (t2i + ["--guidance", "-1"], "--guidance must be >= 0, got -1.0"),
      "unknown direction": (["extrapolate", "--checkpoint", wd, "--image", im["rgb"], "--direction", "diagonal",
                             "--prompt", "x", "--out", tmp / "o.png"], "--direction must be one of left, right"),
      "not a checkpoint": (["t2i", "--checkpoint", tmp, "--prompt", "x", "--out", tmp / "o.png"],
                           "no showo_jax training checkpoint here"),
      "no checkpoint folder": (["t2i", "--checkpoint", tmp / "nowhere", "--prompt", "x", "--out", "o.png"],
                               "nowhere: no such folder"),
      "no output": (["t2i", "--checkpoint", wd, "--prompt", "x"], "t2i needs --out"),
      "unknown mode": (["paint", "--checkpoint", wd], "invalid choice: 'paint'"),
      "missing option": (["mmu", "--checkpoint", wd, "--image", im["rgb"]], "--question"),
      "negative text temperature": (["mixed", "--checkpoint", wd, "--prompt", "x", "--text-temperature", "-1",
                                     "--out", tmp / "o.png"], "--text-temperature must be >= 0, got -1.0"),
  }


@pytest.mark.parametrize("case", ["missing image", "corrupt image", "corrupt mask", "steps 0", "negative guidance",
                                  "unknown direction", "not a checkpoint", "no checkpoint folder", "no output",
                                  "unknown mode", "missing option", "negative text temperature"])
def test_bad_input_is_one_error_line(workdir, images, tmp_path, case):
  argv, needle = _bad_cases(workdir, images, tmp_path)[case]
  code, out, err = _run(*argv)
  assert code == 2 and not out
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
  assert not os.path.exists(tmp_path / "o.png")


@pytest.fixture(scope="module")
def guided_workdir(tmp_path_factory):
  """A workdir whose config says how it is meant to be sampled: 3 steps, guidance 1.5, temperature 0.5, linear."""
  root = tmp_path_factory.mktemp("guided")
  config = train_fixtures.tiny_config(str(root / "data"), steps=1)
  config.train.update(sample_steps=3, sample_guidance=1.5, sample_temperature=0.5, sample_schedule="linear")
  wd = str(root / "run")
  trainer.train_and_evaluate(config, wd)
  train_fixtures.tiny_magvit_npz(os.path.join(wd, "tokenizer", "magvit.npz"))
  return wd


def test_t2i_defaults_come_from_the_checkpoint_and_flags_override_them(guided_workdir, tmp_path):
  from showo_jax.inference import pipeline  # pylint: disable=g-import-not-at-top
  prompt = "a handwritten digit seven"
  _, err = _ok("t2i", "--checkpoint", guided_workdir, "--prompt", prompt, "--num", 2, "--out-dir", tmp_path / "a")
  assert err.splitlines()[0] == ("t2i: steps 3, guidance 1.5, temperature 0.5, schedule linear (from the "
                                 "checkpoint's config.train.sample_*)")
  pipe = pipeline.Pipeline.from_checkpoint(guided_workdir)
  want = pipe.t2i([prompt] * 2, steps=3, guidance=1.5, temperature=0.5, schedule="linear", seed=0)
  for i, w in enumerate(want):
    np.testing.assert_array_equal(_png(tmp_path / "a" / f"{i:03d}.png"), w)
  # Without the checkpoint's settings the samples differ (so the defaults above were really used) ...
  other = pipe.t2i([prompt] * 2, steps=12, guidance=0.0, seed=0)
  assert not np.array_equal(other, want)
  # ... and a flag overrides only its own setting.
  _, err = _ok("t2i", "--checkpoint", guided_workdir, "--prompt", prompt, "--num", 2, "--guidance", 0,
               "--out-dir", tmp_path / "b")
  assert "guidance 0.0" in err.splitlines()[0] and "steps 3" in err.splitlines()[0] and "guidance from flags" in err
  got = np.stack([_png(tmp_path / "b" / f"{i:03d}.png") for i in range(2)])
  np.testing.assert_array_equal(got, pipe.t2i([prompt] * 2, steps=3, guidance=0.0, temperature=0.5,
                                              schedule="linear", seed=0))


def test_evaluate_uses_the_checkpoint_sampling_settings(guided_workdir):
  from showo_jax.evaluation import embedded_report  # pylint: disable=g-import-not-at-top
  report = embedded_report.evaluate(guided_workdir, per_class=1, guidance=None)
  assert report["sampling"] == {"steps": 3, "guidance": 1.5, "temperature": 0.5, "schedule": "linear"}


def test_a_lora_fine_tune_samples_with_its_adapters_as_its_merged_export_does(workdir, images, tmp_path):
  """LoRA from the fixture's run (init_from), adapter dropout on: `sample` applies the adapters (its images and
  answers differ from the base run's) without dropout (they equal those of the --merge-lora export, imported)."""
  from showo_jax import convert  # pylint: disable=g-import-not-at-top
  config = train_fixtures.tiny_config(os.path.join(os.path.dirname(workdir), "data"), steps=2)
  config.train.update(init_from=workdir, trainable="lora")
  config.model.lora.update(rank=2, alpha=16.0, dropout=0.2, targets="q,k,v,o,fc1,fc2")
  config.optimizer.update(lr=0.1, warmup_steps=0)
  lora_wd = str(tmp_path / "lora")
  trainer.train_and_evaluate(config, lora_wd)
  merged = str(tmp_path / "merged")
  assert convert.main(["export", "--checkpoint", lora_wd, "--output", str(tmp_path / "official"),
                       "--merge-lora"]) == 0
  assert convert.main(["import", "--input", str(tmp_path / "official"), "--output", merged]) == 0
  tokenizers = ["--tokenizer", os.path.join(workdir, "tokenizer", "magvit.npz"), "--text-tokenizer",
                config.text_tokenizer.path]
  outputs = {}
  for name, ckpt in (("base", workdir), ("lora", lora_wd), ("merged", merged)):
    _ok("t2i", "--checkpoint", ckpt, *tokenizers, "--prompt", "a handwritten digit two", "--num", 2, "--steps", 4,
        "--seed", 1, "--out-dir", tmp_path / f"images_{name}")
    answers, _ = _ok("mmu", "--checkpoint", ckpt, *tokenizers, "--image", images["rgb"], images["gray"],
                     "--question", "What digit is this?", "--max-new-tokens", 6, "--json")
    folder = tmp_path / f"images_{name}"
    pngs = [_png(folder / f) for f in sorted(os.listdir(folder))]
    outputs[name] = (np.stack(pngs), [r["answer"] for r in json.loads(answers)])
  np.testing.assert_array_equal(outputs["lora"][0], outputs["merged"][0])
  assert outputs["lora"][1] == outputs["merged"][1]
  assert not np.array_equal(outputs["lora"][0], outputs["base"][0]) or outputs["lora"][1] != outputs["base"][1]
