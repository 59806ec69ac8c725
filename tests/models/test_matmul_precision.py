"""config.model.matmul_precision: validation, that it reaches every product of the backbone (forward, the
hand-written backward passes, remat recomputation), CPU numerics unchanged, and the interop API's "highest".

The products are checked in the lowered StableHLO text, where each `stablehlo.dot_general` carries
`precision = [P, P]` (DEFAULT when no precision is given) on this jax version.
"""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo_jax import interop
from showo_jax.common import cpu_features
from showo_jax.config import base as config_base
from showo_jax.config import showo as showo_config
from showo_jax.interop import api
from showo_jax.models import dense
from showo_jax.interop import magvit_keys
from showo_jax.interop import showo_keys
from showo_jax.models import transformer
from showo_jax.tokenizer import config as tokenizer_config

_LEN = 8


def _config(size="tiny", precision=None, **model):
  config = showo_config.showo_config(size)
  if precision is not None:
    config.model.matmul_precision = precision
  config.model.update(model)
  return showo_config.validate(config)


def _inputs(cfg):
  ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, _LEN)), jnp.int32)
  allowed = jnp.tril(jnp.ones((_LEN, _LEN), bool))[None].repeat(2, 0)
  return ids, allowed


def _zero_params(cfg):
  model = transformer.Transformer(cfg)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *_inputs(cfg)))["params"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _train_step_text(cfg) -> str:
  """StableHLO of a jitted forward + backward (gradients of params), lowered only, not compiled."""
  model = transformer.Transformer(cfg)
  ids, allowed = _inputs(cfg)
  cot = jax.random.normal(jax.random.key(1), (2, _LEN, cfg.vocab_size))

  def loss(params):
    return jnp.sum(model.apply({"params": params}, ids, allowed) * cot)

  return jax.jit(jax.value_and_grad(loss)).lower(_zero_params(cfg)).as_text()


def _dot_precisions(text: str) -> list[str]:
  lines = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
  out = []
  for line in lines:
    m = re.search(r"precision = \[(\w+), (\w+)\]", line)
    out.append(f"{m.group(1)},{m.group(2)}" if m else "none")
  return out


def _expected_dots(cfg) -> int:
  """Forward + backward dot_generals of an unscanned, un-rematted model: 3 per dense layer (y, dx, dW) and
  6 per attention core (s, o; dv, dp, dq, dk)."""
  dense_per_layer = 4 + (2 if cfg.is_phi else 3)  # q, k, v, o + fc1, fc2 | gate, up, down
  return cfg.num_layers * (3 * dense_per_layer + 6) + 3  # + lm_head


# ---------------------------------------------------------------------------------------------- config


def test_default_and_threading():
  config = showo_config.showo_config("tiny")
  assert config.model.matmul_precision == "default"
  for value in showo_config.MATMUL_PRECISIONS:
    assert showo_config.transformer_config(_config(precision=value)).matmul_precision == value
  del config.model["matmul_precision"]  # a config saved before the field existed
  showo_config.validate(config)
  assert showo_config.transformer_config(config).matmul_precision == "default"
  assert showo_config.MATMUL_PRECISIONS == tokenizer_config.PRECISIONS  # the tokenizer's `precision`: same values


@pytest.mark.parametrize("bad", ["tf32", "HIGHEST", "float32", ""])
def test_bad_value_is_a_one_line_error_naming_the_field(bad):
  config = showo_config.showo_config("tiny")
  config.model.matmul_precision = bad
  with pytest.raises(config_base.ConfigError, match=r"config\.model\.matmul_precision") as err:
    showo_config.validate(config)
  assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- products


@pytest.mark.parametrize("size", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("precision, want", [("highest", "HIGHEST,HIGHEST"), ("high", "HIGH,HIGH"),
                                             ("default", "DEFAULT,DEFAULT")])
def test_every_forward_and_backward_product_carries_the_precision(size, precision, want):
  cfg = showo_config.transformer_config(_config(size, precision))
  got = _dot_precisions(_train_step_text(cfg))
  # The count proves that the custom-VJP backward products (dense and attention) are among them.
  assert len(got) == _expected_dots(cfg), got
  assert set(got) == {want}


def test_scan_and_remat_recomputation_carry_the_precision():
  cfg = showo_config.transformer_config(_config(precision="highest", scan_layers=True, remat_policy="full"))
  got = _dot_precisions(_train_step_text(cfg))
  assert got and set(got) == {"HIGHEST,HIGHEST"}


def test_decode_mode_products_carry_the_precision():
  cfg = showo_config.transformer_config(_config(precision="highest"))
  model = transformer.Transformer(cfg, decode=True)
  cache = transformer.init_cache(cfg, 2, _LEN)
  ids, _ = _inputs(cfg)
  fn = lambda p, c: model.apply({"params": p, "cache": c}, ids[:, :1], jnp.ones((2, 1, _LEN), bool),
                                jnp.zeros((2, 1), jnp.int32), mutable=["cache"])
  got = _dot_precisions(jax.jit(fn).lower(_zero_params(cfg), cache).as_text())
  assert got and set(got) == {"HIGHEST,HIGHEST"}


def test_cpu_numerics_do_not_change():
  """On CPU every precision is full float32: logits and gradients agree with the default's."""
  base = showo_config.transformer_config(_config(init_std=0.3))
  ids, allowed = _inputs(base)
  params = nn.unbox(jax.jit(transformer.Transformer(base).init)(jax.random.key(3), ids, allowed))["params"]
  cot = jax.random.normal(jax.random.key(1), (2, _LEN, base.vocab_size))

  def run(precision):
    model = transformer.Transformer(dataclasses.replace(base, matmul_precision=precision))
    fwd = lambda p: model.apply({"params": p}, ids, allowed)
    logits, vjp = jax.vjp(jax.jit(fwd), params)
    return np.asarray(logits), jax.tree.map(np.asarray, vjp(cot)[0])

  want_logits, want_grads = run("default")
  for precision in ("high", "highest"):
    logits, grads = run(precision)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-6, atol=1e-6 * np.abs(want_logits).max())
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * max(np.abs(want).max(), 1e-30))


