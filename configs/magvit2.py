"""MAGVIT-v2 tokenizer configs: `--config configs/magvit2.py:size=tiny` (CPU) or `:size=official` (SPEC §8).

Args (comma-separated key=value):
  size: a preset of showo_jax.config_magvit.MAGVIT_PRESETS (tiny, official).
`size=tiny` trains on the embedded MNIST digits (32×32 RGB) in a few minutes on a laptop CPU;
`size=official` is the released architecture with a large-scale schedule and needs `--config.data.source`.
Any field can then be overridden on the command line, e.g. `--config.lfq.entropy_form=exact`,
`--config.disc.enabled=True`, `--config.train.steps=2000`.
"""

from showo_jax import config_lib
from showo_jax import config_magvit


def get_config(arg: str = ""):
  args = config_lib.parse_arg(arg, size="tiny")
  return config_magvit.training_config(args.size)
