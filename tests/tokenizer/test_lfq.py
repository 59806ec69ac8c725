"""Lookup-free quantizer: bit ↔ index conventions, straight-through gradient, both losses, both entropy forms."""

import itertools

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo_jax.tokenizer import config as tokenizer_config
from showo_jax.tokenizer import lfq


# Jitted once per shape: eager dispatch of the many small ops would dominate the test time.
_exact = jax.jit(lfq.exact_entropy, static_argnums=1)
_factorized = jax.jit(lfq.factorized_entropy, static_argnums=1)


def _entropy64(p, axis=-1):
  p = np.asarray(p, np.float64)
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def _softmax64(logits):
  logits = logits - logits.max(-1, keepdims=True)
  e = np.exp(logits)
  return e / e.sum(-1, keepdims=True)


def _factorized64(z, temperature=1.0):
  """Float64 recomputation of the official per-bit penalty (unweighted)."""
  z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])  # [N, K]
  p = _softmax64(np.stack([-(z - 1) ** 2, -(z + 1) ** 2], -1) / temperature)  # [N, K, 2]
  return _entropy64(p).mean() - _entropy64(p.mean(0)).mean()


def _exact64(z, temperature=1.0):
  """Float64 brute force over all 2^K codes: q = softmax(−‖z − e_k‖² / τ), divided by K."""
  z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])  # [N, K]
  k = z.shape[-1]
  codes = np.array(list(itertools.product([-1.0, 1.0], repeat=k)))  # [2^K, K]; order is irrelevant here
  q = _softmax64(-((z[:, None, :] - codes[None]) ** 2).sum(-1) / temperature)  # [N, 2^K]
  return (_entropy64(q).mean() - _entropy64(q.mean(0))) / k


def test_parity_bit_vectors(parity_magvit):
  z, zq, want = parity_magvit["lfq_test_z"], parity_magvit["lfq_test_zq"], parity_magvit["lfq_test_indices"]
  codes, indices = lfq.quantize(jnp.asarray(z))
  np.testing.assert_array_equal(codes, zq)
  np.testing.assert_array_equal(indices, want)
  np.testing.assert_array_equal(lfq.indices_to_codes(jnp.asarray(want), 6), zq)
  np.testing.assert_array_equal(lfq.codes_to_indices(jnp.asarray(zq)), want)


def test_conventions():
  codes, indices = lfq.quantize(jnp.array([[0.0, 0.0, 0.0], [1e-30, -1e-30, 0.0], [-0.0, 2.0, 3.0]]))
  np.testing.assert_array_equal(codes, [[-1, -1, -1], [1, -1, -1], [-1, 1, 1]])  # exact 0 → −1
  np.testing.assert_array_equal(indices, [0, 4, 3])  # channel 0 = MSB


def test_buffers_match_official(parity_magvit):
  np.testing.assert_array_equal(lfq.codebook(6), parity_magvit["param.quantize.embedding"])
  vals = lfq.power_vals(6)
  assert vals.dtype == np.int64
  np.testing.assert_array_equal(vals, parity_magvit["param.quantize.power_vals"])


@jax.jit
def _round_trip(idx):  # int32 [8] → (indices via codes, indices via quantize), for 0 … 30 bits at once
  outs = []
  for bits in range(1, 31):
    codes = lfq.indices_to_codes(idx % (2 ** bits), bits)  # [8, bits]
    outs.append((lfq.codes_to_indices(codes), lfq.quantize(codes * 0.3)[1]))
  return outs


@given(st.lists(st.integers(0, 2 ** 30 - 1), min_size=8, max_size=8))
@settings(max_examples=30, deadline=None)
def test_index_round_trip(values):
  idx = np.array(values, np.int32)
  for bits, (via_codes, via_quantize) in enumerate(_round_trip(idx), start=1):
    np.testing.assert_array_equal(via_codes, idx % 2 ** bits)
    np.testing.assert_array_equal(via_quantize, idx % 2 ** bits)


