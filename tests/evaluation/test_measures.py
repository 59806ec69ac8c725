"""The evaluation pieces against literal values and float64 recomputations; the pixel judge on real digits."""

import jax.numpy as jnp
import numpy as np

from showo_jax.config import showo as showo_config
from showo_jax.data import embedded
from showo_jax.data import prompting
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
  train = embedded.split_indices(len(images), "train")
  test = embedded.split_indices(len(images), "test")
  judge = measures.PixelClassifier(images[train], labels[train])
  assert judge.accuracy(images[test], labels[test]) >= 0.88
  # A blank image is not confidently any particular training digit class for all ten prompts.
  assert judge.accuracy(np.zeros((10,) + images.shape[1:], np.uint8), np.arange(10)) <= 0.2
