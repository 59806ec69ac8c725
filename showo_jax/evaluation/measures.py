"""Evaluation pieces: a pixel classifier for T2I class consistency, PSNR, codebook usage, perplexity, MMU scoring."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from showo_jax.data import prompting
from showo_jax.models import losses
from showo_jax.models import omni_mask


def _features(images_u8) -> jnp.ndarray:
  x = jnp.asarray(images_u8, jnp.float32).mean(-1) / 255.0  # grayscale [B, H, W]
  return x.reshape(x.shape[0], -1)


def _mlp(params, x):
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


class PixelClassifier:
  """A one-hidden-layer MLP on raw pixels, trained full-batch with Adam on the training split (seconds on CPU).

  It is the judge of "is this generated image recognisably a k": trained only on real training images.
  """

  def __init__(self, images_u8, labels, *, num_classes: int = 10, hidden: int = 256, steps: int = 400,
               seed: int = 0):
    x, y = _features(images_u8), jnp.asarray(labels, jnp.int32)
    k1, k2 = jax.random.split(jax.random.key(seed))
    d = x.shape[1]
    params = {"w1": jax.random.normal(k1, (d, hidden)) / np.sqrt(d), "b1": jnp.zeros(hidden),
              "w2": jax.random.normal(k2, (hidden, num_classes)) / np.sqrt(hidden), "b2": jnp.zeros(num_classes)}
    tx = optax.adamw(3e-3, weight_decay=1e-4)

    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(_mlp(p, x), y).mean()

    @jax.jit
    def train(p):
      def body(_, carry):
        p, s = carry
        g = jax.grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
      return jax.lax.fori_loop(0, steps, body, (p, tx.init(p)))[0]

    self.params = train(params)

  def predict(self, images_u8) -> np.ndarray:
    return np.asarray(jnp.argmax(_mlp(self.params, _features(images_u8)), -1))

  def accuracy(self, images_u8, labels) -> float:
    return float(np.mean(self.predict(images_u8) == np.asarray(labels)))


def psnr(originals_u8, reconstructions_u8) -> float:
  """Mean over images of 10·log10(255² / MSE)."""
  a = np.asarray(originals_u8, np.float64)
  b = np.asarray(reconstructions_u8, np.float64)
  mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
  return float(np.mean(10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def codebook_usage(codes, codebook_size: int) -> float:
  """Share of the codebook that appears at least once."""
  return float(np.unique(np.asarray(codes)).size / codebook_size)


def _pairwise_sq_distances(a, b) -> np.ndarray:
  """[len(a), len(b)] squared L2 distances between flattened images (float64)."""
  a = np.asarray(a, np.float64).reshape(len(a), -1)
  b = np.asarray(b, np.float64).reshape(len(b), -1)
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d, 0.0)


def _mean_pairwise_distance(images) -> float:
  """Mean L2 distance over the distinct pairs of a set of images."""
  n = len(images)
  if n < 2:
    return 0.0
  d = np.sqrt(_pairwise_sq_distances(images, images))
  return float(d[np.triu_indices(n, 1)].mean())


def diversity(generated_u8, generated_labels, real_u8, real_labels) -> float:
  """Mean over classes of (mean pairwise pixel distance of the generated images of the class) / (the same for the
  real images of the class): 1 = as varied as real digits, 0 = one image per class (mode collapse)."""
  generated_labels, real_labels = np.asarray(generated_labels), np.asarray(real_labels)
  ratios = []
  for k in np.unique(generated_labels):
    real = _mean_pairwise_distance(np.asarray(real_u8)[real_labels == k])
    if real > 0:
      ratios.append(_mean_pairwise_distance(np.asarray(generated_u8)[generated_labels == k]) / real)
  return float(np.mean(ratios)) if ratios else 0.0


def near_copy_share(generated_u8, train_u8, held_out_u8, quantile: float = 0.01) -> float:
  """Share of generated images closer to their nearest training image than `quantile` of held-out real images
  are to theirs: a generator that replays training digits scores high, one that draws new digits ≈ `quantile`."""
  threshold = np.quantile(np.sqrt(_pairwise_sq_distances(held_out_u8, train_u8).min(1)), quantile)
  nearest = np.sqrt(_pairwise_sq_distances(generated_u8, train_u8).min(1))
  return float(np.mean(nearest < threshold))


def answer_is(answer: str, expected: str) -> bool:
  """The first word of the answer (lower case, punctuation stripped) is the expected word."""
  words = re.findall(r"[a-z]+", answer.lower())
  return bool(words) and words[0] == expected.lower()


@functools.partial(jax.jit, static_argnames=("apply_fn", "layout"))
def _lm_sums(apply_fn, params, ids, labels, layout):
  allowed = omni_mask.omni_attention_mask(ids, jnp.full((ids.shape[0],), omni_mask.TASK_LM), layout)
  logits = apply_fn(params, ids, allowed)
  targets = jnp.concatenate([labels[:, 1:], jnp.full((ids.shape[0], 1), losses.IGNORE_ID, labels.dtype)], 1)
  xent, valid = losses.token_xent(logits, targets)
  return xent.sum(), valid.sum()


def perplexity(apply_fn, params, texts, tokenizer, layout, seq_len: int, batch_size: int = 8) -> float:
  """exp(mean next-token NLL) over the first `seq_len` tokens of each held-out document."""
  total, count = 0.0, 0
  for i in range(0, len(texts), batch_size):
    chunk = texts[i:i + batch_size]
    ids, labels = prompting.lm_prompt(tokenizer.encode(chunk), layout, seq_len)
    s, n = _lm_sums(apply_fn, params, jnp.asarray(ids), jnp.asarray(labels), layout)
    total, count = total + float(s), count + int(n)
  return float(np.exp(total / max(count, 1)))
