"""Fault injection on checkpoints (issue 16): a corrupt or partial newest checkpoint is named in one warning,
moved aside (never deleted) and the newest intact one restores; digests catch a flipped bit; retention never
deletes the last whole checkpoint; a non-finite state is never saved; keep_checkpoints >= 1."""

import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from showo_jax.common import checkpoint_integrity as integrity
from showo_jax.common import checkpointing


def _state(step: int):
  return {"w": jnp.arange(4096, dtype=jnp.float32) * step, "b": {"x": jnp.full((64, 8), float(step))}}


def _saved(tmp_path, steps=(1, 2, 3), keep=3, async_save=False):
  folder = str(tmp_path / "checkpoints")
  ckpt = checkpointing.Checkpointer(folder, max_to_keep=keep, async_save=async_save)
  for s in steps:
    ckpt.save(s, _state(s))
  ckpt.close()
  return folder


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _restore_newest(folder, target=None):
  ckpt = checkpointing.Checkpointer(folder, async_save=False)
  target = _abstract(_state(0)) if target is None else target
  try:
    return ckpt.restore_newest_intact(lambda s: ckpt.restore(s, target)[0], target=target)
  finally:
    ckpt.close()


def _data_files(step_dir: pathlib.Path):
  """The array data files of a step (Orbax's OCDBT chunks), biggest first."""
  files = [p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p)]
  return sorted(files, key=lambda p: -p.stat().st_size)


def _truncate(step_dir):
  f = _data_files(step_dir)[0]
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _delete_metadata(step_dir):
  (step_dir / "_CHECKPOINT_METADATA").unlink()


def _delete_item(step_dir):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(step_dir / "state")


def _empty_folder(step_dir):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(step_dir)
  step_dir.mkdir()


@pytest.mark.parametrize("damage", [_truncate, _delete_metadata, _delete_item, _empty_folder])
def test_damaged_newest_moves_aside_and_older_restores(tmp_path, damage, caplog):
  folder = _saved(tmp_path)
  damage(pathlib.Path(folder) / "3")
  with caplog.at_level(logging.WARNING):
    step, state = _restore_newest(folder)
  assert step == 2
  np.testing.assert_array_equal(state["w"], np.arange(4096, dtype=np.float32) * 2)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "step 3" in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert not (pathlib.Path(folder) / "3").exists()
  moved = list(pathlib.Path(folder + ".quarantine").iterdir())
  assert [p.name.split("-")[0] for p in moved] == ["3"]  # kept, not deleted
  assert sorted(os.listdir(folder)) == ["1", "2"]


