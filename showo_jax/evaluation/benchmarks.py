"""Answer files of the understanding benchmarks, from local copies of their question files and images.

Each reader turns a benchmark's question file into items (id, image path, prompt text); `answer_all` answers them
in batches with an `answer(image_paths, prompts)` closure (the CLI's: Show-o's KV-cached greedy decoding with the
MMU inference template "USER: \\n{prompt} ASSISTANT:"); each writer stores the answers in the benchmark's own
format. The prompt suffixes are LLaVA's evaluation prompts, which the Show-o paper follows:

  POPE, VQAv2, GQA, MME   "{question}\\nAnswer the question using a single word or phrase."
  MMMU multiple choice    "{question}\\nA. …\\nB. …\\nAnswer with the option's letter from the given choices
                           directly."

MMMU questions with several images are answered on the first (Show-o takes one image per prompt).
"""

import ast
import json

from showo_jax.common import paths
from showo_jax.evaluation import understanding

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def _image(root: str, name: str, where: str) -> str:
  path = paths.join(root, name)
  if not paths.isfile(path):
    raise FileNotFoundError(f"{where}: image {name!r} is not in --images {root}")
  return path


def _json(path: str, what: str):
  if not paths.isfile(path):
    raise FileNotFoundError(f"--questions {path}: no such file")
  try:
    return json.loads(paths.read_text(path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not a {what} JSON file ({e.msg} at line {e.lineno})") from None


def pope_items(questions: str, images: str) -> list:
  """POPE's question file (JSONL: question_id, image, text[, label])."""
  items = []
  for n, row in paths.read_jsonl(questions, "--questions"):
    try:
      items.append({"id": row["question_id"], "image": _image(images, row["image"], f"{questions}:{n}"),
                    "prompt": row["text"] + SHORT, "question": row["text"], "label": row.get("label")})
    except KeyError as e:
      raise ValueError(f"{questions}:{n}: no {e.args[0]!r} (POPE lines hold question_id, image, text)") from None
  return items


def write_pope(out: str, items: list, answers: list):
  """LLaVA's answer file (JSONL: question_id, prompt, text), which POPE's scorer reads."""
  lines = [json.dumps({"question_id": it["id"], "prompt": it["question"], "text": a}) for it, a in zip(items, answers)]
  paths.write_text(out, "\n".join(lines) + "\n")
  labels = [it["label"] for it in items]
  return understanding.pope_scores(labels, answers) if all(l is not None for l in labels) else {}


def mme_items(root: str) -> list:
  """MME's release folder: per task either images + a .txt of `question<TAB>answer` lines beside each, or
  images/ and questions_answers_YN/ subfolders."""
  if not paths.isdir(root):
    raise FileNotFoundError(f"--root {root}: no such folder")
  items = []
  for task in understanding.MME_PERCEPTION + understanding.MME_COGNITION:
    folder = paths.join(root, task)
    if not paths.isdir(folder):
      continue
    split = paths.isdir(paths.join(folder, "questions_answers_YN"))
    qa_dir, image_dir = folder, folder
    if split:
      qa_dir, image_dir = paths.join(folder, "questions_answers_YN"), paths.join(folder, "images")
    for name in sorted(paths.listdir(qa_dir)):
      if not name.endswith(".txt"):
        continue
      stem = name[:-4]
      image = next((f"{stem}{ext}" for ext in (".jpg", ".png", ".jpeg", ".JPG", ".PNG")
                    if paths.isfile(paths.join(image_dir, f"{stem}{ext}"))), None)
      if image is None:
        raise FileNotFoundError(f"{paths.join(qa_dir, name)}: no image {stem}.jpg/.png beside it")
      for n, line in enumerate(paths.read_text(paths.join(qa_dir, name)).splitlines(), 1):
        if not line.strip():
          continue
        question, sep, truth = line.rstrip("\n").partition("\t")
        if not sep:
          raise ValueError(f"{paths.join(qa_dir, name)}:{n}: expected question<TAB>answer")
        items.append({"task": task, "image_name": image, "image": paths.join(image_dir, image),
                      "question": question, "truth": truth.strip(), "prompt": question + SHORT})
  if not items:
    raise ValueError(f"--root {root}: no MME task folders ({', '.join(understanding.MME_PERCEPTION[:3])}, …)")
  return items


def write_mme(out: str, items: list, answers: list) -> dict:
  """One TASK.txt per task (`image<TAB>question<TAB>truth<TAB>answer`, MME's eval-tool format), then the scores."""
  by_task = {}
  for it, a in zip(items, answers):
    by_task.setdefault(it["task"], []).append("\t".join((it["image_name"], it["question"], it["truth"],
                                                         a.replace("\t", " ").replace("\n", " "))))
  for task, lines in by_task.items():
    paths.write_text(paths.join(out, f"{task}.txt"), "\n".join(lines) + "\n")
  return understanding.mme_folder(out)


def vqa_items(questions: str, images: str, fmt: str) -> list:
  """VQAv2's official questions JSON ({"data_subtype", "questions": [{question_id, image_id, question}]}, images
  COCO_{subtype}_{image_id:012d}.jpg, test-dev's being test2015's) or GQA's ({question_id: {imageId, question}}, images {imageId}.jpg)."""
  data = _json(questions, fmt)
  items = []
  try:
    if fmt == "vqav2":
      subtype = data["data_subtype"].replace("test-dev", "test")  # test-dev questions are on test2015 images
      for q in data["questions"]:
        items.append({"id": q["question_id"], "prompt": q["question"] + SHORT,
                      "image": _image(images, f"COCO_{subtype}_{q['image_id']:012d}.jpg", questions)})
    else:
      for qid, q in data.items():
        items.append({"id": qid, "prompt": q["question"] + SHORT,
                      "image": _image(images, f"{q['imageId']}.jpg", questions)})
  except (KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{questions}: not a {fmt} questions file (missing {e})") from None
  if not items:
    raise ValueError(f"--questions {questions}: no questions in the file")
  return items


def clean_short_answer(text: str) -> str:
  """What the VQA servers expect of a short answer: one line, no trailing period."""
  return text.strip().split("\n")[0].rstrip(".").strip()


def write_vqa(out: str, items: list, answers: list, fmt: str):
  """VQAv2: [{"question_id", "answer"}] for EvalAI; GQA: [{"questionId", "prediction"}] for its eval.py."""
  key, value = ("question_id", "answer") if fmt == "vqav2" else ("questionId", "prediction")
  paths.write_text(out, json.dumps([{key: it["id"], value: clean_short_answer(a)} for it, a in zip(items, answers)]))


def _options(row, where):
  options = row.get("options", [])
  if isinstance(options, str):
    try:
      options = ast.literal_eval(options)  # the HF dataset stores them as a Python list's repr
    except (ValueError, SyntaxError):
      raise ValueError(f"{where}: options {options[:40]!r} is not a list") from None
  return list(options)


def mmmu_items(questions: str, images: str) -> list:
  """MMMU questions (JSONL: id, question, options, image or images[, question_type])."""
  items = []
  for n, row in paths.read_jsonl(questions, "--questions"):
    where = f"{questions}:{n}"
    try:
      image = row["image"] if "image" in row else row["images"][0]
      options = _options(row, where)
      letters = [chr(ord("A") + i) for i in range(len(options))]
      choice = row.get("question_type", "multiple-choice" if options else "open") == "multiple-choice"
      prompt = row["question"] + ("".join(f"\n{l}. {o}" for l, o in zip(letters, options)) + LETTER
                                  if choice else SHORT)
      items.append({"id": row["id"], "prompt": prompt, "image": _image(images, image, where),
                    "letters": letters if choice else []})
    except (KeyError, IndexError) as e:
      raise ValueError(f"{where}: no {e.args[0]!r} (MMMU lines hold id, question, options, image)") from None
  return items


def write_mmmu(out: str, items: list, answers: list):
  """{id: answer} as MMMU's evaluation script reads it: the option letter for multiple choice (the first letter
  the answer starts with, else the first option letter it mentions), the short answer otherwise."""
  result = {}
  for it, a in zip(items, answers):
    a = clean_short_answer(a)
    if it["letters"]:
      head = a[:1].upper()
      a = head if head in it["letters"] else next((l for l in it["letters"] if f"({l})" in a or f"{l}." in a), a)
    result[it["id"]] = a
  paths.write_text(out, json.dumps(result, indent=1))


def answer_all(items: list, answer, *, batch_size: int, log=print) -> list:
  """Answers in batches of `batch_size`; `answer(image_paths, prompts)` → list of strings."""
  out = []
  for k in range(0, len(items), batch_size):
    batch = items[k:k + batch_size]
    out.extend(answer([it["image"] for it in batch], [it["prompt"] for it in batch]))
    log(f"answers: {len(out)}/{len(items)}")
  return out
