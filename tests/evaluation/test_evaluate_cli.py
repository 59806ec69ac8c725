"""`python -m showo_jax.evaluate MODE` end to end on a 2-step tiny model, a random tiny MAGVIT, a random FID
InceptionV3 and a tiny random CLIP: GenEval's layout and resume, FID and CLIP score of folders, the understanding
benchmarks' answer files and scores, and bad inputs as one `error:` line with exit status 2."""

import json
import os

import numpy as np
import pytest
import safetensors.numpy
import tokenizers
from PIL import Image

from showo_jax import evaluate
from showo_jax.evaluation import clip
from showo_jax.evaluation import frechet
from showo_jax.evaluation import image_metrics
from showo_jax.evaluation import inception
from showo_jax.evaluation import understanding
from showo_jax.inference import pipeline
from tests import train_fixtures
from tests.evaluation import golden_weights

# One worker runs the whole module (setup.cfg: --dist loadgroup), so its trained fixtures are built once.
pytestmark = pytest.mark.xdist_group("evaluate_cli")

GOLDENS = os.path.join(os.path.dirname(__file__), "goldens")
PROMPTS = ["a handwritten digit three", "a handwritten digit seven", "a handwritten digit one"]


def _run(*argv):
  return train_fixtures.run_main(evaluate.main, *argv)


def _ok(*argv):
  code, out, err = _run(*argv)
  assert code == 0, err[-3000:]
  return json.loads(out)


def _bad(*argv, match):
  code, out, err = _run(*argv)
  lines = err.strip().splitlines()
  assert code == 2 and lines and lines[-1].startswith("error:"), (code, err[-2000:])
  assert match in lines[-1], lines[-1]
  return lines[-1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("evaluate_cli")
  return train_fixtures.shared_trained_workdir(tmp_path_factory, root)


@pytest.fixture(scope="module")
def generated(workdir, tmp_path_factory):
  root = tmp_path_factory.mktemp("geneval")
  prompts = root / "evaluation_metadata.jsonl"
  rows = [{"tag": "single_object", "include": [{"class": p.split()[-1], "count": 1}], "prompt": p} for p in PROMPTS]
  prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = root / "out"
  args = ("geneval", "--checkpoint", workdir, "--prompts", prompts, "--out", out, "--images-per-prompt", 2,
          "--batch-size", 4, "--steps", 3, "--guidance", 1.5)
  first = _ok(*args)
  return {"args": args, "out": out, "rows": rows, "first": first}


def test_geneval_writes_its_layout_with_the_settings(generated):
  out, rows = generated["out"], generated["rows"]
  assert generated["first"]["generated"] == 6 and generated["first"]["kept"] == 0
  assert sorted(os.listdir(out)) == ["00000", "00001", "00002", "settings.json"]
  for i, row in enumerate(rows):
    assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) == row
    assert sorted(os.listdir(out / f"{i:05d}" / "samples")) == ["00000.png", "00001.png"]
    assert np.asarray(Image.open(out / f"{i:05d}" / "samples" / "00000.png")).shape == (32, 32, 3)
  settings = json.loads((out / "settings.json").read_text())
  assert settings["steps"] == 3 and settings["guidance"] == 1.5 and settings["images_per_prompt"] == 2
  assert settings["temperature"] == 1.0 and settings["schedule"] == "cosine"


def test_geneval_rerun_fills_only_missing_images_with_the_same_pixels(generated):
  out = generated["out"]
  before = {p: np.asarray(Image.open(out / p)) for p in ("00000/samples/00001.png", "00002/samples/00000.png")}
  os.remove(out / "00000/samples/00001.png")
  (out / "00002/samples/00000.png").write_bytes(b"\x89PNG truncated")  # an interrupted write
  again = _ok(*generated["args"])
  assert again == dict(again, generated=2, kept=4)
  for p, image in before.items():
    np.testing.assert_array_equal(np.asarray(Image.open(out / p)), image)
  assert _ok(*generated["args"])["generated"] == 0


