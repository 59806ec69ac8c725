"""Local scoring of the yes/no understanding benchmarks: POPE (accuracy, precision, recall, F1, yes ratio) and MME
(per-task score = 100·(accuracy + accuracy+), summed over the perception and the cognition tasks).

The answer parsing follows each benchmark's own scorer: POPE keeps the first sentence of an answer and reads it as
"no" when one of its words is no/not, else "yes" (LLaVA's POPE script); MME lower-cases an answer and reads "yes" or
"no" from its start, anything else being wrong for both labels (MME's eval tool).
"""

import collections
import re

from showo_jax.common import paths

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def pope_answer(text: str) -> str:
  """'yes' or 'no' as POPE's scorer reads a free-form answer."""
  first = text.split(".")[0] if "." in text else text
  words = re.sub(r"[^\w\s]", " ", first).split()
  return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def pope_scores(labels, answers) -> dict:
  """labels: 'yes'/'no' ground truths; answers: the model's texts, in the same order."""
  if len(labels) != len(answers):
    raise ValueError(f"POPE: {len(labels)} questions but {len(answers)} answers")
  if not labels:
    raise ValueError("POPE: no questions to score")
  pred = [pope_answer(a) for a in answers]
  truth = [str(l).strip().lower() for l in labels]
  bad = sorted({t for t in truth if t not in ("yes", "no")})
  if bad:
    raise ValueError(f"POPE: labels must be yes or no, got {bad[:3]}")
  tp = sum(p == "yes" and t == "yes" for p, t in zip(pred, truth))
  fp = sum(p == "yes" and t == "no" for p, t in zip(pred, truth))
  tn = sum(p == "no" and t == "no" for p, t in zip(pred, truth))
  fn = sum(p == "no" and t == "yes" for p, t in zip(pred, truth))
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  return {"accuracy": (tp + tn) / len(truth), "precision": precision, "recall": recall,
          "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
          "yes_ratio": pred.count("yes") / len(pred), "num_questions": len(truth)}


def pope_files(questions: str, answers: str) -> dict:
  """POPE from its question file (JSONL `question_id`, `label`) and an answer file (JSONL `question_id`, `text`)."""
  qs = [row for _, row in paths.read_jsonl(questions, "POPE question file")]
  given = {}
  for _, row in paths.read_jsonl(answers, "POPE answer file"):
    given[row["question_id"]] = row["text"]
  missing = [q["question_id"] for q in qs if q["question_id"] not in given]
  if missing:
    raise ValueError(f"POPE: {len(missing)} questions have no answer in {answers}, e.g. {missing[0]!r}")
  return pope_scores([q["label"] for q in qs], [given[q["question_id"]] for q in qs])


def mme_answer(text: str) -> str:
  """'yes', 'no' or 'other' as MME's eval tool reads an answer."""
  t = text.strip().lower()
  return "yes" if t.startswith("yes") else "no" if t.startswith("no") else "other"


def mme_scores(rows) -> dict:
  """rows: (task, image, ground truth 'Yes'/'No', answer text). Per task 100·(acc + acc+), where acc+ is the share
  of images whose questions (two per image in MME) are all right; sums over perception and cognition."""
  by_task = collections.defaultdict(lambda: collections.defaultdict(list))
  for task, image, truth, answer in rows:
    by_task[task][image].append(mme_answer(answer) == str(truth).strip().lower())
  unknown = sorted(set(by_task) - set(MME_PERCEPTION) - set(MME_COGNITION))
  if unknown:
    raise ValueError(f"MME: unknown task {unknown[0]!r} (tasks: {', '.join(MME_PERCEPTION + MME_COGNITION)})")
  tasks = {}
  for task, images in by_task.items():
    answers = [ok for oks in images.values() for ok in oks]
    tasks[task] = 100.0 * (sum(answers) / len(answers) + sum(all(oks) for oks in images.values()) / len(images))
  return {"tasks": tasks,
          "perception": sum(v for k, v in tasks.items() if k in MME_PERCEPTION),
          "cognition": sum(v for k, v in tasks.items() if k in MME_COGNITION)}


def mme_folder(folder: str) -> dict:
  """MME from a folder of its eval tool's answer files: `TASK.txt`, lines `image<TAB>question<TAB>truth<TAB>answer`."""
  rows = []
  files = sorted(f for f in paths.listdir(folder) if f.endswith(".txt"))
  if not files:
    raise ValueError(f"MME: no TASK.txt answer files in {folder}")
  for name in files:
    task = name[:-len(".txt")]
    for n, line in enumerate(paths.read_text(paths.join(folder, name)).splitlines(), 1):
      if not line.strip():
        continue
      parts = line.split("\t")
      if len(parts) != 4:
        raise ValueError(f"MME: {name} line {n} has {len(parts)} tab-separated fields, not 4 "
                         "(image, question, truth, answer)")
      rows.append((task, parts[0], parts[2], parts[3]))
  return mme_scores(rows)
