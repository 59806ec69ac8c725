"""`python -m showo_jax.train_tokenizer --config configs/magvit2.py:size=tiny --workdir DIR [--config.a.b=v ...]`.

Kept thin: flag parsing, config validation and (optionally) multi-host initialisation; the work is in
showo_jax.training.tokenizer_trainer.train_tokenizer, which tests and the Show-o data preparation call directly.
The trained tokenizer is `DIR/checkpoints` (EMA weights), read by `--checkpoint DIR` of showo_jax.tokenize_images.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from showo_jax.config import base as config_base
from showo_jax.tokenizer import config as tokenizer_config

_CONFIG = config_base.define_config_flag(help_string="Config file, e.g. configs/magvit2.py:size=tiny")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and sample grids.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  config = _CONFIG.value
  try:
    tokenizer_config.validate_training(config)
  except config_base.ConfigError as e:
    sys.exit(f"error: {e}")
  from showo_jax.common import sharding  # pylint: disable=g-import-not-at-top
  from showo_jax.data import images  # pylint: disable=g-import-not-at-top
  from showo_jax.common import checkpointing  # pylint: disable=g-import-not-at-top
  from showo_jax.common import metrics  # pylint: disable=g-import-not-at-top
  from showo_jax.tokenizer import trainer as tokenizer_trainer  # pylint: disable=g-import-not-at-top
  known = (config_base.ConfigError, sharding.MeshError, checkpointing.CheckpointMismatchError, images.ImageError,
           metrics.NonFiniteLossError, FileNotFoundError)
  try:
    folder = tokenizer_trainer.train_tokenizer(config, _WORKDIR.value)
  except tokenizer_trainer.TrainingPreempted as e:
    logging.warning("%s", e)
    return
  except known as e:  # bad input: one line naming the problem, non-zero exit, checkpoints untouched
    sys.exit(f"error: {e}")
  print(f"tokenizer checkpoint: {folder}")


if __name__ == "__main__":
  app.run(main)
