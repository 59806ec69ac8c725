"""Lookup-free quantization (LFQ, MAGVIT-v2) as pure functions over channels-last latents `[..., K]`.

Each of the K channels is one bit: `z_c > 0` → bit 1 / code +1, else bit 0 / code −1 (an exact 0 → −1).
Index = Σ_c bit_c · 2^(K−1−c): channel 0 is the most significant bit, as the official `power_vals`.
There is no learned codebook; the 2^K codes are the corners of the {−1, +1}^K cube.

Losses (SPEC §8; official `LFQuantizer.forward`, only computed there since tokenizer training is not released):
* commitment: `commit_mult · (mean((sg(codes) − z)²) + β · mean((codes − sg(z))²))`, with `codes` the
  straight-through output. Because `codes = z + sg(b − z)`, the β term's gradient reaches z as well, with
  the opposite sign; the net pull of z towards b is (1 − β)·2(z − b)/n. Kept as is to match the official.
* entropy, "factorized" (official): each channel is a 2-way categorical with logits
  [−(z−1)², −(z+1)²] / τ (= per-bit softmax of minus the squared distance to ±1; p(+1) = σ(4z/τ)).
  `loss = ent_mult · (mean over positions and bits of H(p) − mean over bits of H(mean over positions of p))`.
* entropy, "exact": one categorical over all 2^K codes per position, q(k|z) = softmax_k(−‖z − e_k‖² / τ)
  with e_k ∈ {−1,+1}^K the code of index k and τ = `entropy_temperature` (1 = official scale). The same
  "mean per-sample entropy − entropy of the batch mean" difference, divided by K so that it is in nats per
  bit like the factorised form. Since −‖z − e_k‖² = Σ_c −(z_c − e_kc)², q factorises over bits, so the
  per-sample terms of both forms are equal; they differ only in the batch-mean term, where the exact
  form sees correlations between bits (H(joint) ≤ Σ H(marginals), so exact ≥ factorised, with equality
  when the batch-mean code distribution is a product of its bit marginals). Memory: [positions, 2^K].
"""

import jax
import jax.numpy as jnp
import numpy as np

ENTROPY_FORMS = ("factorized", "exact")


def _bit_weights(bits: int) -> jax.Array:
  return 2 ** jnp.arange(bits - 1, -1, -1, dtype=jnp.int32)  # int32 [K]: 2^(K-1) … 1


