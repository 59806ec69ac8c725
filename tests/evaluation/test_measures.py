"""The evaluation pieces against literal values and float64 recomputations; the pixel judge on real digits."""

import jax.numpy as jnp
import numpy as np

from showo_jax.config import showo as showo_config
from showo_jax.data import embedded
from showo_jax.data import prompting
from showo_jax.evaluation import embedded_report
from showo_jax.evaluation import measures

from tests import train_fixtures


def test_psnr_literal():
  originals = np.zeros((2, 2, 2, 3), np.uint8)
  recon = originals.copy()
  recon[0] += 1  # MSE 1
  recon[1] += 2  # MSE 4
  want = np.mean([10 * np.log10(255.0**2 / 1.0), 10 * np.log10(255.0**2 / 4.0)])
  assert abs(measures.psnr(originals, recon) - want) < 1e-9
  assert abs(want - 45.1205) < 1e-3  # (48.1308 + 42.1102) / 2


def test_codebook_usage_and_answer_scoring():
  assert measures.codebook_usage(np.array([[0, 1, 1], [3, 3, 0]]), 8) == 3 / 8
  assert measures.answer_is("Seven.", "seven")
  assert measures.answer_is("  seven is the digit", "seven")
  assert not measures.answer_is("it is seven", "seven")  # the first word decides
  assert not measures.answer_is("seventeen", "seven")
  assert not measures.answer_is("", "seven")


class _CharTokenizer:
  """Text ids = byte values (< 256 fits the fixture's 300-id text vocabulary)."""

  def encode(self, texts):
    return [list(t.encode()) for t in texts]


def test_perplexity_equals_float64_recomputation(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path / "data"), steps=1)
  layout = showo_config.vocab_layout(config)
  rng = np.random.default_rng(0)
  # A bigram "model": the logits at a position depend only on the token there.
  table = rng.standard_normal((config.model.vocab_size, config.model.vocab_size)).astype(np.float32)

  def apply_fn(params, ids, allowed):
    del allowed
    return params["table"][ids]

  texts = ["a short text", "another, somewhat longer text that gets cut", "x"]
  seq_len = 16
  got = measures.perplexity(apply_fn, {"table": jnp.asarray(table)}, texts, _CharTokenizer(), layout, seq_len,
                            batch_size=2)
  ids, labels = prompting.lm_prompt(_CharTokenizer().encode(texts), layout, seq_len)
  logits = table.astype(np.float64)[ids]
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
      -1, keepdims=True)
  nll, count = 0.0, 0
  for b in range(len(texts)):
    for t in range(seq_len - 1):
      target = labels[b, t + 1]
      if target != prompting.IGNORE_ID:
        nll, count = nll - logp[b, t, target], count + 1
  assert abs(got - np.exp(nll / count)) / np.exp(nll / count) < 1e-5


def test_pixel_classifier_recognises_real_test_digits():
  images, labels = embedded.load_mnist()
  test = embedded.split_indices(len(images), "test")
  judge = embedded_report.digit_judge("upright")  # the report's judge, trained once per process
  assert embedded_report.digit_judge("upright") is judge
  assert judge.accuracy(images[test], labels[test]) >= 0.88
  # A blank image is not confidently any particular training digit class for all ten prompts.
  assert judge.accuracy(np.zeros((10,) + images.shape[1:], np.uint8), np.arange(10)) <= 0.2


def _digits(n, seed):
  """n random uint8 8×8 "images" in two classes (dark / bright) and their labels."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 2
  images = rng.integers(0, 100, (n, 8, 8, 3)) + 150 * labels[:, None, None, None]
  return images.astype(np.uint8), labels


def test_diversity_is_one_for_real_digits_and_zero_for_collapse():
  real, labels = _digits(40, 0)
  assert abs(measures.diversity(real, labels, real, labels) - 1.0) < 1e-12
  collapsed = np.stack([real[labels == k][0] for k in labels])  # one image per class, repeated
  assert measures.diversity(collapsed, labels, real, labels) == 0.0
  other, other_labels = _digits(40, 1)  # fresh draws of the same distribution: about as varied
  assert 0.9 < measures.diversity(other, other_labels, real, labels) < 1.1
  # Against a float64 recomputation for one class.
  g = other[other_labels == 1].astype(np.float64).reshape(20, -1)
  r = real[labels == 1].astype(np.float64).reshape(20, -1)
  mean_pair = lambda x: np.mean([np.linalg.norm(x[i] - x[j]) for i in range(len(x)) for j in range(i + 1, len(x))])
  one_class = measures.diversity(other[other_labels == 1], other_labels[other_labels == 1], real, labels)
  np.testing.assert_allclose(one_class, mean_pair(g) / mean_pair(r), rtol=1e-9)


def test_near_copy_share_counts_replayed_training_digits():
  train, _ = _digits(60, 2)
  held_out, _ = _digits(200, 3)
  assert measures.near_copy_share(train[:10], train, held_out) == 1.0  # exact copies
  assert measures.near_copy_share(held_out, train, held_out) <= 0.01 + 1e-12  # new digits: the quantile itself
  nudged = np.clip(train[:10].astype(int) + 1, 0, 255).astype(np.uint8)  # copies with a 1-level change
  assert measures.near_copy_share(nudged, train, held_out) == 1.0
