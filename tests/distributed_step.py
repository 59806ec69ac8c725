"""One sharded train step on a fixed global batch; run by tests/training/test_distributed.py in 1 or 2 processes.

Usage: python tests/distributed_step.py DATA_DIR OUT_JSON [distributed]
Each process feeds its own rows of the same global batch; the loss must not depend on the process count.
"""

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_fixtures  # pylint: disable=g-import-not-at-top,wrong-import-position
from showo_jax.common import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from showo_jax.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from showo_jax.training import prepare  # pylint: disable=g-import-not-at-top,wrong-import-position
from showo_jax.training import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(data_dir, out, distributed):
  sharding.maybe_initialize_distributed(distributed)
  config = train_fixtures.tiny_config(data_dir)
  config.mesh.update(data=2, fsdp=-1, tensor=2)
  data = prepare.prepare_training_data(config, data_dir)
  datasets = pipeline.task_datasets(data.sources, {"t2i": 4, "lm": 2, "mmu": 2}, data.text_tokenizer, data.layout,
                                    config, seed=0)  # the full global batch, built identically everywhere
  batch = next(pipeline.MultiTaskIterator(datasets))
  n, i = jax.process_count(), jax.process_index()
  rows = len(batch["task_ids"]) // n
  local = {k: v[i * rows:(i + 1) * rows] for k, v in batch.items()}
  run = trainer.Run(config)
  state = run.init_state(0)
  _, metrics = run.step(state, local, jax.random.key(0))
  result = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
  if i == 0:
    with open(out, "w") as f:
      json.dump(dict(result, devices=jax.device_count(), processes=n), f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], len(sys.argv) > 3)