def quantize(z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Binarises z with a straight-through gradient.

  Args:
    z: float [..., K] latents (channels last).

  Returns:
    codes: [..., K] in {−1, +1} (dtype of z); forward value ±1, gradient identity w.r.t. z.
    indices: int32 [...], Σ_c [z_c > 0] · 2^(K−1−c).
  """
  positive = z > 0  # bool [..., K]; exact 0 → bit 0 (code −1) as in the official code
  hard = jnp.where(positive, 1.0, -1.0).astype(z.dtype)  # [..., K]
  codes = z + jax.lax.stop_gradient(hard - z)  # official straight-through: z + (b - z).detach()
  return codes, codes_to_indices(hard)


def bits_to_indices(bits: jax.Array) -> jax.Array:
  """bool/int [..., K] bits (channel 0 = MSB) → int32 [...] indices."""
  return jnp.sum(bits.astype(jnp.int32) * _bit_weights(bits.shape[-1]), axis=-1)


def codes_to_indices(codes: jax.Array) -> jax.Array:
  """[..., K] codes (sign decides the bit, like the official `get_indices`) → int32 [...] indices."""
  return bits_to_indices(codes > 0)


def indices_to_codes(indices: jax.Array, bits: int, dtype=jnp.float32) -> jax.Array:
  """int [...] indices → [..., K] codes in {−1, +1} (official `embedding[indices]` without the table)."""
  shifts = jnp.arange(bits - 1, -1, -1, dtype=jnp.int32)  # [K]
  bit = (indices.astype(jnp.int32)[..., None] >> shifts) & 1  # int32 [..., K]
  return (2 * bit - 1).astype(dtype)


def codebook(bits: int, dtype=jnp.float32) -> jax.Array:
  """All 2^K codes in index order: [2^K, K] (the official `quantize.embedding` buffer)."""
  return indices_to_codes(jnp.arange(2 ** bits, dtype=jnp.int32), bits, dtype)


def commitment_loss(z: jax.Array, codes: jax.Array, *, beta: float = 0.25,
                    multiplier: float = 0.1) -> jax.Array:
  """Official commitment term (see module docstring); z, codes: [..., K] → float32 scalar."""
  z = z.astype(jnp.float32)
  codes = codes.astype(jnp.float32)
  pull_z = jnp.mean((jax.lax.stop_gradient(codes) - z) ** 2)
  pull_codes = jnp.mean((codes - jax.lax.stop_gradient(z)) ** 2)
  return multiplier * (pull_z + beta * pull_codes)


def _bit_log_probs(z: jax.Array, temperature: float) -> jax.Array:
  """float32 [N, K, 2] log-probabilities of (+1, −1) per bit from logits −(z ∓ 1)² / τ."""
  z = z.astype(jnp.float32).reshape(-1, z.shape[-1])  # [N, K]
  logits = jnp.stack([-(z - 1.0) ** 2, -(z + 1.0) ** 2], axis=-1) / temperature  # [N, K, 2]
  return jax.nn.log_softmax(logits, axis=-1)


def _entropy(probs: jax.Array, axis=-1) -> jax.Array:
  # entr(0) = 0: a category that never occurs contributes nothing (torch clamps p to eps, which is ~0 too).
  return jnp.sum(jax.scipy.special.entr(probs), axis=axis)


def factorized_entropy(z: jax.Array, temperature: float = 1.0) -> jax.Array:
  """Official per-bit form, unweighted: mean H(p) − mean_bits H(mean_positions p). z: [..., K] → scalar."""
  log_p = _bit_log_probs(z, temperature)  # [N, K, 2]
  p = jnp.exp(log_p)
  per_sample = jnp.mean(-jnp.sum(p * log_p, axis=-1))  # mean over N and K
  batch = jnp.mean(_entropy(jnp.mean(p, axis=0)))  # [K, 2] → mean over K
  return per_sample - batch


def exact_entropy(z: jax.Array, temperature: float = 1.0) -> jax.Array:
  """Entropy over all 2^K codes (see module docstring), in nats per bit. z: [..., K] → scalar."""
  bits = z.shape[-1]
  log_p = _bit_log_probs(z, temperature)  # [N, K, 2]; index 0 = code +1 (bit 1), index 1 = code −1
  p = jnp.exp(log_p)
  # q_n factorises over bits, so its entropy is the sum of the per-bit entropies.
  per_sample = jnp.mean(-jnp.sum(p * log_p, axis=(-1, -2)))
  # log q_n(k) = Σ_c log p_nc(−1) + Σ_c bit_kc · (log p_nc(+1) − log p_nc(−1)).
  bit_table = (codebook(bits) > 0).astype(jnp.float32)  # [2^K, K]
  log_q = jnp.sum(log_p[..., 1], axis=-1, keepdims=True) + jnp.matmul(
      log_p[..., 0] - log_p[..., 1], bit_table.T, precision=jax.lax.Precision.HIGHEST)  # [N, 2^K]
  log_mean_q = jax.nn.logsumexp(log_q, axis=0) - jnp.log(log_q.shape[0])  # [2^K]
  batch = _entropy(jnp.exp(log_mean_q))
  return (per_sample - batch) / bits


def entropy_loss(z: jax.Array, *, multiplier: float = 0.1, form: str = "factorized",
                 temperature: float = 1.0) -> jax.Array:
  """Weighted entropy penalty of latents z [..., K] (all leading axes are positions) → float32 scalar."""
  if form == "factorized":
    return multiplier * factorized_entropy(z, temperature)
  if form == "exact":
    return multiplier * exact_entropy(z, temperature)
  raise ValueError(f"entropy form {form!r} is not one of {ENTROPY_FORMS}")


def lfq_losses(z: jax.Array, codes: jax.Array, lfq_config) -> dict[str, jax.Array]:
  """Both official loss terms with weights from a config's `lfq` block (tokenizer/config.py magvit_config)."""
  return {
      "quantizer_loss": commitment_loss(z, codes, beta=lfq_config.beta,
                                        multiplier=lfq_config.commit_loss_multiplier),
      "entropy_loss": entropy_loss(z, multiplier=lfq_config.entropy_multiplier, form=lfq_config.entropy_form,
                                   temperature=lfq_config.entropy_temperature),
  }


def power_vals(bits: int) -> np.ndarray:
  """int64 [K] bit weights 2^(K−1−c): the official `quantize.power_vals` buffer."""
  return 2 ** np.arange(bits - 1, -1, -1, dtype=np.int64)
