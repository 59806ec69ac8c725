"""configs/stages.py: every stage of the paper's recipe validates and builds with SPEC §10's shapes and batches."""

import importlib.util
import json
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from showo_jax.config import base as config_base
from showo_jax.config import showo as showo_config
from showo_jax.models import transformer

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHAPES = ROOT.parent / "shared" / "parity" / "param_shapes_full.json"

# SPEC §10 (per-GPU batches of the official 48-GPU runs): res, N, T, t2i/lm/mmu rows, lr, warmup, steps, L.
SPEC_STAGES = {
    ("pretrain1", 256): (256, 256, 128, (15, 4, 10), 1e-4, 5000, 500_000, 387),
    ("pretrain2", 256): (256, 256, 128, (10, 4, 10), 1e-4, 5000, 1_000_000, 387),
    ("pretrain3", 256): (256, 256, 128, (10, 4, 10), 2e-5, 5000, 50_000, 387),
    ("tune1", 256): (256, 256, 381, (4, 2, 7), 2e-5, 1000, 10_000, 640),
    ("tune2", 256): (256, 256, 381, (4, 2, 6), 5e-5, 1000, 14_000, 640),
    ("tune1", 512): (512, 1024, 381, (5, 2, 5), 2e-5, 1000, 14_000, 1408),
    ("tune2", 512): (512, 1024, 381, (5, 2, 5), 5e-5, 1000, 16_000, 1408),
}


def _stages():
  spec = importlib.util.spec_from_file_location("stages_config", ROOT / "configs" / "stages.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("stage,res", sorted(SPEC_STAGES))
def test_stage_matches_spec(stage, res):
  want_res, n, t, rows, lr, warmup, steps, length = SPEC_STAGES[(stage, res)]
  devices = 48
  c = showo_config.validate(_stages().get_config(f"stage={stage},res={res},devices={devices}"))
  assert (c.data.resolution, c.data.num_image_tokens, c.data.max_text_len) == (want_res, n, t)
  assert showo_config.seq_len(c) == length
  assert (c.train.batch_t2i, c.train.batch_lm, c.train.batch_mmu) == tuple(devices * r for r in rows)
  assert (c.optimizer.lr, c.optimizer.warmup_steps, c.train.steps) == (lr, warmup, steps)
  # SPEC §10 common settings.
  assert (c.optimizer.b1, c.optimizer.b2, c.optimizer.eps, c.optimizer.weight_decay) == (0.9, 0.999, 1e-8, 0.01)
  assert c.optimizer.weight_decay_mask == "official" and c.train.seed == 10086
  assert (c.loss.t2i_coeff, c.loss.lm_coeff, c.loss.mmu_coeff, c.loss.cond_dropout_prob) == (1.0, 0.1, 1.0, 0.1)
  assert c.train.sample_steps == 12


def test_stages_build_the_official_model():
  """The stage configs' backbone has exactly the released checkpoint's parameter count (abstract init only)."""
  c = showo_config.validate(_stages().get_config("stage=tune2,res=512"))
  model = transformer.Transformer(showo_config.transformer_config(c))
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                                   jnp.ones((1, 8, 8), bool)))["params"]
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  want = 1_448_176_770  # SPEC §1 / param_shapes_full.json "n_params" of show-o 256 and 512
  if SHAPES.exists():
    with open(SHAPES) as f:
      want = json.load(f)["show-o-512x512 (num_vq_tokens=1024) n_params"]
  assert count == want


@pytest.mark.parametrize("arg,message", [
    ("stage=pretrain1,res=512", "stage pretrain1 is trained at 256 only, not res=512"),
    ("stage=pretrain4", "unknown stage 'pretrain4'"),
    ("stage=tune1,steps=3", "unknown config arg 'steps'"),
])
def test_bad_stage_args_are_one_line(arg, message):
  with pytest.raises(config_base.ConfigError, match=message):
    _stages().get_config(arg)