def test_geneval_refuses_other_settings_and_bad_prompt_files(generated, tmp_path):
  args = list(generated["args"])
  args[args.index("--steps") + 1] = 4
  _bad(*args, match="holds images made with other settings (steps 3 → 4)")
  args = list(generated["args"])
  args[args.index("--prompts") + 1] = tmp_path / "none.jsonl"
  _bad(*args, match="none.jsonl: no such file")
  (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"tag": "no prompt"}\n')
  args[args.index("--prompts") + 1] = tmp_path / "bad.jsonl"
  _bad(*args, match='bad.jsonl:2: need a JSON object with a non-empty "prompt" string')


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
  with np.load(os.path.join(GOLDENS, "fid_inception.npz")) as f:
    names = json.loads(str(f["names"]))
  path = tmp_path_factory.mktemp("fid") / "pt_inception.safetensors"
  safetensors.numpy.save_file(golden_weights.state_dict(names), str(path))
  return str(path)


def _image_folder(folder, n, seed):
  os.makedirs(folder)
  rng = np.random.default_rng(seed)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
  return folder


def test_fid_of_folders_and_of_cached_statistics(tmp_path, inception_file):
  real, fake = _image_folder(tmp_path / "real", 3, 0), _image_folder(tmp_path / "fake", 4, 1)
  odd = np.random.default_rng(5).integers(0, 256, (40, 48, 3), dtype=np.uint8)
  Image.fromarray(odd).save(fake / "1.png")  # another size between two: its own batch
  stats = tmp_path / "real_stats.npz"
  r = _ok("fid", "--real", real, "--fake", fake, "--inception", inception_file, "--batch-size", 2,
          "--save-real-stats", stats)
  # the figure is the float64 Fréchet distance of the two sets' pool features (a set against itself gives 0:
  # tests/evaluation/test_frechet.py); the cached statistics are the real set's, and --real stats.npz reads them
  variables = inception.load_weights(inception_file)
  feats = [image_metrics.inception_features(str(d), variables, batch_size=2, log=lambda _: None) for d in (real, fake)]
  mu, sigma = frechet.statistics(feats[0])
  want = frechet.distance(mu, sigma, *frechet.statistics(feats[1]))
  assert r["fid"] == pytest.approx(want, rel=1e-6) and r["fid"] > 1.0 and r["fake_images"] == 4
  alone = np.asarray(inception.features(variables, np.stack([odd, odd])))[0]
  np.testing.assert_allclose(feats[1][1], alone, rtol=1e-5, atol=1e-5)
  assert np.all(np.abs(feats[1]).sum(1) > 0)
  cached = image_metrics.folder_statistics(str(stats), None)
  np.testing.assert_allclose(cached[0], mu, rtol=1e-12)
  np.testing.assert_allclose(cached[1], sigma, rtol=1e-12, atol=1e-12)


def test_fid_bad_inputs_are_one_line(tmp_path, inception_file):
  os.makedirs(tmp_path / "empty")
  real = _image_folder(tmp_path / "real", 2, 0)
  _bad("fid", "--real", real, "--fake", tmp_path / "empty", "--inception", inception_file, match="no image files")
  _bad("fid", "--real", tmp_path / "nowhere", "--fake", real, "--inception", inception_file, match="no such folder")
  bad = tmp_path / "bad.safetensors"
  safetensors.numpy.save_file({"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 2), np.float32)}, str(bad))
  _bad("fid", "--real", real, "--fake", real, "--inception", bad, match="the FID InceptionV3 needs (32, 3, 3, 3)")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
  """A tiny random CLIP in the HF layout, with a word-level tokenizer.json that ends texts with the largest id."""
  folder = tmp_path_factory.mktemp("clip")
  with np.load(os.path.join(GOLDENS, "clip.npz")) as f:
    names, config = json.loads(str(f["names"])), json.loads(str(f["config"]))
  (folder / "config.json").write_text(json.dumps(config))
  safetensors.numpy.save_file(golden_weights.state_dict(names), str(folder / "model.safetensors"))
  words = sorted({w for p in PROMPTS for w in p.split()} | {"a", "photo"})
  vocab = {"[UNK]": 0, **{w: i + 3 for i, w in enumerate(words)}, "<s>": 98, "</s>": 99}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A </s>",
                                                                special_tokens=[("<s>", 98), ("</s>", 99)])
  tok.save(str(folder / "tokenizer.json"))
  (folder / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 32},
                                                               "crop_size": {"height": 32, "width": 32}}))
  return str(folder)


