"""Show-o configs: `--config configs/showo.py:size=tiny` (CPU) or `:size=phi-1.5,res=512` (official shapes).

Args (comma-separated key=value):
  size: a model preset of showo_jax.config.showo.MODEL_PRESETS (tiny, tiny-llama, phi-1.5).
  res:  image resolution for the full-size presets (256 → 256 image tokens, 512 → 1024).
Any field can then be overridden on the command line, e.g. `--config.loss.lm_coeff=0.2`.
"""

from showo_jax.config import base as config_base
from showo_jax.config import showo as showo_config


def get_config(arg: str = ""):
  args = config_base.parse_arg(arg, size="tiny", res=256)
  return showo_config.showo_config(size=args.size, res=args.res)
