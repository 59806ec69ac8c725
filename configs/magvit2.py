"""MAGVIT-v2 tokenizer configs: `--config configs/magvit2.py:size=tiny` (CPU) or `:size=official` (SPEC §8).

Args (comma-separated key=value):
  size: a preset of showo_jax.config_magvit.MAGVIT_PRESETS (tiny, official).
Any field can then be overridden on the command line, e.g. `--config.lfq.entropy_form=exact`.
"""

from showo_jax import config_lib
from showo_jax import config_magvit


def get_config(arg: str = ""):
  args = config_lib.parse_arg(arg, size="tiny")
  return config_magvit.magvit_config(args.size)
