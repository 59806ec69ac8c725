"""The fine-tuning demo's figures (embedded_report._sideways_report) on a stand-in pipeline whose answers and
images are known: the accuracy counts turned digits as "yes" and upright ones as "no", and the T2I judge is a
classifier of turned digits."""

import numpy as np

from showo_jax.data import embedded
from showo_jax.evaluation import embedded_report


class _Pipe:
  """Answers every question with `answer`; draws for each prompt a real digit of the prompt's class, turned when
  `turned`."""

  def __init__(self, answer, turned, digits, labels):
    self.answer, self.turned, self.digits, self.labels = answer, turned, digits, labels

  def encode(self, pictures):
    return np.zeros((len(pictures), 4), np.int32)

  def mmu(self, codes, question, max_new_tokens):
    assert question == embedded.SIDEWAYS_QUESTION
    return [self.answer] * len(codes)

  def t2i(self, prompts, seed, **settings):
    del settings
    rng = np.random.default_rng(seed)
    words = [p.split()[3] for p in prompts]
    assert all(p.endswith(" on its side") for p in prompts)
    picks = [rng.choice(np.flatnonzero(self.labels == embedded.DIGITS.index(w))) for w in words]
    out = self.digits[picks]
    return embedded.turn_sideways(out) if self.turned else out


def test_sideways_figures_on_known_answers_and_images():
  digits, labels = embedded.load_mnist()
  test = embedded.split_indices(len(digits), "test")
  judge = embedded_report.digit_judge("sideways")
  draw = lambda answer, turned: embedded_report._sideways_report(  # pylint: disable=protected-access
      _Pipe(answer, turned, digits[test], labels[test]), judge, digits[test], labels[test], {}, per_class=5, seed=0)
  yes = draw("Yes.", turned=True)
  assert yes["sideways_mmu_accuracy"] == 0.5  # right on the 500 turned digits, wrong on the 500 upright ones
  assert draw("no", turned=True)["sideways_mmu_accuracy"] == 0.5
  assert yes["sideways_classifier_accuracy"] >= 0.85 and yes["sideways_t2i_class_consistency"] >= 0.85
  upright = draw("yes", turned=False)  # upright drawings of the right digit do not pass for turned ones
  assert upright["sideways_t2i_class_consistency"] < 0.5
