"""common/optimizer.py: the weight-decay masks against literal trees, and AdamW decaying exactly what they mark."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from showo_jax.common import optimizer

# A tree with every kind of leaf the backbone has: matrices, embedding, biases, norm and QK-norm gains.
PARAMS = {
    "embed": {"embedding": np.ones((6, 4), np.float32)},
    "layer_0": {
        "attn": {"query": {"kernel": np.ones((4, 2, 2), np.float32), "bias": np.ones((2, 2), np.float32)},
                 "q_norm": {"scale": np.ones((2,), np.float32), "bias": np.ones((2,), np.float32)}},
        "input_norm": {"scale": np.ones((4,), np.float32), "bias": np.ones((4,), np.float32)},
        "mlp": {"fc1": {"kernel": np.ones((4, 8), np.float32), "bias": np.ones((8,), np.float32)}},
    },
    "final_norm": {"scale": np.ones((4,), np.float32)},
    "lm_head": {"kernel": np.ones((4, 6), np.float32), "bias": np.ones((6,), np.float32)},
}

OFFICIAL = {  # everything but biases (SPEC §0.11: the official no-decay list only matches biases)
    "embed": {"embedding": True},
    "layer_0": {"attn": {"query": {"kernel": True, "bias": False}, "q_norm": {"scale": True, "bias": False}},
                "input_norm": {"scale": True, "bias": False}, "mlp": {"fc1": {"kernel": True, "bias": False}}},
    "final_norm": {"scale": True},
    "lm_head": {"kernel": True, "bias": False},
}
CLEAN = {  # matrices and the embedding only
    "embed": {"embedding": True},
    "layer_0": {"attn": {"query": {"kernel": True, "bias": False}, "q_norm": {"scale": False, "bias": False}},
                "input_norm": {"scale": False, "bias": False}, "mlp": {"fc1": {"kernel": True, "bias": False}}},
    "final_norm": {"scale": False},
    "lm_head": {"kernel": True, "bias": False},
}


@pytest.mark.parametrize("rule,want", [("official", OFFICIAL), ("clean", CLEAN)])
def test_decay_mask_is_the_literal_tree(rule, want):
  assert optimizer.decay_mask(PARAMS, rule) == want


@pytest.mark.parametrize("rule,want", [("official", OFFICIAL), ("clean", CLEAN)])
def test_adamw_decays_exactly_the_masked_leaves(rule, want):
  """With zero gradients AdamW's only move is the decay: p ← p − lr·wd·p where the mask says so."""
  cfg = ml_collections.ConfigDict(dict(lr=0.1, warmup_steps=0, final_lr_fraction=1.0, b1=0.9, b2=0.999, eps=1e-8,
                                       weight_decay=0.5, weight_decay_mask=rule, grad_clip_norm=0.0))
  tx, _ = optimizer.make_optimizer(cfg, total_steps=10)
  params = jax.tree.map(jnp.asarray, PARAMS)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  moved = jax.tree.map(lambda u: float(jnp.abs(u).max()), updates)
  expected = jax.tree.map(lambda decays: 0.1 * 0.5 if decays else 0.0, want)
  np.testing.assert_allclose(jax.tree.leaves(moved), jax.tree.leaves(expected), rtol=1e-6)
  assert jax.tree.structure(moved) == jax.tree.structure(expected)


def test_unknown_rule_names_the_field():
  with pytest.raises(ValueError, match=r"config.optimizer.weight_decay_mask='all'"):
    optimizer.decay_mask(PARAMS, "all")