def test_clipscore_of_geneval_folders_pairs_each_image_with_its_prompt(generated, clip_folder):
  r = _ok("clipscore", "--folder", generated["out"], "--clip", clip_folder, "--batch-size", 4)
  model = clip.ClipModel(clip_folder)
  scores = []
  for i, prompt in enumerate(PROMPTS):
    for s in range(2):
      image = model.image_embeddings([Image.open(generated["out"] / f"{i:05d}" / "samples" / f"{s:05d}.png")])[0]
      text = model.text_embeddings([prompt])[0]
      scores.append(max(float(image @ text / np.linalg.norm(image) / np.linalg.norm(text)), 0.0))
  assert r["images"] == 6 and r["clip_score"] == pytest.approx(100 * np.mean(scores), rel=1e-4)


def test_clipscore_needs_a_caption_for_every_image(tmp_path, clip_folder):
  folder = _image_folder(tmp_path / "plain", 2, 0)
  (tmp_path / "plain" / "0.txt").write_text("a handwritten digit one")
  _bad("clipscore", "--folder", folder, "--clip", clip_folder, match="1.png: no caption")
  (tmp_path / "plain" / "1.txt").write_text("a handwritten digit seven")
  _bad("clipscore", "--folder", folder, "--clip", tmp_path, match="no config.json")


def _digits(folder, n):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(3)
  names = []
  for i in range(n):
    names.append(f"COCO_val2014_{i:012d}.jpg")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(os.path.join(folder, names[-1]))
  return names


def test_pope_answers_batched_equal_one_at_a_time_and_are_scored(workdir, tmp_path):
  names = _digits(tmp_path / "coco", 5)
  questions = [{"question_id": i, "image": names[i], "text": t, "label": l} for i, (t, l) in
               enumerate([("Is there a dog in the image?", "yes"), ("Is there a cat?", "no"),
                          ("Is there a digit in the image?", "yes"), ("Is there a person?", "no"),
                          ("Is there a car in the image, next to a tree?", "no")])]
  qfile = tmp_path / "pope.jsonl"
  qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))
  out = tmp_path / "answers.jsonl"
  r = _ok("pope", "--checkpoint", workdir, "--questions", qfile, "--images", tmp_path / "coco", "--out", out,
          "--batch-size", 4, "--max-new-tokens", 4)
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [row["question_id"] for row in rows] == list(range(5))
  scored = understanding.pope_files(str(qfile), str(out))
  assert (r["accuracy"], r["f1"]) == (scored["accuracy"], scored["f1"])
  pipe = pipeline.Pipeline.from_checkpoint(workdir)
  from showo_jax.data import images as images_lib  # pylint: disable=g-import-not-at-top
  for q, row in zip(questions, rows):  # left padding and batching change nothing under greedy decoding
    codes = pipe.encode(images_lib.load_image(str(tmp_path / "coco" / q["image"]), 32)[None])
    one = pipe.mmu(codes, q["text"] + "\nAnswer the question using a single word or phrase.", max_new_tokens=4,
                   pad_multiple=32)
    assert row["text"] == one[0]
  _bad("pope", "--checkpoint", workdir, "--questions", qfile, "--images", tmp_path, "--out", out,
       match="pope.jsonl:1: image 'COCO_val2014_000000000000.jpg' is not in --images")


