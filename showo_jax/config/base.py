"""The config machinery every subsystem shares: the error type, `key=value` config args, the `--config` flag.

Each subsystem builds its own ConfigDicts on top of it (config/showo.py for Show-o, tokenizer/config.py for
MAGVIT-v2) and converts them to the hyperparameter dataclasses its modules take.
"""

import ml_collections

ConfigDict = ml_collections.ConfigDict

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field."""


def parse_arg(arg: str, **defaults) -> ConfigDict:
  """Parses `"size=tiny,res=256"` into a ConfigDict typed like `defaults`; unknown keys raise."""
  out = ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ConfigError(f"config arg {item!r} is not key=value")
    if key not in defaults:
      raise ConfigError(f"unknown config arg {key!r}; known: {', '.join(sorted(defaults))}")
    kind = type(defaults[key])
    if kind is bool:
      value = value.lower() in ("1", "true", "yes")
    out[key] = kind(value)
  return out


def check(cond: bool, message: str):
  """Raises ConfigError(message) unless `cond`; `message` names the field."""
  if not cond:
    raise ConfigError(message)


def define_config_flag(name: str = "config", help_string: str = "Config file, e.g. configs/showo.py:size=tiny"):
  """`--config path.py:arg` plus `--config.a.b=v` overrides (absl config_flags)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  return config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)
