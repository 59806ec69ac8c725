"""POPE and MME scoring on hand-written answer files, figures worked out by hand in the comments."""

import json

import pytest

from showo_jax.evaluation import understanding


def test_pope_parses_answers_as_its_scorer_and_scores_them(tmp_path):
  questions = tmp_path / "coco_pope_random.jsonl"
  labels = ["yes", "yes", "no", "no", "yes"]
  questions.write_text("".join(json.dumps({"question_id": i, "image": f"{i}.jpg", "text": "Is there a dog?",
                                           "label": l}) + "\n" for i, l in enumerate(labels)))
  texts = ["Yes, there is a dog.",           # yes
           "No.",                            # no
           "There is no cat in the image.",  # no
           "Yes",                            # yes
           "I think so. No doubt"]           # only the first sentence counts: yes
  answers = tmp_path / "answers.jsonl"
  # written out of order: answers are matched by question_id
  answers.write_text("".join(json.dumps({"question_id": i, "text": texts[i]}) + "\n" for i in (4, 2, 0, 1, 3)))
  got = understanding.pope_files(str(questions), str(answers))
  # truth y y n n y, predicted y n n y y: tp 2, fn 1, tn 1, fp 1
  assert got["accuracy"] == pytest.approx(3 / 5)
  assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == pytest.approx(2 / 3)
  assert got["f1"] == pytest.approx(2 / 3) and got["yes_ratio"] == pytest.approx(3 / 5)
  assert understanding.pope_answer("Not sure") == "yes"  # the scorer's words are case-sensitive: 'Not' is not 'not'
  assert understanding.pope_answer("it is not a dog") == "no"


def test_mme_sums_accuracy_and_accuracy_plus_per_task(tmp_path):
  (tmp_path / "existence.txt").write_text(
      "1.jpg\tIs there a dog?\tYes\tYes\n"
      "1.jpg\tIs there a cat?\tNo\tNo, there is not.\n"   # image 1: both right
      "2.jpg\tIs there a car?\tYes\tno\n"
      "2.jpg\tIs there a bus?\tNo\tNo\n")                 # image 2: one of two
  (tmp_path / "code_reasoning.txt").write_text(
      "3.png\tDoes it print 3?\tYes\tMaybe\n"            # neither yes nor no: wrong
      "3.png\tDoes it print 4?\tNo\tno\n")
  got = understanding.mme_folder(str(tmp_path))
  assert got["tasks"]["existence"] == pytest.approx(100 * (3 / 4 + 1 / 2))
  assert got["tasks"]["code_reasoning"] == pytest.approx(100 * (1 / 2 + 0))
  assert got["perception"] == pytest.approx(125.0) and got["cognition"] == pytest.approx(50.0)


@pytest.mark.parametrize("case", ["missing answer", "unknown task", "three fields", "no files", "bad label"])
def test_bad_answer_files_are_one_line_errors(tmp_path, case):
  if case in ("missing answer", "bad label"):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": 1, "label": "maybe" if case == "bad label" else "yes"}) + "\n"
                 + json.dumps({"question_id": 2, "label": "no"}) + "\n")
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"question_id": 1, "text": "yes"}) + "\n"
                 + (json.dumps({"question_id": 2, "text": "no"}) + "\n" if case == "bad label" else ""))
    with pytest.raises(ValueError, match="labels must be yes or no" if case == "bad label" else "no answer"):
      understanding.pope_files(str(q), str(a))
    return
  if case == "unknown task":
    (tmp_path / "counting.txt").write_text("1.jpg\tq\tYes\tYes\n")
  elif case == "three fields":
    (tmp_path / "count.txt").write_text("1.jpg\tq\tYes\n")
  with pytest.raises(ValueError, match={"unknown task": "unknown task 'counting'", "three fields": "3 tab-separated",
                                        "no files": "no TASK.txt"}[case]):
    understanding.mme_folder(str(tmp_path))
