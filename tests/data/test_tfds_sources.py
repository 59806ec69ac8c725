"""`tfds:NAME[:SPLIT]@DIR` sources: read from a prepared data_dir, never downloaded; one-line errors otherwise."""

import os

import pytest
import tensorflow_datasets as tfds  # a pinned dependency (setup.cfg)

from showo_jax.data import records


def _tree(folder):
  return sorted(os.path.relpath(os.path.join(root, n), folder) for root, dirs, files in os.walk(folder)
                for n in dirs + files)


def test_unprepared_dataset_fails_without_downloading(tmp_path, monkeypatch):
  calls = []
  real = tfds.data_source
  monkeypatch.setattr(tfds, "data_source", lambda *a, **k: calls.append(k) or real(*a, **k))
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  with pytest.raises(FileNotFoundError) as e:
    records.open_source(f"tfds:mnist:train@{data_dir}")
  assert str(e.value) == (f"tfds:mnist:train@{data_dir}: tfds dataset 'mnist' is not prepared in data_dir "
                          f"{data_dir} (nothing is downloaded: prepare it there in array_record format first)")
  assert _tree(data_dir) == [] and _tree(tmp_path) == ["tfds"]  # no downloads/ or mnist/ folder appeared
  assert not calls  # stopped before tfds could prepare anything


def test_unknown_dataset_is_one_line(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    records.open_source(f"tfds:no_such_dataset_xyz@{tmp_path}")
  assert str(e.value) == (f"tfds:no_such_dataset_xyz@{tmp_path}: no tfds dataset 'no_such_dataset_xyz': not "
                          f"registered, nor prepared in data_dir {tmp_path}")
  with pytest.raises(ValueError, match=r"^tfds::train@/x: no dataset name \(use tfds:NAME\[:SPLIT\]@DATA_DIR\)$"):
    records.open_source("tfds::train@/x")


class _PreparedBuilder:

  def is_prepared(self):
    return True


def test_prepared_dataset_is_opened_with_download_disabled(tmp_path, monkeypatch):
  seen = {}

  def data_source(name, **kwargs):
    seen.update(kwargs, name=name)
    return ["example"]

  monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: _PreparedBuilder())
  monkeypatch.setattr(tfds, "data_source", data_source)
  assert records.open_source(f"tfds:coco_captions/2017@{tmp_path}") == ["example"]
  assert seen == {"name": "coco_captions/2017", "split": "train", "data_dir": str(tmp_path), "download": False}
  assert records.open_source("tfds:mnist:test") == ["example"]
  assert seen == {"name": "mnist", "split": "test", "data_dir": None, "download": False}

  def wrong_format(name, **kwargs):
    raise NotImplementedError("Random access data source for file format FileFormat.TFRECORD is not supported.\n"
                              "\t* You have to run download_and_prepare with file_format=array_record.")

  monkeypatch.setattr(tfds, "data_source", wrong_format)
  with pytest.raises(ValueError) as e:
    records.open_source(f"tfds:mnist@{tmp_path}")
  assert str(e.value) == (f"tfds:mnist@{tmp_path}: cannot open tfds dataset 'mnist' in data_dir {tmp_path}: "
                          "Random access data source for file format FileFormat.TFRECORD is not supported.")
