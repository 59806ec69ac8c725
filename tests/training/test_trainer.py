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


def _lora(config, lora: bool):
  """The config with rank-2 adapters (dropout on, so their random stream must resume too) trained alone, with an
  EMA (of the adapters only; the checkpoint serves it as a full tree)."""
  if lora:
    config.model.lora.update(rank=2, targets="q,v,fc2", dropout=0.1)
    config.train.update(trainable="lora", ema_decay=0.5)
    config.optimizer.warmup_steps = 0  # lr > 0 from the first update: B leaves zero at step 1
  return config


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_is_bit_exact(tmp_path, lora):
  data = str(tmp_path / "data")
  straight = str(tmp_path / "straight")
  trainer.train_and_evaluate(_lora(train_fixtures.tiny_config(data, steps=3), lora), straight)
  resumed = str(tmp_path / "resumed")
  interrupted = _lora(train_fixtures.tiny_config(data, steps=3), lora)
  interrupted.train.stop_after = 2  # as if the job had been stopped after step 2
  trainer.train_and_evaluate(interrupted, resumed)
  assert checkpoints.load_checkpoint(resumed)[1].train.steps == 3
  trainer.train_and_evaluate(_lora(train_fixtures.tiny_config(data, steps=3), lora), resumed)  # resumes at step 2
  a, b = _final_params(straight), _final_params(resumed)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  if lora:  # the adapters did train (B moved off zero), and they are what resumed bit for bit
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(a)[0]}
    b_factors = [v for k, v in flat.items() if "lora_b" in k]
    assert len(b_factors) == 3 * train_fixtures.tiny_config(data).model.num_layers
    assert all(np.abs(v).max() > 0 for v in b_factors)
    # What export, init_from and evaluation read: every parameter of the model, from the EMA entry.
    checkpoints.load_params(straight, _lora(train_fixtures.tiny_config(data), lora))
  rows = [json.loads(l) for l in open(os.path.join(straight, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3]
  for key in ("loss", "loss_t2i", "loss_lm", "loss_mmu", "grad_norm", "lr", "step_time_s", "tokens_per_s", "mfu"):
    assert np.isfinite(rows[-1][key]), key
  resumed_rows = [json.loads(l) for l in open(os.path.join(resumed, "metrics.jsonl"))]
  assert resumed_rows[-1]["loss"] == rows[-1]["loss"]  # step 3 saw the same batch and params


def _batches(config, n: int, rows=(4, 2, 2)):
  """The first `n` global batches of the run's pipeline (the same whatever the mesh)."""
  data = prepare.prepare_training_data(config, "/tmp/unused")
  datasets = pipeline.task_datasets(data.sources, dict(zip(("t2i", "lm", "mmu"), rows)), data.text_tokenizer,
                                    data.layout, config, seed=0)
  it = pipeline.MultiTaskIterator(datasets)
  return [next(it) for _ in range(n)]


def _trajectory(config, mesh, batches):
  """(gradients at the first step, loss and lr of each step, params after all steps), as float64 numpy."""
  run = trainer.Run(config, mesh=mesh)
  state = run.init_state(0)
  _, grads = run.gradients(state, batches[0], jax.random.key(0))
  grads = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
  init = [np.asarray(p, np.float64) for p in jax.tree.leaves(state.params)]
  losses, lrs = [], []
  for batch in batches:
    state, metrics = run.step(state, batch, jax.random.key(0))
    losses.append(float(metrics["loss"]))
    lrs.append(float(metrics["lr"]))
  params = [np.asarray(p, np.float64) for p in jax.tree.leaves(state.params)]
  return grads, losses, lrs, init, params


def _assert_trees_close(got, want, rtol, what):
  """Leafwise |got − want| ≤ rtol · max|want| (per leaf): the tolerance scales with each tensor."""
  for i, (g, w) in enumerate(zip(got, want)):
    bound = rtol * max(np.abs(w).max(), 1e-30)
    err = np.abs(g - w).max()
    assert err <= bound, f"{what}: leaf {i} differs by {err:.3g} > {bound:.3g}"


def _trees_close(got, want, rtol):
  try:
    _assert_trees_close(got, want, rtol, "")
    return True
  except AssertionError:
    return False


# Another mesh sums in float32 in another order: on CPU the gradients agree to ≤ 9e-7 of each leaf's largest entry
# and the 3-step parameter updates to ≤ 2.2e-5; the tolerances leave a 10× margin.
GRAD_RTOL = 1e-5
PARAM_RTOL = 2e-4


def _updates_config(tmp_path, rows=(4, 2, 2)):
  config = train_fixtures.tiny_config(str(tmp_path), steps=4)
  config.optimizer.update(lr=1e-2, warmup_steps=0)  # lr > 0 at every compared update (no warm-up from 0)
  # Adam divides by sqrt(v) + eps: with eps = 1e-8 an entry whose gradient is 0 on one mesh and 1e-12 of rounding
  # noise on another (unused embedding rows) moves by up to lr/2, 2 % of the largest update; eps = 1e-4 keeps such
  # entries linear in their gradient, so the updates compare as tightly as the gradients do.
  config.optimizer.eps = 1e-4
  config.train.update(batch_t2i=rows[0], batch_lm=rows[1], batch_mmu=rows[2])
  return config


def _check_against(ref, got, what):
  grads, losses, lrs, init, params = got
  ref_grads, ref_losses, ref_lrs, ref_init, ref_params = ref
  assert min(lrs) > 0 and lrs == ref_lrs, lrs
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  _assert_trees_close(grads, ref_grads, GRAD_RTOL, f"{what}: gradients")
  _assert_trees_close([p - i for p, i in zip(params, init)], [p - i for p, i in zip(ref_params, ref_init)],
                      PARAM_RTOL, f"{what}: parameter updates after 3 steps")


def test_meshes_give_the_same_gradients_and_updates(tmp_path):
  """Gradients at step 1 and the parameter change after 3 AdamW steps (lr > 0 at each) agree across the meshes
  (data, fsdp, tensor) = (1, 1, 1), (1, 8, 1), (2, 2, 2), (2, 1, 4): leafwise within GRAD_RTOL / PARAM_RTOL of
  each tensor's largest entry.

  Why a wrong gradient fails: the gradients themselves are compared (Adam's update barely depends on a gradient's
  scale, so the params alone would miss a gradient that is off by a constant factor), at a tolerance 10× above the
  float32 reordering noise; the checks at the end show that 1 % off in one gradient tensor, or in one entry of
  the updates, is far outside it. Comparing params after one step at lr = 0, as the warm-up's first step is,
  would compare the initial params and pass any gradient.
  """
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  config = _updates_config(tmp_path)
  batches = _batches(config, 3)
  ref = _trajectory(config, sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]), batches)
  for shape in [(1, 8, 1), (2, 2, 2), (2, 1, 4)]:
    config.mesh.update(data=shape[0], fsdp=shape[1], tensor=shape[2])
    _check_against(ref, _trajectory(config, sharding.make_mesh(config.mesh), batches), f"mesh {shape}")
  # The comparison can fail: 1 % off in one gradient tensor, or in the biggest update of one tensor.
  grads, _, _, init, params = ref
  wrong = [g * 1.01 if i == 3 else g for i, g in enumerate(grads)]
  assert not _trees_close(wrong, grads, GRAD_RTOL)
  updates = [p - i for p, i in zip(params, init)]
  assert max(np.abs(u).max() for u in updates) > 1e-3  # the params did move
  bumped = [u.copy() for u in updates]
  flat = bumped[3].reshape(-1)
  flat[np.argmax(np.abs(flat))] *= 1.01
  assert not _trees_close(bumped, updates, PARAM_RTOL)


def test_gradient_accumulation_matches_full_batch(tmp_path):
  """grad_accum_steps 2 and 4 give the full batch's gradients and, after 3 AdamW steps at lr > 0, its
  parameters (same tolerances and the same sensitivity as the mesh test above)."""
  config = _updates_config(tmp_path, rows=(8, 4, 4))
  batches = _batches(config, 3, rows=(8, 4, 4))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  ref = _trajectory(config, mesh, batches)
  for accum in (2, 4):
    config.train.grad_accum_steps = accum
    _check_against(ref, _trajectory(config, mesh, batches), f"grad_accum_steps={accum}")


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