def test_straight_through_gradient_is_identity():
  z = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
  jac = jax.jit(jax.jacobian(lambda x: lfq.quantize(x)[0]))(z)  # [2, 3, 5, 2, 3, 5]
  np.testing.assert_array_equal(jac.reshape(30, 30), np.eye(30))


def test_losses_match_parity(parity_magvit):
  z = jnp.asarray(parity_magvit["encoder_out"]).transpose(0, 2, 3, 1)  # NCHW → [B, h, w, K]
  codes, _ = lfq.quantize(z)
  losses = jax.jit(lambda z, c: lfq.lfq_losses(z, c, tokenizer_config.magvit_config("tiny").lfq))(z, codes)
  np.testing.assert_allclose(losses["quantizer_loss"], parity_magvit["quantizer_loss"], rtol=1e-5)
  np.testing.assert_allclose(losses["entropy_loss"], parity_magvit["entropy_loss"], rtol=1e-5)
  np.testing.assert_allclose(_factorized(z, 1.0), _factorized64(np.asarray(z)), rtol=1e-5)


def test_commitment_gradient_is_official():
  """Under the straight-through codes the β term pushes back: d/dz = mult·(1 − β)·2(z − b)/n."""
  z = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6)), jnp.float32)
  grad = jax.jit(jax.grad(lambda x: lfq.commitment_loss(x, lfq.quantize(x)[0], beta=0.25, multiplier=0.1)))(z)
  b = np.where(z > 0, 1.0, -1.0)
  np.testing.assert_allclose(grad, 0.1 * 0.75 * 2 * (z - b) / z.size, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_exact_entropy_matches_brute_force(temperature):
  z = 1.5 * np.random.default_rng(2).normal(size=(3, 5, 4)).astype(np.float32)  # 15 positions, K = 4
  got = _exact(z, temperature)
  np.testing.assert_allclose(got, _exact64(np.asarray(z), temperature), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(_factorized(z, temperature), _factorized64(np.asarray(z), temperature),
                             rtol=1e-5, atol=1e-7)


def test_exact_equals_factorized_for_independent_bits():
  # Positions = Cartesian product of per-bit values: the batch-mean code distribution is a product of marginals.
  per_bit = [[-1.3, 0.2, 0.7], [0.1, -0.4, 2.0], [-0.05, 0.3, -1.1]]
  z = jnp.array(list(itertools.product(*per_bit)), jnp.float32)  # [27, 3]
  exact, fact = _exact(z, 1.0), _factorized(z, 1.0)
  np.testing.assert_allclose(exact, fact, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(exact, _exact64(np.asarray(z)), rtol=1e-5, atol=1e-7)
  assert float(fact) < -1e-3  # not a trivial zero


@given(st.integers(0, 10_000), st.integers(1, 5))
@settings(max_examples=15, deadline=None)
def test_exact_bounds_factorized(seed, bits):
  """H(joint) ≤ Σ H(marginals), so the exact penalty is never below the factorised one."""
  z = np.random.default_rng(seed).normal(size=(7, bits)).astype(np.float32)
  assert float(_exact(z, 1.0)) >= float(_factorized(z, 1.0)) - 1e-6


def test_entropy_loss_forms_and_weights():
  z = np.random.default_rng(3).normal(size=(2, 4, 4, 5)).astype(np.float32)
  config = tokenizer_config.magvit_config("tiny").lfq
  config.entropy_form = "exact"

  @jax.jit
  def values(z):
    return (lfq.entropy_loss(z, multiplier=0.3), lfq.entropy_loss(z, multiplier=0.3, form="exact"),
            lfq.lfq_losses(z, lfq.quantize(z)[0], config)["entropy_loss"])

  fact, exact, from_config = values(z)
  np.testing.assert_allclose(fact, 0.3 * _factorized(z, 1.0), rtol=1e-6)
  np.testing.assert_allclose(exact, 0.3 * _exact(z, 1.0), rtol=1e-6)
  np.testing.assert_allclose(from_config, 0.1 * _exact(z, 1.0), rtol=1e-6)
  with pytest.raises(ValueError, match="entropy form"):
    lfq.entropy_loss(z, form="joint")