def test_mme_vqa_and_mmmu_files_in_each_benchmarks_format(workdir, tmp_path):
  root = tmp_path / "MME"
  names = _digits(root / "existence", 2)
  for n in names:
    (root / "existence" / (n[:-4] + ".txt")).write_text("Is there a digit? Please answer yes or no.\tYes\n"
                                                        "Is there a cat? Please answer yes or no.\tNo\n")
  art = _digits(root / "artwork" / "images", 1)
  os.makedirs(root / "artwork" / "questions_answers_YN")
  (root / "artwork" / "questions_answers_YN" / (art[0][:-4] + ".txt")).write_text("Is it a painting?\tNo\n")
  r = _ok("mme", "--checkpoint", workdir, "--root", root, "--out", tmp_path / "mme_out", "--batch-size", 4,
          "--max-new-tokens", 4)
  lines = (tmp_path / "mme_out" / "existence.txt").read_text().splitlines()
  assert len(lines) == 4 and all(len(l.split("\t")) == 4 for l in lines) and lines[0].split("\t")[2] == "Yes"
  assert r["perception"] == understanding.mme_folder(str(tmp_path / "mme_out"))["perception"]

  coco = tmp_path / "coco"
  names = _digits(coco, 2)
  for name in names:  # test-dev questions name the test2015 images
    os.rename(coco / name, coco / name.replace("val2014", "test2015"))
  names = [name.replace("val2014", "test2015") for name in names]
  vqa = {"data_subtype": "test-dev2015", "questions": [{"question_id": 7, "image_id": 0, "question": "What is it?"},
                                                  {"question_id": 9, "image_id": 1, "question": "How many?"}]}
  (tmp_path / "vqa.json").write_text(json.dumps(vqa))
  _ok("vqa", "--checkpoint", workdir, "--questions", tmp_path / "vqa.json", "--images", coco, "--format", "vqav2",
      "--out", tmp_path / "vqa_answers.json", "--batch-size", 4, "--max-new-tokens", 4)
  answers = json.loads((tmp_path / "vqa_answers.json").read_text())
  assert [a["question_id"] for a in answers] == [7, 9] and all(isinstance(a["answer"], str) for a in answers)

  os.rename(coco / names[0], coco / "n161313.jpg")
  (tmp_path / "gqa.json").write_text(json.dumps({"201": {"imageId": "n161313", "question": "What color?"}}))
  _ok("vqa", "--checkpoint", workdir, "--questions", tmp_path / "gqa.json", "--images", coco, "--format", "gqa",
      "--out", tmp_path / "gqa_answers.json", "--batch-size", 4, "--max-new-tokens", 4)
  assert [a["questionId"] for a in json.loads((tmp_path / "gqa_answers.json").read_text())] == ["201"]

  mmmu = [{"id": "validation_Art_1", "question": "<image 1> Which style?", "options": "['Baroque', 'Cubism']",
           "image": names[1], "question_type": "multiple-choice"},
          {"id": "validation_Math_2", "question": "What is x?", "options": [], "images": [names[1]],
           "question_type": "open"}]
  (tmp_path / "mmmu.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mmmu))
  _ok("mmmu", "--checkpoint", workdir, "--questions", tmp_path / "mmmu.jsonl", "--images", coco,
      "--out", tmp_path / "mmmu.json", "--batch-size", 4, "--max-new-tokens", 4)
  assert set(json.loads((tmp_path / "mmmu.json").read_text())) == {"validation_Art_1", "validation_Math_2"}
  _bad("mme", "--checkpoint", workdir, "--root", tmp_path / "coco", "--out", tmp_path / "o",
       match="no MME task folders")


def test_the_report_card_keeps_its_old_spelling():
  assert evaluate._parser().parse_args(["embedded", "--workdir", "w", "--per_class", "3"]).per_class == 3  # pylint: disable=protected-access
  code, _, err = _run("--workdir", "/nonexistent/run", "--per_class", "1")
  assert code == 2 and "error:" in err
