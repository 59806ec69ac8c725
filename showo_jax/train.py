"""`python -m showo_jax.train --config configs/tiny.py --workdir DIR [--config.a.b=v ...]`.

Kept thin: flag parsing, config validation and (optionally) multi-host initialisation; the work is in
showo_jax.training.trainer.train_and_evaluate, which tests and notebooks call directly.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from showo_jax.common import sharding
from showo_jax.config import base as config_base
from showo_jax.config import showo as showo_config

_CONFIG = config_base.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  config = _CONFIG.value
  try:
    showo_config.validate(config)
  except config_base.ConfigError as e:
    sys.exit(f"error: {e}")
  sharding.maybe_initialize_distributed(config.train.distributed)
  from showo_jax.interop import reader  # pylint: disable=g-import-not-at-top
  from showo_jax.common import checkpointing  # pylint: disable=g-import-not-at-top
  from showo_jax.common import metrics  # pylint: disable=g-import-not-at-top
  from showo_jax.training import trainer  # pylint: disable=g-import-not-at-top
  known = (config_base.ConfigError, sharding.MeshError, reader.CheckpointError, checkpointing.CheckpointMismatchError,
           metrics.NonFiniteLossError, FileNotFoundError)
  try:
    trainer.train_and_evaluate(config, _WORKDIR.value)
  except known as e:  # bad input: one line naming the problem, non-zero exit, checkpoints untouched
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
