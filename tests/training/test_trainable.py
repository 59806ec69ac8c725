"""config.train.trainable: frozen parameters stay bit-identical over several updates at lr > 0, only trained
parameters have optimizer state, gradients and an EMA (the params served for samples are the frozen ones bit for
bit and the EMA of the trained ones), the clipping norm sees only them, patterns that match nothing are refused
by name."""

import flax
import jax
import numpy as np
import pytest

from showo_jax.common import optimizer as optimizer_lib
from showo_jax.data import pipeline
from showo_jax.training import prepare
from showo_jax.training import train_step
from showo_jax.training import trainer
from tests import train_fixtures


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _batches(config, folder, n):
  data = prepare.prepare_training_data(config, folder)
  datasets = pipeline.task_datasets(data.sources, {"t2i": 4, "lm": 2, "mmu": 2}, data.text_tokenizer, data.layout,
                                    config, seed=0)
  it = pipeline.MultiTaskIterator(datasets)
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize("trainable", ["lora", "lora,embed"])
def test_frozen_parameters_are_untouched_and_have_no_optimizer_state(tmp_path, trainable):
  config = train_fixtures.tiny_config(str(tmp_path), steps=10)
  config.model.lora.update(rank=4, targets="q,v,fc1")
  config.train.trainable = trainable
  config.optimizer.update(lr=1e-2, warmup_steps=0, grad_clip_norm=0.5)
  config.train.ema_decay = 0.9
  run = trainer.Run(config)
  state = run.init_state(0)
  before = {k: np.asarray(v) for k, v in _flat(state.params).items()}
  trained = {k for k in before if k[-1] in ("lora_a", "lora_b") or (trainable.endswith("embed") and k[0] == "embed")}
  assert len([k for k in trained if k[-1] == "lora_b"]) == 3 * config.model.num_layers
  # Adam's moments exist for the trained leaves only.
  adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")]
  assert len(adam) == 1 and set(_flat(adam[0].mu)) == trained
  # The EMA too, and its bytes are the trained parameters' bytes (no averaged copy of the frozen backbone).
  assert set(_flat(state.ema_params)) == trained
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
  assert nbytes(state.ema_params) == sum(before[k].nbytes for k in trained) < nbytes(state.params) / 2
  batches = _batches(config, str(tmp_path), 3)
  _, grads = run.gradients(state, batches[0], jax.random.key(1))
  assert set(_flat(grads)) == trained
  ema = {k: before[k].astype(np.float64) for k in trained}
  for i, batch in enumerate(batches):
    state, metrics = run.step(state, batch, jax.random.key(1))
    d = min(0.9, (1 + i) / (10 + i))
    ema = {k: d * e + (1 - d) * np.asarray(_flat(state.params)[k], np.float64) for k, e in ema.items()}
    if i == 0:  # the clipping norm (and the logged one) is that of the trained gradients alone
      np.testing.assert_allclose(float(metrics["grad_norm"]), float(optimizer_lib.global_norm(grads)), rtol=1e-5)
      assert float(metrics["lr"]) > 0
  after = {k: np.asarray(v) for k, v in _flat(state.params).items()}
  for k in before:
    if k in trained:
      if k[-1] != "lora_a" or trainable == "lora":  # A moves once B is non-zero
        assert np.abs(after[k] - before[k]).max() > 1e-4, k
    else:
      np.testing.assert_array_equal(after[k], before[k], err_msg=str(k))
  # What samples, evaluation and the checkpoint serve: every parameter; the frozen ones bit for bit, the trained
  # ones their EMA (which differs from the trained params themselves).
  served = _flat(train_step.inference_params(state, run.trainable_paths))
  assert set(served) == set(before)
  for k in before:
    if k in trained:
      np.testing.assert_allclose(np.asarray(served[k], np.float64), ema[k], rtol=1e-5, atol=1e-7, err_msg=str(k))
    else:
      np.testing.assert_array_equal(np.asarray(served[k]), before[k], err_msg=str(k))
  assert max(np.abs(np.asarray(served[k]) - after[k]).max() for k in trained) > 1e-4
  saved = train_step.checkpoint_state(state, run.trainable_paths)
  assert jax.tree.structure(saved) == jax.tree.structure(run.checkpoint_abstract)
  # ... laid out as the checkpoints of runs that averaged every parameter, so those still resume.
  assert jax.tree.structure(saved.ema_params) == jax.tree.structure(run.abstract_state.params)
  assert all(a is b for a, b in zip(jax.tree.leaves(saved.ema_params), jax.tree.leaves(served)))
  back = train_step.from_checkpoint(saved, run.trainable_paths)
  assert jax.tree.structure(back) == jax.tree.structure(state)


def test_all_is_every_parameter(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path))
  run = trainer.Run(config)
  state = run.init_state(0)
  assert run.trainable_paths is None
  adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")]
  assert set(_flat(adam[0].mu)) == set(_flat(state.params))


@pytest.mark.parametrize("trainable, rank, message", [
    ("lora", 0, "'lora' matches no parameter (config.model.lora.rank is 0"),
    ("lora,qq_proj", 2, "'qq_proj' matches no parameter"),
])
def test_patterns_that_match_nothing_are_refused(tmp_path, trainable, rank, message):
  config = train_fixtures.tiny_config(str(tmp_path))
  config.model.lora.rank = rank
  config.train.trainable = trainable
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
    trainer.Run(config)