def test_a_flipped_bit_anywhere_is_caught_and_the_file_named(tmp_path):
  """Orbax alone restores a flipped bit in array data without complaint; the manifest's digests catch every
  flip (here one in the middle of each of the step's data files)."""
  folder = _saved(tmp_path)
  files = _data_files(pathlib.Path(folder) / "3")
  assert files
  for f in files:
    original = f.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    problem = integrity.verify(os.path.join(folder, "3"))
    assert problem is not None and "SHA-256" in problem and str(f.relative_to(pathlib.Path(folder) / "3")) in problem
    f.write_bytes(original)
  assert integrity.verify(os.path.join(folder, "3")) is None
  data = bytearray(files[0].read_bytes())
  data[len(data) // 2] ^= 0x01
  files[0].write_bytes(bytes(data))
  step, _ = _restore_newest(folder)
  assert step == 2


def test_a_checkpoint_without_manifest_loads_with_a_warning(tmp_path, caplog):
  folder = _saved(tmp_path, steps=(1,))
  os.remove(os.path.join(folder, "1", integrity.MANIFEST))
  with caplog.at_level(logging.WARNING):
    step, state = _restore_newest(folder)
  assert step == 1 and float(state["b"]["x"][0, 0]) == 1.0
  assert any("no showo_manifest.json" in r.getMessage() for r in caplog.records)


def test_nothing_intact_gives_none(tmp_path):
  folder = _saved(tmp_path, steps=(1,))
  _truncate(pathlib.Path(folder) / "1")
  assert _restore_newest(folder) == (None, None)
  assert len(os.listdir(folder + ".quarantine")) == 1


def test_retention_keeps_the_newest_and_waits_for_its_manifest(tmp_path, monkeypatch):
  folder = _saved(tmp_path, steps=(1, 2, 3), keep=1)
  assert os.listdir(folder) == ["3"]
  assert integrity.has_manifest(os.path.join(folder, "3"))
  # A save whose manifest could not be written (killed, disk full) must not cost the last whole checkpoint.
  def fail(step_dir):
    raise OSError(28, "No space left on device", step_dir)
  monkeypatch.setattr(integrity, "write_manifest", fail)
  ckpt = checkpointing.Checkpointer(folder, max_to_keep=1, async_save=False)
  ckpt.save(4, _state(4))
  with pytest.raises(OSError, match="No space left"):
    ckpt.wait()
  ckpt.close()
  assert sorted(os.listdir(folder)) == ["3", "4"]


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_checkpoints_below_one_is_refused(tmp_path, keep):
  with pytest.raises(ValueError, match="keep at least 1"):
    checkpointing.Checkpointer(str(tmp_path / "c"), max_to_keep=keep)
  from tests import train_fixtures  # pylint: disable=g-import-not-at-top
  from showo_jax.config import base as config_base  # pylint: disable=g-import-not-at-top
  from showo_jax.config import showo as showo_config  # pylint: disable=g-import-not-at-top
  config = train_fixtures.tiny_config(str(tmp_path / "data"))
  config.train.keep_checkpoints = keep
  with pytest.raises(config_base.ConfigError, match="keep_checkpoints"):
    showo_config.validate(config)


def test_check_finite_refuses_nan_and_inf_anywhere():
  good = {"params": _state(1), "opt": (jnp.zeros(3), jnp.ones((2, 2), jnp.bfloat16)), "count": jnp.int32(7)}
  checkpointing.check_finite(good, 1)
  for bad in (jnp.nan, jnp.inf, -jnp.inf):
    tree = jax.tree.map(jnp.copy, good)
    tree["opt"] = (tree["opt"][0].at[1].set(bad), tree["opt"][1])
    with pytest.raises(checkpointing.NonFiniteStateError, match="step 5"):
      checkpointing.check_finite(tree, 5)


def test_an_intact_checkpoint_of_another_structure_raises_and_moves_nothing(tmp_path):
  """A resume with a config that changes the state's tree (e.g. gradient clipping switched off changes the
  optimizer state) is the user's mistake, not damage: one error, and every checkpoint stays where it is."""
  folder = _saved(tmp_path)
  other = {"w": jax.ShapeDtypeStruct((4096,), jnp.float32), "extra": jax.ShapeDtypeStruct((3,), jnp.float32)}
  with pytest.raises(checkpointing.CheckpointMismatchError, match="step 3 .* is intact but does not fit"):
    _restore_newest(folder, other)
  assert sorted(os.listdir(folder)) == ["1", "2", "3"]
  assert not os.path.exists(folder + ".quarantine")


def _sharded_state(step: int):
  """_state's arrays split over every device, as the trainer's state is."""
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return jax.tree.map(lambda x: jax.device_put(x, data), _state(step))


# Orbax leaves the reads of the other leaves running when one shape fails; they report when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_async_saves_tell_damage_from_a_changed_state_by_what_is_read(tmp_path):
  """Saved asynchronously, as the trainer saves, with the manifest written after Orbax's commit (a kill can land
  between the two): damage is what fails the manifest, or a restore of the saved tree without one; a change of
  the run's state is a saved tree or shape that differs from the target, with a manifest or without."""
  folder = str(tmp_path / "checkpoints")
  root = pathlib.Path(folder)
  ckpt = checkpointing.Checkpointer(folder, max_to_keep=None, async_save=True)
  for s in (1, 2, 3, 4):
    ckpt.save(s, _sharded_state(s))
  ckpt.close()
  assert all(integrity.has_manifest(str(root / str(s))) for s in (1, 2, 3, 4))
  target = _abstract(_sharded_state(0))
  wider = dict(target, w=jax.ShapeDtypeStruct((8192,), jnp.float32, sharding=target["w"].sharding))
  (root / "4" / integrity.MANIFEST).unlink()  # killed after Orbax's commit, before the manifest
  changed = r"step 4 .* \(w is \(4096,\) in the checkpoint, \(8192,\) in this run\)"
  for _ in range(2):  # without the manifest, then with it: this run's error either way, and nothing moves
    with pytest.raises(checkpointing.CheckpointMismatchError, match=changed):
      _restore_newest(folder, wider)
    assert sorted(os.listdir(folder)) == ["1", "2", "3", "4"] and not os.path.exists(folder + ".quarantine")
    integrity.write_manifest(str(root / "4"))
  # Whole files of the run's tree whose restore fails all the same: neither damage nor a changed config.
  ckpt = checkpointing.Checkpointer(folder, async_save=False)
  def out_of_memory(step):
    raise RuntimeError(f"RESOURCE_EXHAUSTED restoring step {step}")
  try:
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED restoring step 4"):
      ckpt.restore_newest_intact(out_of_memory, target=target)
  finally:
    ckpt.close()
  assert sorted(os.listdir(folder)) == ["1", "2", "3", "4"]
  # Damage: a truncated data file, caught by the manifest (step 4) or, without one, by the restore (step 3).
  _truncate(root / "4")
  _truncate(root / "3")
  (root / "3" / integrity.MANIFEST).unlink()
  step, state = _restore_newest(folder, target)
  assert step == 2
  np.testing.assert_array_equal(state["w"], np.arange(4096, dtype=np.float32) * 2)
  assert sorted(p.name.split("-")[0] for p in pathlib.Path(folder + ".quarantine").iterdir()) == ["3", "4"]
