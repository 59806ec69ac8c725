"""What every entry point shares: one exit-code convention, one-line errors, and `--help` that exits 0 and shows
every option with its help text and default.

Exit status (docs/cli.md): 0 done, also after a SIGTERM preemption that saved (rerun to continue);
1 a failure while running (a non-finite loss, an unexpected error); 2 bad input or usage, in one line that names
the bad thing; 130 stopped by Ctrl-C after saving what the phase allows.
"""

import argparse
import errno
import os
import signal
import sys

from showo_jax.common import interrupts

OK, FAILURE, BAD_INPUT, CTRL_C = 0, 1, 2, 130


def one_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  message = lines[0] if lines else type(error).__name__
  filename = getattr(error, "filename", None)
  if isinstance(error, OSError) and filename and str(filename) not in message:
    message = f"{filename}: {message}"
  return message


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Keeps the description's layout and appends each option's default to its help."""

  def _get_help_string(self, action):
    text = action.help or ""
    if action.default not in (None, argparse.SUPPRESS, False) and "default" not in text and action.option_strings:
      text += f" (default: {action.default!r})" if isinstance(action.default, str) else f" (default: {action.default})"
    return text


class Parser(argparse.ArgumentParser):
  """argparse with one-line usage errors (`error: …`, exit 2) instead of the usage block."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", HelpFormatter)
    super().__init__(*args, **kwargs)

  def error(self, message):
    self.exit(BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def add_checkpoint_args(parser: argparse.ArgumentParser):
  """The options that say which trained Show-o to load (sample and evaluate)."""
  parser.add_argument("--checkpoint", required=True, help="training workdir, checkpoints folder or step folder")
  parser.add_argument("--tokenizer", default="", help="image tokenizer checkpoint ('' = the one the config names)")
  parser.add_argument("--text-tokenizer", default="", help="tokenizer.json ('' = the one the config names)")


def add_maskgit_args(parser: argparse.ArgumentParser, *, guidance: bool = True, steps=None, guidance_weight=None,
                     temperature=None, schedule=None):
  """MaskGIT decoding options; a default of None means the checkpoint's config.train.sample_* setting."""
  def default(value, name):
    return f"default: {value}" if value is not None else f"default: config.train.sample_{name}"
  parser.add_argument("--steps", type=int, default=steps, help="MaskGIT steps (1 to the image's token count, since "
                      f"each step fixes at least one token; {default(steps, 'steps')})")
  if guidance:
    parser.add_argument("--guidance", type=float, default=guidance_weight, help="classifier-free guidance weight "
                        f"w >= 0 ({default(guidance_weight, 'guidance')})")
  parser.add_argument("--temperature", type=float, default=temperature, help="Gumbel temperature of the "
                      f"confidences ({default(temperature, 'temperature')})")
  parser.add_argument("--schedule", default=schedule, help="inference mask schedule: cosine | linear | pow<k> | "
                      f"sigmoid ({default(schedule, 'schedule')})")


def run(fn, *, bad_input=(), failures=(), output=None) -> int:
  """Calls fn() and maps what it raises to one stderr line and the exit status above (fn's int result, else 0).

  `bad_input`: exception types that mean bad input (ValueError, OSError and KeyError always do); `failures`:
  types that mean a failure while running, reported in one line without a traceback; `output`: the folder a
  full disk is reported against when the error names no file."""
  _library_tracebacks_to_log()
  try:
    result = fn()
    return result if isinstance(result, int) else OK
  except interrupts.Interrupted as e:
    print(str(e), file=sys.stderr)
    return CTRL_C if e.signum == signal.SIGINT else OK
  except KeyboardInterrupt:  # Ctrl-C before the handlers were installed: nothing had been written yet
    print("interrupted (Ctrl-C) before any work was saved", file=sys.stderr)
    return CTRL_C
  except Exception as e:  # pylint: disable=broad-except
    if _disk_full(e):
      where = _written_path(e) or output or "the output path"
      print(f"error: no space left on the device (or quota exceeded) writing {where}: nothing written before is "
            "lost (the last complete checkpoint is intact); free space and rerun the same command", file=sys.stderr)
      return FAILURE
    if isinstance(e, tuple(failures)):
      print(f"error: {one_line(e)}", file=sys.stderr)
      return FAILURE
    if isinstance(e, (ValueError, OSError, KeyError, *bad_input)):
      print(f"error: {one_line(e)}", file=sys.stderr)
      return BAD_INPUT
    if os.environ.get("SHOWO_JAX_TRACEBACK"):
      raise
    print(f"error: unexpected {type(e).__name__}: {one_line(e)} (SHOWO_JAX_TRACEBACK=1 shows the traceback)",
          file=sys.stderr)
    return FAILURE


def _library_tracebacks_to_log():
  """Tracebacks that libraries print from their own threads (TensorStore's callbacks after a failed save, an
  exception in a worker thread) go to the log file (INFO), not the terminal: the tool reports the failure in
  one line."""
  import logging  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  log = logging.getLogger("showo_jax.background")
  sys.excepthook = lambda *exc: log.info("exception outside the main flow", exc_info=exc)
  threading.excepthook = lambda a: log.info("exception in thread %s", a.thread and a.thread.name,
                                            exc_info=(a.exc_type, a.exc_value, a.exc_traceback))
  sys.unraisablehook = lambda u: log.info("unraisable exception in %r", u.object,
                                          exc_info=(u.exc_type, u.exc_value, u.exc_traceback))


def _disk_full(error: BaseException) -> bool:
  """ENOSPC / EDQUOT, raised directly or wrapped by a library (Orbax, TensorStore) in its message."""
  return any((isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
             or "No space left on device" in str(e) or "Disk quota exceeded" in str(e) for e in _chain(error))


def _written_path(error: BaseException):
  """The file an error (or one it was raised from) names: OSError.filename, or the first quoted path in a
  library's message (TensorStore names the file it failed to write)."""
  import re  # pylint: disable=g-import-not-at-top
  for e in _chain(error):
    found = re.search(r'"((?:/|gs://|s3://)[^"]+)"', str(e))
    if getattr(e, "filename", None) or found:
      return getattr(e, "filename", None) or found.group(1)
  return None


def _chain(error: BaseException):
  """The error and those it was raised from or during (a library wraps the OSError in its own), each once."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def parse_and_run(parser: argparse.ArgumentParser, argv, work, **kwargs) -> int:
  """The argparse tools' main: parse argv (--help exits 0, a usage error is one line and 2), then
  run(lambda: work(args), **kwargs)."""
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else BAD_INPUT
  return run(lambda: work(args), **kwargs)


HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")


def absl_main(main, doc: str, flag_holders, *, required=(), extra_help: str = "", precheck=None):
  """app.run(main) for the absl tools, with `--help` printing `doc`, the tool's flags (help and default) and
  `extra_help`, then exiting 0, and flag errors (unknown flag, bad value, bad config file) in one line, exit 2.
  `required`: names of the flags without a default. `precheck(argv)` may return such a line before absl parses (e.g. config_base.config_flag_problem)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = sys.argv
  if any(a in HELP_FLAGS for a in argv[1:]):
    lines = [doc.strip(), "", "options:"]
    for holder in flag_holders:
      flag = flags.FLAGS[holder.name]
      default = "required" if flag.name in required else f"default: {flag.default!r}"
      lines.append(f"  --{flag.name:<14} {flag.help}" + ("" if "default" in flag.help else f" ({default})"))
    if extra_help:
      lines += ["", extra_help.strip()]
    print("\n".join(lines))
    sys.exit(OK)

  prog = "python -m showo_jax." + os.path.splitext(os.path.basename(argv[0]))[0]

  def parse(args):
    problem = precheck(args) if precheck else None
    missing = [n for n in required if not any(a == f"--{n}" or a.startswith(f"--{n}=") for a in args[1:])]
    if problem is None and missing:
      problem = f"--{missing[0]} is required"
    try:
      if problem is None:
        return flags.FLAGS(args)
    except Exception as e:  # pylint: disable=broad-except  # flags.Error, or a config file that fails to load
      problem = one_line(e)
    sys.stderr.write(f"error: {problem} (see {prog} --help)\n")
    sys.exit(BAD_INPUT)

  def main_without_positional_args(args):
    if len(args) > 1:
      sys.stderr.write(f"error: unexpected arguments: {' '.join(args[1:])} (see {prog} --help)\n")
      return BAD_INPUT
    return main(args)

  app.run(main_without_positional_args, flags_parser=parse)

