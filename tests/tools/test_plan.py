"""Ahead-of-time planning (`python -m showo_jax.plan`): figures against independent counts, and bad input."""

import math
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from showo_jax.common import cpu_features
from showo_jax.config import showo as showo_config
from showo_jax.models import transformer
from showo_jax.tools import planner
from showo_jax.training import flops as flops_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
FSDP = 8


def _tiny_config():
  config = showo_config.showo_config("tiny")  # batch 4/2/2 = 8 rows: one per device
  config.mesh.update(data=1, fsdp=FSDP, tensor=1)
  return config


@pytest.fixture(scope="module")
def tiny_plan():
  if jax.device_count() < FSDP:
    pytest.skip("needs 8 (fake) devices")
  config = _tiny_config()
  return config, planner.plan(config, jax.devices()[:FSDP])


def _expected_param_bytes(config):
  """Per-device parameter bytes from the model's own logical names: with mesh data=1,fsdp=8,tensor=1 and the
  default rules, a leaf is split 8 ways exactly when one of its axes is 'embed'; every other leaf is replicated."""
  model = transformer.Transformer(showo_config.transformer_config(config))
  seq = showo_config.seq_len(config)
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, seq), jnp.int32), jnp.ones((1, seq, seq), bool))
  leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  count = sum(math.prod(leaf.value.shape) for leaf in leaves)
  per_device = sum(math.prod(leaf.value.shape) * 4 // (FSDP if "embed" in leaf.names else 1) for leaf in leaves)
  return count, per_device


def test_plan_figures_match_independent_counts(tiny_plan):
  config, result = tiny_plan
  count, per_device = _expected_param_bytes(config)
  assert result["param_count"] == count
  assert result["params_bytes"] == per_device
  assert per_device < count * 4  # really sharded
  # AdamW in float32: mu and nu like the params, plus two int32 step counters.
  assert result["opt_state_bytes"] == 2 * per_device + 8
  assert result["flops_analytic"] == flops_lib.train_flops_per_step(config)
  assert result["flops_analytic_per_device"] == pytest.approx(result["flops_analytic"] / FSDP)
  # XLA's arguments are exactly the state, the step counter and this device's batch rows (the rng is unused by
  # the deterministic step, and jit drops unused arguments).
  rows, seq = 8 // FSDP, showo_config.seq_len(config)
  batch = (2 * rows * seq + rows) * 4
  assert result["argument_bytes"] == per_device + result["opt_state_bytes"] + 4 + batch
  assert result["alias_bytes"] == per_device + result["opt_state_bytes"] + 4  # the donated state is updated in place
  assert result["temp_bytes"] > 0
  assert result["total_bytes"] == (result["argument_bytes"] + result["unaliased_output_bytes"] +
                                   result["temp_bytes"] + result["generated_code_bytes"])
  assert (result["rows"], result["rows_per_device"], result["devices"]) == (8, 1, FSDP)


def test_report_says_whether_it_fits(tiny_plan):
  _, result = tiny_plan
  small = result["total_bytes"] / planner.GIB / 2
  text = planner.report(result, small)
  assert f"does not fit in {small:g} GiB" in text and not planner.fits(result, small)
  assert "fits in 80 GiB" in planner.report(result, 80) and planner.fits(result, 80)
  for label in ("parameters", "optimizer state", "activations/temporaries", "FLOPs per step"):
    assert label in text


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "showo_jax.plan", "--config", "configs/showo.py:size=tiny", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--mesh", "data=3,fsdp=4,tensor=1", "--devices", "8"], r"needs 12 devices, but 8 are available"),
    (["--mesh", "data=1,fsdp=8,tensor=1", "--config.train.batch_t2i=5"],
     r"batch \(all tasks\) 9 is not divisible by data×fsdp = 8"),
    (["--mesh", "data=1,fsdp=8,pipeline=2"], r"expected axis=size .* got 'pipeline=2'"),
])
def test_bad_mesh_fails_before_compiling(args, message):
  r = _cli(*args)
  assert r.returncode == 2, r.stderr[-2000:]  # bad input
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), r.stderr[-2000:]
  assert "compile" not in r.stdout


def test_flash_is_planned_without_the_score_matrices(monkeypatch):
  """A 32×32-token image (L = 1043) makes the xla path's saved [B, H, L, L] probabilities dominate: 2 layers ×
  8 rows × 4 heads × L² × 4 bytes ≈ 266 MiB on one device. Planned on CPU devices, 'flash' is sized as its
  blockwise twin, which keeps no such array: its temporaries must be far smaller, and the report says so."""
  config = showo_config.showo_config("tiny")
  config.data.update(num_image_tokens=1024)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  temps = {}
  monkeypatch.setenv(cpu_features.OVERRIDE_ENV, "0")  # restored afterwards; for_accelerators sets it to 1
  for impl in ("xla", "flash"):
    c = showo_config.validate(config.copy_and_resolve_references())
    c.model.attention_impl = impl
    note = planner.for_accelerators(c, jax.devices()[:1])
    result = planner.plan(c, jax.devices()[:1])
    temps[impl] = result["temp_bytes"]
    assert bool(note) == (impl == "flash")
  m = config.model
  scores = m.num_layers * 8 * m.num_heads * showo_config.seq_len(config) ** 2 * 4
  assert temps["xla"] > scores
  assert temps["flash"] < temps["xla"] - 0.8 * scores, temps
