"""What the terminal shows: one line per phase, progress bars, warnings and errors. Library INFO records (Orbax,
absl, jax's backend probing) go to a log file in the workdir instead, all of them, for debugging.

The entry points call `setup(log_file)` once; library code calls `phase("...")` at the start of each phase.
Only process 0 prints phases.
"""

import logging
import os
import sys

import jax

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(log_file: str = "", *, verbose: bool = False):
  """Terminal: WARNING and above (INFO with `verbose`); `log_file`: every record from INFO up (appended)."""
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  logging.raiseExceptions = False  # a full disk must not turn each log record into a traceback
  try:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.INFO)  # records reach the file handler; the terminal filters
    absl_handler = absl_logging.get_absl_handler()
    absl_handler.setLevel(logging.INFO if verbose else logging.WARNING)
    terminal = [absl_handler]
  except ImportError:
    terminal = []
  for handler in root.handlers:  # absl's own handler or a basicConfig stream handler
    if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
      handler.setLevel(logging.INFO if verbose else logging.WARNING)
      terminal.append(handler)
  if not terminal:
    stream = logging.StreamHandler(sys.stderr)
    stream.setLevel(logging.INFO if verbose else logging.WARNING)
    stream.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(stream)
    terminal.append(stream)
  for handler in terminal:
    if not any(isinstance(f, _NoLibraryTracebacks) for f in handler.filters):
      handler.addFilter(_NoLibraryTracebacks())
  if log_file:
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)  # local: paths.Staging gives it
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(log_file)
               for h in root.handlers):
      handler = logging.FileHandler(log_file)
      handler.setLevel(logging.INFO)
      handler.setFormatter(logging.Formatter(_FORMAT))
      root.addHandler(handler)


class _NoLibraryTracebacks(logging.Filter):
  """Keeps a library's tracebacks (Orbax logs one per failed thread of a save) off the terminal: the tool
  reports the failure in one line and the log file keeps the records whole."""

  def filter(self, record):
    return not (record.exc_info and "showo_jax" not in record.pathname)


def phase(text: str):
  """One line on the terminal (process 0) and in the log: the start of a phase, or its result."""
  logging.getLogger("showo_jax").info("%s", text)
  if jax.process_index() == 0:
    try:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      tqdm.write(text, file=sys.stderr)  # above any open progress bar
    except ImportError:
      print(text, file=sys.stderr, flush=True)
