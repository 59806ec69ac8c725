"""MAGVIT-v2 tokenizer configs: `--config configs/magvit2.py:size=tiny` (CPU) or `:size=official` (SPEC §8).

Args (comma-separated key=value):
  size: a preset of showo_jax.tokenizer.config.MAGVIT_PRESETS (tiny, official).
`size=tiny` trains on the embedded MNIST digits (32×32 RGB) in a few minutes on a laptop CPU;
`size=official` is the released architecture with a large-scale schedule and needs `--config.data.source`.
Any field can then be overridden on the command line, e.g. `--config.lfq.entropy_form=exact`,
`--config.disc.enabled=True`, `--config.train.steps=2000`.
"""

from showo_jax.config import base as config_base
from showo_jax.tokenizer import config as tokenizer_config


def get_config(arg: str = ""):
  args = config_base.parse_arg(arg, size="tiny")
  return tokenizer_config.training_config(args.size)
