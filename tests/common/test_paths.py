"""The path layer: the JSON-lines reader (values with their line numbers, one clear line for each bad file), and
resolving paths without side effects on local paths (the GCS clients are set up once, for gs:// paths only)."""

import os

import pytest

from showo_jax.common import paths


def test_read_jsonl_keeps_line_numbers_and_skips_blank_lines(tmp_path):
  f = tmp_path / "q.jsonl"
  f.write_text('{"a": 1}\n\n  \n[2, 3]\n"x"\n')
  assert paths.read_jsonl(str(f), "--questions") == [(1, {"a": 1}), (4, [2, 3]), (5, "x")]


@pytest.mark.parametrize("text, match", [
    (None, r"--questions .*none.jsonl: no such file"),
    ('{"a": 1}\n\n{"a": \n', r"q.jsonl:3: not JSON"),
    ("\n \n", r"--questions .*q.jsonl: the file has no lines"),
])
def test_read_jsonl_names_the_bad_file_and_line(tmp_path, text, match):
  f = tmp_path / ("none.jsonl" if text is None else "q.jsonl")
  if text is not None:
    f.write_text(text)
  with pytest.raises((FileNotFoundError, ValueError), match=match):
    paths.read_jsonl(str(f), "--questions")


GCS_VARIABLES = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING",
                 "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")


@pytest.fixture
def fresh_gcs_setup(monkeypatch):
  """No GCS setup done yet in this process, an emulator named, fsspec's config empty; all restored after."""
  import fsspec  # pylint: disable=g-import-not-at-top
  for name in GCS_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")
  monkeypatch.setattr(fsspec.config, "conf", {})
  monkeypatch.setattr(paths, "_gcs_configured_for", paths._UNSET)  # pylint: disable=protected-access
  return fsspec.config


def test_resolving_a_local_path_changes_no_environment_or_fsspec_config(fresh_gcs_setup, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  environ = dict(os.environ)
  for path in ("a/b", "~/x", str(tmp_path), tmp_path / "c", ".", "s3://bucket/key"):
    paths.resolve(path)
  assert dict(os.environ) == environ and fresh_gcs_setup.conf == {}


def test_a_gs_path_sets_up_the_gcs_clients_once_keeping_what_the_user_set(fresh_gcs_setup, monkeypatch):
  monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "mine")
  assert paths.resolve("gs://bucket/run/") == "gs://bucket/run"
  assert fresh_gcs_setup.conf == {"gcs": {"use_listings_cache": False, "token": "anon"}}
  assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == "http://127.0.0.1:4443"
  assert os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] == "mine"
  assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
  fresh_gcs_setup.conf["gcs"] = {}  # the user's later choice is not undone by the next path
  paths.resolve("gs://bucket/other")
  paths.configure_gcs()
  assert fresh_gcs_setup.conf == {"gcs": {}}
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9000")  # another emulator: set up for it
  monkeypatch.delenv("TENSORSTORE_GCS_HTTP_URL")
  paths.resolve("gs://bucket/other")
  assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == "http://127.0.0.1:9000"
