"""A few steps on 1 device and on 8 fake devices with FSDP give the same losses (launch/scaling_check.sh does 20
steps, also on 2 processes); and the planner's abstract batch is exactly what the pipeline feeds the step."""

import jax
import numpy as np
import pytest

from showo_jax.common import sharding
from showo_jax.data import pipeline
from showo_jax.tools import planner
from showo_jax.training import prepare
from showo_jax.training import trainer
from tests import train_fixtures


def test_fsdp8_matches_one_device_for_3_steps(tmp_path):
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  config = train_fixtures.tiny_config(str(tmp_path))
  data = prepare.prepare_training_data(config, str(tmp_path))
  datasets = pipeline.task_datasets(data.sources, {"t2i": 4, "lm": 2, "mmu": 2}, data.text_tokenizer, data.layout,
                                    config, seed=0)
  it = pipeline.MultiTaskIterator(datasets)
  batches = [next(it) for _ in range(3)]
  curves = []
  for mesh in (sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
               sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})):
    run = trainer.Run(config, mesh=mesh)
    abstract, _ = planner.abstract_inputs(run)
    assert {k: (v.shape, v.dtype) for k, v in abstract.items()} == {
        k: (v.shape, v.dtype) for k, v in batches[0].items()}
    state = run.init_state(0)
    losses = []
    for batch in batches:
      state, metrics = run.step(state, batch, jax.random.key(0))
      losses.append(float(metrics["loss"]))
    curves.append(losses)
  np.testing.assert_allclose(curves[1], curves[0], atol=1e-5, rtol=0)
