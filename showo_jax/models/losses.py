"""Show-o's training objective: L = c_t2i·L_MTP + c_lm·L_NTP(text) + c_mmu·L_NTP(mmu) (SPEC §5.3).

Each task's loss is a token-level mean over that task's non-ignored targets in the batch. Every sample carries
its own task id (models/omni_mask.py TASKS), so one batch may hold any mix of tasks in any order.
  t2i:   no shift — the logit at a position predicts the token at that same position; only positions from
         the first <|soi|> on count (the official slice `[T+1:]`). With `t2i_boundary_targets` (the official
         behaviour) the <|soi|>/<|eoi|> positions are their own targets; without, only masked image tokens.
  lm, mmu, mixed: next-token prediction (logits[:, :-1] against labels[:, 1:]).
Sums and counts are returned as well, so gradient accumulation can average exactly over micro-batches.
"""

import jax
import jax.numpy as jnp

from showo_jax.models.omni_mask import TASK_LM, TASK_MIXED, TASK_MMU, TASK_T2I  # pylint: disable=unused-import

IGNORE_ID = -100


@jax.custom_vjp
def _xent(logits, targets):
  """logsumexp(logits) − logits[target] over the last axis (float32 logits, valid int targets)."""
  return _xent_fwd(logits, targets)[0]


def _xent_fwd(logits, targets):
  peak = jax.lax.stop_gradient(logits.max(-1))
  lse = jnp.log(jnp.exp(logits - peak[..., None]).sum(-1)) + peak
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return lse - picked, (logits, lse, targets)


def _xent_bwd(residuals, g):
  # d/dlogits = (softmax − onehot(target))·g in one fused pass over [..., V]. Autodiff of log_softmax +
  # take_along_axis makes several (the gather's transpose alone is a full broadcast-select): on CPU the loss
  # was ~10 % of the tiny train step.
  logits, lse, targets = residuals
  onehot = jnp.arange(logits.shape[-1], dtype=targets.dtype) == targets[..., None]
  return (jnp.exp(logits - lse[..., None]) - onehot) * g[..., None], None


_xent.defvjp(_xent_fwd, _xent_bwd)


def token_xent(logits, targets):
  """Per-token cross-entropy (float32) and validity; targets == IGNORE_ID are ignored.

  Args: logits [..., V] (any float dtype); targets int [...].
  Returns: (xent [...], valid bool [...]).
  """
  valid = targets != IGNORE_ID
  xent = _xent(logits.astype(jnp.float32), jnp.where(valid, targets, 0))
  return jnp.where(valid, xent, 0.0), valid


def mtp_and_ntp_weights(input_ids, labels, task_ids, soi_id: int, eoi_id: int, boundary_targets: bool = True):
  """Target ids and weights for one forward pass over a mixed-task batch.

  Args:
    input_ids: int [B, L]; labels: int [B, L] (IGNORE_ID = no target); task_ids: int [B].
  Returns:
    targets int [B, L] and weights float32 [B, L] aligned with the logits: position i of a t2i row is scored
    against labels[i]; position i of any other row against labels[i + 1] (last position: no target).
  """
  labels = jnp.asarray(labels, jnp.int32)
  b, l = labels.shape
  is_t2i = (task_ids == TASK_T2I)[:, None]
  shifted = jnp.concatenate([labels[:, 1:], jnp.full((b, 1), IGNORE_ID, labels.dtype)], axis=1)
  pos = jnp.arange(l)[None, :]
  first_soi = jnp.argmax(input_ids == soi_id, axis=1)[:, None]
  t2i_region = pos >= first_soi
  if not boundary_targets:
    t2i_region &= (input_ids != soi_id) & (input_ids != eoi_id)
  t2i_targets = jnp.where(t2i_region, labels, IGNORE_ID)
  targets = jnp.where(is_t2i, t2i_targets, shifted)
  return targets, (targets != IGNORE_ID).astype(jnp.float32)


def showo_loss(logits, input_ids, labels, task_ids, *, soi_id: int, eoi_id: int, t2i_coeff: float = 1.0,
               lm_coeff: float = 0.1, mmu_coeff: float = 1.0, boundary_targets: bool = True, denominators=None):
  """The weighted total and every term separately.

  Returns a dict of float32 scalars: loss, loss_t2i, loss_lm, loss_mmu, and for exact accumulation the sums
  (sum_t2i, …) and target counts (count_t2i, …). Mixed-modality rows count towards lm. A task with no targets in
  the batch contributes 0. `denominators` ({"t2i": n, …}) replaces this batch's counts as the divisors: a
  micro-batch divided by the whole batch's counts gives gradients that add up exactly.
  """
  targets, weights = mtp_and_ntp_weights(input_ids, labels, task_ids, soi_id, eoi_id, boundary_targets)
  xent, _ = token_xent(logits, targets)
  per_row_sum = (xent * weights).sum(-1)  # [B]
  per_row_count = weights.sum(-1)
  out = {}
  groups = {"t2i": task_ids == TASK_T2I, "lm": (task_ids == TASK_LM) | (task_ids == TASK_MIXED),
            "mmu": task_ids == TASK_MMU}
  for name, rows in groups.items():
    total = jnp.where(rows, per_row_sum, 0.0).sum()
    count = jnp.where(rows, per_row_count, 0.0).sum()
    out[f"sum_{name}"], out[f"count_{name}"] = total, count
    denom = count if denominators is None else denominators[name]
    out[f"loss_{name}"] = total / jnp.maximum(denom, 1.0)
  out["loss"] = t2i_coeff * out["loss_t2i"] + lm_coeff * out["loss_lm"] + mmu_coeff * out["loss_mmu"]
  return out


def target_counts(input_ids, labels, task_ids, soi_id: int, eoi_id: int, boundary_targets: bool = True):
  """Number of scored targets per task group (known before the forward pass, from the labels alone)."""
  _, weights = mtp_and_ntp_weights(input_ids, labels, task_ids, soi_id, eoi_id, boundary_targets)
  per_row = weights.sum(-1)
  return {"t2i": jnp.where(task_ids == TASK_T2I, per_row, 0.0).sum(),
          "lm": jnp.where((task_ids == TASK_LM) | (task_ids == TASK_MIXED), per_row, 0.0).sum(),
          "mmu": jnp.where(task_ids == TASK_MMU, per_row, 0.0).sum()}
