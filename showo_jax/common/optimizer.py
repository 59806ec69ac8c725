"""AdamW with linear warmup + cosine decay, global-norm clipping and a weight-decay mask (SPEC §10)."""

import flax
import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(opt_config, total_steps: int):
  """Linear warmup from 0 to `lr`, then cosine decay to `lr * final_lr_fraction` at `total_steps`."""
  warmup = int(opt_config.warmup_steps)
  peak = float(opt_config.lr)
  decay_steps = max(int(total_steps) - warmup, 1)
  cosine = optax.cosine_decay_schedule(peak, decay_steps, alpha=float(opt_config.final_lr_fraction))
  if warmup == 0:
    return cosine
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), cosine], [warmup])


def decay_mask(params, rule: str):
  """True where weight decay applies.

  rule "clean": decay only matrices (kernels and the embedding table) — biases and norm gains are exempt.
  rule "official": decay everything but biases — the official no-decay name list matches only biases in the
    Phi model (SPEC §0.11), so LayerNorm gains, QK-norm gains and embeddings are decayed there.
  """
  flat = flax.traverse_util.flatten_dict(params)
  if rule == "official":
    keep = {k: k[-1] != "bias" for k in flat}
  elif rule == "clean":
    keep = {k: k[-1] in ("kernel", "embedding") for k in flat}
  else:
    raise ValueError(f"config.optimizer.weight_decay_mask={rule!r}: use 'clean' or 'official'")
  return flax.traverse_util.unflatten_dict(keep)


def make_optimizer(opt_config, total_steps: int):
  """Returns (optax transformation, learning-rate schedule)."""
  schedule = learning_rate_schedule(opt_config, total_steps)
  parts = []
  if opt_config.grad_clip_norm and opt_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(opt_config.grad_clip_norm)))
  parts.append(optax.adamw(
      schedule, b1=float(opt_config.b1), b2=float(opt_config.b2), eps=float(opt_config.eps),
      weight_decay=float(opt_config.weight_decay),
      mask=lambda p: decay_mask(p, opt_config.weight_decay_mask)))
  return optax.chain(*parts), schedule


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