# ---------------------------------------------------------------------------------------------- interop


def test_interop_runs_at_highest(monkeypatch):
  config = _config()  # "default"
  cfg = showo_config.transformer_config(config)
  params = _zero_params(cfg)
  m = config.model
  facts = dict(llm_vocab_size=m.vocab.llm_vocab_size, codebook_size=m.vocab.codebook_size, bos_id=m.vocab.bos_id,
               eos_id=m.vocab.eos_id, rope_theta=m.rope_theta, norm_eps=m.norm_eps, rotary_fraction=m.rotary_fraction)
  _, config_back = interop.load_official_showo(showo_keys.params_to_official(params, config), **facts)
  assert config_back.model.matmul_precision == "highest"
  assert showo_config.transformer_config(config_back).matmul_precision == "highest"

  seen = []
  jitted = api._jitted_apply  # pylint: disable=protected-access

  def spy(c):
    seen.append(c.matmul_precision)
    return jitted(c)

  monkeypatch.setattr(api, "_jitted_apply", spy)
  ids, allowed = _inputs(cfg)
  interop.showo_logits(params, config, np.asarray(ids), np.asarray(allowed))  # given a "default" config
  labels = np.where(np.asarray(ids) > 0, np.asarray(ids), -100)
  interop.showo_losses(params, config, {"input_ids": np.asarray(ids), "labels": labels,
                                        "attention_mask": np.asarray(allowed), "batch_sizes": (1, 1, 0)})
  assert seen == ["highest", "highest"]


def test_official_magvit_loader_runs_at_highest():
  config = tokenizer_config.magvit_config("tiny")
  model = tokenizer_config.magvit_from_config(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  state = magvit_keys.params_to_official(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), config)
  _, loaded = magvit_keys.load_official_magvit(state)
  assert loaded.precision == "highest"


def test_bf16_products_without_bf16_units_are_the_same_numbers(monkeypatch):
  """On a CPU without bf16 units the bf16 operands are widened to f32 inside every product (f32 speed). Products
  of two bf16 numbers are exact in f32, so the result equals the bf16 × bf16 → f32 product up to summation order,
  and differs from the f32 product of the unrounded operands (the rounding to bf16 really happens)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(64, 96)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(96, 48)), jnp.float32)
  out = {}
  for units in ("1", "0"):
    monkeypatch.setenv(cpu_features.OVERRIDE_ENV, units)
    f = lambda x, w: dense.matmul(x, w, 1, jnp.bfloat16, jax.lax.Precision.HIGHEST)
    y, grads = jax.value_and_grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1))(x, w)
    out[units] = (np.asarray(f(x, w)), *map(np.asarray, grads))
    dots = [e for e in jax.make_jaxpr(f)(x, w).eqns[0].params["call_jaxpr"].eqns if e.primitive.name == "dot_general"]
    assert {str(v.aval.dtype) for v in dots[0].invars} == {"bfloat16" if units == "1" else "float32"}
  for a, b in zip(out["1"], out["0"]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
  exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
  assert np.abs(out["0"][0] - exact).max() > 1e-3  # the operands were rounded to bf16
