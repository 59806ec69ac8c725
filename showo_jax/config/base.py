"""The config machinery every subsystem shares: the error type, `key=value` config args, the `--config` flag.

Each subsystem builds its own ConfigDicts on top of it (config/showo.py for Show-o, tokenizer/config.py for
MAGVIT-v2) and converts them to the hyperparameter dataclasses its modules take.
"""

import difflib
import importlib.util
import os

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


def load_config_file(spec: str) -> ConfigDict:
  """`configs/showo.py:size=tiny` → that file's get_config("size=tiny"); a missing or failing file is a
  ConfigError naming it."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"{path}: no such config file")
  module_spec = importlib.util.spec_from_file_location("_showo_jax_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # a syntax error or a raise inside the user's file
    import traceback  # pylint: disable=g-import-not-at-top
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) ==
             os.path.abspath(path)]
    where = f" (line {lines[-1]})" if lines and not isinstance(e, SyntaxError) else ""
    raise ConfigError(f"{spec}: {type(e).__name__}: {e}{where}") from e


def define_config_flag(name: str = "config", help_string: str = "Config file, e.g. configs/showo.py:size=tiny"):
  """`--config path.py:arg` plus `--config.a.b=v` overrides (absl config_flags)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  return config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)


def config_spec(argv, name: str = "config"):
  """The FILE[:arg] given as `--NAME=…` or `--NAME …` in argv, or None."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)
  if spec is None and f"--{name}" in argv[:-1]:
    spec = argv[argv.index(f"--{name}") + 1]
  return spec


def config_flag_problem(argv, name: str = "config"):
  """One line naming what is wrong with `--NAME=FILE[:arg]` and its `--NAME.FIELD=VALUE` overrides in argv (a
  missing or failing file, an unknown field), or None; absl's own messages for these are tracebacks or vague."""
  spec = config_spec(argv, name)
  if not spec:
    if not any(a.startswith(f"--{name}.") for a in argv):
      return None
    return f"--{name} is missing: give the config file (e.g. --{name} configs/tiny.py) before its overrides"
  try:
    config = load_config_file(spec)
  except ConfigError as e:
    return f"--{name}: {e}"
  for arg in argv:
    if arg.startswith(f"--{name}."):
      field = arg[len(name) + 3:].split("=", 1)[0]
      node, seen = config, []
      for part in field.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
          known = list(node) if isinstance(node, ml_collections.ConfigDict) else []
          near = difflib.get_close_matches(part, known, n=1)
          hint = f" (did you mean {'.'.join(seen + near[:1])}?)" if near else ""
          return f"--{name}.{field}: {spec} has no field {field!r}{hint}"
        node = node[part]
        seen.append(part)
  return None
