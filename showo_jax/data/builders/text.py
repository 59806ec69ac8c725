"""Text-only corpus → lm records `{"text": str}` (the language-modelling task, SPEC §3.4).

Input: RefinedWeb-style parquet files (a `content` column; read with pyarrow, which is optional) and/or JSONL
files (one object per line with a `content` or `text` field), given as files, globs or folders. The official
loader reads RefinedWeb through an internal package; this one needs neither it nor TensorFlow.

Skipped and counted: lines that are not JSON objects, rows with no text field, empty or non-text values.
The lm pipeline takes a random 8000-character window of each document when training, so documents are kept
whole here.
"""


import numpy as np

from showo_jax.common import paths
from showo_jax.data.builders import common

TEXT_FIELDS = ("content", "text")
EXTENSIONS = (".parquet", ".jsonl")


def _pyarrow_parquet(path: str):
  try:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f"{path}: reading parquet needs pyarrow, which is not installed (pip install pyarrow, "
                     "or convert the corpus to JSONL)") from None
  return pq


class _Parquet:
  """Rows of one parquet file, a row group at a time (the writer reads a shard's rows in order)."""

  def __init__(self, path: str, field: str):
    self.path = path
    self._file = _pyarrow_parquet(path).ParquetFile(path)
    names = self._file.schema_arrow.names
    wanted = (field,) if field else TEXT_FIELDS
    self.column = next((c for c in wanted if c in names), None)
    if self.column is None:
      raise ValueError(f"{path}: no {' / '.join(wanted)} column (columns: {', '.join(names)})")
    meta = self._file.metadata
    self._group_ends = np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    self._cached = (None, None)  # (row group, its column as a list)

  def __len__(self) -> int:
    return int(self._group_ends[-1]) if len(self._group_ends) else 0

  def value(self, row: int):
    group = int(np.searchsorted(self._group_ends, row, side="right"))
    if self._cached[0] != group:
      table = self._file.read_row_group(group, columns=[self.column])
      self._cached = (group, table.column(0).to_pylist())
    return self._cached[1][row - (int(self._group_ends[group - 1]) if group else 0)]


class Source:
  """Documents of the corpus, in file order."""

  kind = "text"
  needs_images = False
  threads = 0  # read in order: parquet row groups are read once each

  def __init__(self, inputs, field: str = ""):
    self.files = common.expand_inputs(inputs, EXTENSIONS, "parquet / jsonl")
    self.field = field
    self._parts, ends = [], []  # one _Parquet or JsonlIndex per file, and the cumulative row counts
    for path in self.files:
      if path.lower().endswith(".parquet"):
        self._parts.append(_Parquet(path, field))
      else:
        self._parts.append(common.JsonlIndex([path]))
      ends.append(len(self._parts[-1]))
    self._ends = np.cumsum(ends)

  def plan(self) -> dict:
    return {"builder": self.kind, "inputs": [paths.resolve(p) for p in self.files], "field": self.field}

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def load(self, index: int):
    f = int(np.searchsorted(self._ends, index, side="right"))
    local = index - (int(self._ends[f - 1]) if f else 0)
    part = self._parts[f]
    if isinstance(part, _Parquet):
      where = f"{part.path}[row {local}]"
      value = part.value(local)
    else:
      where = part.where(local)
      row = part.row(local)
      value = common.first_field(row, (self.field,) if self.field else TEXT_FIELDS, "text", where)
    return None, {"text": common.text(value, "text", where)}
