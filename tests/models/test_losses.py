"""The training objective against the official losses and a float64 recomputation; mask schedules."""

import jax.numpy as jnp
import numpy as np
import pytest

from showo_jax import interop
from showo_jax.models import losses
from showo_jax.models import mask_schedule
from tests import parity_facts


def _state(parity):
  return {k[len("param."):]: v for k, v in parity.items() if k.startswith("param.")}


def _xent64(logits, target):
  logits = np.asarray(logits, np.float64)
  m = logits.max()
  return np.log(np.exp(logits - m).sum()) + m - logits[target]


def test_official_losses(parity_showo):
  params, config = interop.load_official_showo(_state(parity_showo), **parity_facts.TINY_PHI)
  got = interop.showo_losses(params, config, {
      "input_ids": parity_showo["input_ids"], "labels": parity_showo["labels"],
      "attention_mask": parity_showo["attention_mask"], "batch_sizes": (4, 2, 2)})
  for name in ("t2i", "lm", "mmu", "total"):
    want = float(parity_showo[f"loss_{name}"])
    assert abs(got[name] - want) <= 1e-4 * abs(want), (name, got[name], want)


def test_losses_follow_the_task_of_each_row(parity_showo):
  """Per-sample task ids: any row order gives the same per-task losses (official needs [t2i; lm; mmu])."""
  logits = jnp.asarray(parity_showo["logits"])
  ids, labels = parity_showo["input_ids"], parity_showo["labels"]
  tasks = np.array([0, 0, 0, 0, 1, 1, 2, 2])
  ref = losses.showo_loss(logits, ids, labels, tasks, soi_id=101, eoi_id=102)
  perm = np.array([6, 0, 4, 1, 7, 2, 5, 3])
  got = losses.showo_loss(logits[perm], ids[perm], labels[perm], tasks[perm], soi_id=101, eoi_id=102)
  for k in ("loss", "loss_t2i", "loss_lm", "loss_mmu"):
    assert abs(float(got[k]) - float(ref[k])) <= 1e-6
  assert abs(float(ref["loss"]) - float(parity_showo["loss_total"])) <= 1e-4 * float(parity_showo["loss_total"])


@pytest.mark.parametrize("boundary_targets", [True, False])
def test_terms_against_float64_recomputation(parity_showo, boundary_targets):
  logits, ids, labels = parity_showo["logits"], parity_showo["input_ids"], parity_showo["labels"]
  tasks = np.array([0, 0, 0, 0, 1, 1, 2, 2])
  out = losses.showo_loss(jnp.asarray(logits), ids, labels, tasks, soi_id=101, eoi_id=102,
                          t2i_coeff=0.7, lm_coeff=0.2, mmu_coeff=1.3, boundary_targets=boundary_targets)
  terms = {"t2i": [], "lm": [], "mmu": []}
  for b in range(8):
    if tasks[b] == 0:
      for i in range(17, 83):  # positions T+1 … end: soi, image, eoi
        is_boundary = ids[b, i] in (101, 102)
        if labels[b, i] != -100 and (boundary_targets or not is_boundary):
          terms["t2i"].append(_xent64(logits[b, i], labels[b, i]))
    else:
      for i in range(82):
        if labels[b, i + 1] != -100:
          terms["lm" if tasks[b] == 1 else "mmu"].append(_xent64(logits[b, i], labels[b, i + 1]))
  want = {k: np.mean(v) for k, v in terms.items()}
  n_masked = int(parity_showo["t2i.image_mask"].sum())
  assert len(terms["t2i"]) == n_masked + (8 if boundary_targets else 0)  # + soi/eoi of each of 4 samples
  for k in terms:
    assert abs(float(out[f"loss_{k}"]) - want[k]) <= 1e-5 * want[k]
    assert float(out[f"count_{k}"]) == len(terms[k])
  total = 0.7 * want["t2i"] + 0.2 * want["lm"] + 1.3 * want["mmu"]
  assert abs(float(out["loss"]) - total) <= 1e-5 * total


def test_token_xent_literal():
  logits = jnp.array([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]])
  xent, valid = losses.token_xent(logits, jnp.array([[2, -100]]))
  np.testing.assert_allclose(np.asarray(xent), [[np.log(1 + np.e + np.e**2) - 2.0, 0.0]], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(valid), [[True, False]])


def test_token_xent_gradient_is_softmax_minus_onehot_in_float64():
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  logits = (rng.standard_normal((3, 5, 11)) * 4).astype(np.float32)
  targets = rng.integers(0, 11, (3, 5))
  targets[0, 1] = targets[2, 4] = losses.IGNORE_ID
  weights = rng.random((3, 5)).astype(np.float32)
  total = lambda l: (losses.token_xent(l, jnp.asarray(targets))[0] * weights).sum()
  value, grad = jax.value_and_grad(total)(jnp.asarray(logits))
  x = logits.astype(np.float64)
  p = np.exp(x - x.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  valid = targets != losses.IGNORE_ID
  onehot = np.eye(11)[np.where(valid, targets, 0)]
  want_grad = (p - onehot) * (weights * valid)[..., None]
  want_value = (-(np.log(p) * onehot).sum(-1) * weights * valid).sum()
  np.testing.assert_allclose(float(value), want_value, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), want_grad, atol=2e-7)
  assert np.all(np.asarray(grad)[0, 1] == 0) and np.all(np.asarray(grad)[2, 4] == 0)  # ignored: no gradient


def test_task_without_rows_contributes_zero(parity_showo):
  out = losses.showo_loss(jnp.asarray(parity_showo["logits"][:4]), parity_showo["input_ids"][:4],
                          parity_showo["labels"][:4], np.zeros(4, np.int32), soi_id=101, eoi_id=102)
  assert float(out["loss_lm"]) == 0.0 and float(out["loss_mmu"]) == 0.0
  assert float(out["loss"]) == pytest.approx(float(parity_showo["loss_t2i"]), rel=1e-4)


@pytest.mark.parametrize("name,key", [("cosine", "cosine"), ("linear", "linear"), ("pow2", "pow2"),
                                      ("sigmoid", "sigmoid_default")])
def test_mask_schedules_match_official(parity_sampling, name, key):
  table = parity_sampling[0]["schedules_at_t"][key]
  t = np.array([float(x) for x in table], np.float32)
  want = np.array(list(table.values()), np.float32)
  got = np.asarray(mask_schedule.get(name)(jnp.asarray(t)))
  np.testing.assert_allclose(got, want, atol=2e-7)


def test_unknown_schedule_is_rejected():
  with pytest.raises(ValueError, match="unknown mask schedule 'cosin'"):
    mask_schedule.get("cosin")
