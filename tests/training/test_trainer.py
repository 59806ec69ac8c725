"""Training system: exact resume, mesh independence, gradient accumulation, bad input."""

import json
import os

import jax
import numpy as np
import pytest

from showo_jax.common import sharding
from showo_jax.config import showo as showo_config
from showo_jax.data import pipeline
from showo_jax.interop import checkpoints
from showo_jax.training import prepare
from showo_jax.training import trainer
from tests import train_fixtures


def _final_params(workdir):
  params, _ = checkpoints.load_checkpoint(workdir)
  return params


def test_resume_is_bit_exact(tmp_path):
  data = str(tmp_path / "data")
  straight = str(tmp_path / "straight")
  trainer.train_and_evaluate(train_fixtures.tiny_config(data, steps=3), straight)
  resumed = str(tmp_path / "resumed")
  interrupted = train_fixtures.tiny_config(data, steps=3)
  interrupted.train.stop_after = 2  # as if the job had been stopped after step 2
  trainer.train_and_evaluate(interrupted, resumed)
  assert checkpoints.load_checkpoint(resumed)[1].train.steps == 3
  trainer.train_and_evaluate(train_fixtures.tiny_config(data, steps=3), resumed)  # resumes at step 2
  a, b = _final_params(straight), _final_params(resumed)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  rows = [json.loads(l) for l in open(os.path.join(straight, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3]
  for key in ("loss", "loss_t2i", "loss_lm", "loss_mmu", "grad_norm", "lr", "step_time_s", "tokens_per_s", "mfu"):
    assert np.isfinite(rows[-1][key]), key
  resumed_rows = [json.loads(l) for l in open(os.path.join(resumed, "metrics.jsonl"))]
  assert resumed_rows[-1]["loss"] == rows[-1]["loss"]  # step 3 saw the same batch and params


def _one_step_loss(config, mesh, accum=1):
  config.train.grad_accum_steps = accum
  run = trainer.Run(config, mesh=mesh)
  data = prepare.prepare_training_data(config, "/tmp/unused")
  datasets = pipeline.task_datasets(data.sources, {"t2i": 4, "lm": 2, "mmu": 2}, data.text_tokenizer, data.layout,
                                    config, seed=0)
  batch = next(pipeline.MultiTaskIterator(datasets))
  state = run.init_state(0)
  state, metrics = run.step(state, batch, jax.random.key(0))
  return float(metrics["loss"]), jax.tree.map(np.asarray, state.params)


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 2, 2), (2, 1, 4)])
def test_meshes_give_the_same_step(tmp_path, shape):
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  config = train_fixtures.tiny_config(str(tmp_path))
  ref_loss, ref_params = _one_step_loss(config, sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1},
                                                                   jax.devices()[:1]))
  config.mesh.update(data=shape[0], fsdp=shape[1], tensor=shape[2])
  loss, params = _one_step_loss(config, sharding.make_mesh(config.mesh))
  assert abs(loss - ref_loss) <= 1e-5
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(x, y, atol=2e-5)


def test_gradient_accumulation_matches_full_batch(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  loss1, params1 = _one_step_loss(config, mesh, accum=1)
  loss2, params2 = _one_step_loss(config, mesh, accum=2)
  assert abs(loss1 - loss2) <= 1e-5
  for x, y in zip(jax.tree.leaves(params1), jax.tree.leaves(params2)):
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_mesh_that_does_not_fit_fails_before_compiling():
  with pytest.raises(sharding.MeshError, match=r"needs 12 devices, but 8 are available"):
    sharding.make_mesh({"data": 3, "fsdp": 4, "tensor": 1})
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  with pytest.raises(sharding.MeshError, match=r"global batch 12 is not divisible by data×fsdp = 8"):
    sharding.check_batch(12, mesh)


def test_incompatible_checkpoint_refuses_to_resume(tmp_path):
  data = str(tmp_path / "data")
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(train_fixtures.tiny_config(data, steps=1), workdir)
  config = train_fixtures.tiny_config(data, steps=2)
  config.model.num_layers = 3
  from showo_jax.common import checkpointing  # pylint: disable=g-import-not-at-top
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"config.model.num_layers=2, this run has "
                                                                  r"config.model.num_layers=3"):
    trainer.train_and_evaluate(config, workdir)


def test_ema_follows_its_warmed_up_decay_and_is_what_the_checkpoint_serves(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path / "data"))
  config.train.ema_decay = 0.9
  run = trainer.Run(config, mesh=sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
  data = prepare.prepare_training_data(config, "/tmp/unused")
  batches = pipeline.MultiTaskIterator(pipeline.task_datasets(data.sources, {"t2i": 4, "lm": 2, "mmu": 2},
                                                              data.text_tokenizer, data.layout, config, seed=0))
  state = run.init_state(0)
  as64 = lambda tree: [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
  ema = as64(state.params)
  for t in range(3):
    state, _ = run.step(state, next(batches), jax.random.key(0))
    d = min(0.9, (1 + t) / (10 + t))  # 0.1, 0.18, 0.25: the warm-up, not 0.9 yet
    ema = [d * e + (1 - d) * p for e, p in zip(ema, as64(state.params))]
  for got, want in zip(as64(state.ema_params), ema):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert max(np.abs(g - p).max() for g, p in zip(as64(state.ema_params), as64(state.params))) > 1e-5

  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(config, workdir)
  params, _ = checkpoints.load_checkpoint(workdir)
  from showo_jax.common import checkpointing  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  saved = ckpt.restore_raw(ckpt.latest_step())
  ckpt.close()
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(saved["ema_params"])):
    np.testing.assert_array_equal(got, want)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved["ema_params"]),
                                                      jax.tree.leaves(saved["params"])))
  config.train.ema_decay = 0.0
  config.train.steps = 4
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"train.ema_decay=0.9, this run has "
                                                                  r"config.train.ema_decay=0.0"):
    trainer.train_and_evaluate(config, workdir)


def test_codebook_bit_init_makes_image_rows_linear_in_the_lfq_bits(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path))
  config.model.image_embedding_init = "codebook_bits"
  run = trainer.Run(config, mesh=sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
  params = run.init_state(0).params
  layout = showo_config.vocab_layout(config)
  signs = np.array([[1.0 if (c >> (5 - k)) & 1 else -1.0 for k in range(6)] for c in range(64)])  # MSB first
  for table in (np.asarray(params["embed"]["embedding"], np.float64),
                np.asarray(params["lm_head"]["kernel"], np.float64).T):
    rows = table[layout.image_offset:layout.mask_id]
    basis, *_ = np.linalg.lstsq(signs, rows, rcond=None)  # 6 vectors explain all 64 rows exactly
    np.testing.assert_allclose(signs @ basis, rows, atol=1e-6)
    assert 0.015 < rows.std() < 0.025  # still N(0, init_std)-sized
    text_rows = table[:layout.image_offset]
    assert np.linalg.lstsq(signs, text_rows[:64], rcond=None)[1].sum() > 1e-3  # the other rows stay random
  # Code 0 (all bits -1) is minus code 63 (all +1): the structure the init encodes.
  emb = np.asarray(params["embed"]["embedding"])
  np.testing.assert_allclose(emb[layout.image_offset], -emb[layout.image_offset + 63], atol=1e-7)
