"""Orbax checkpointing: the only module that imports orbax.

One CheckpointManager per run directory, with named items: `state` (the sharded train state), `data_iter`
(the input pipeline's position, via grain's handler) and `config` (JSON). Saves are asynchronous and atomic
(Orbax writes to a temporary folder and renames it when complete, or commits it with a marker in the cloud).
When a save has completed, a background thread writes the step's manifest of file digests
(common/checkpoint_integrity.py) and only then drops steps beyond `max_to_keep`: an older step is deleted only
once a newer one is known whole. `restore_newest_intact` verifies digests, moves a corrupt or partial step
aside with one warning and falls back to the newest intact one. Signals (Ctrl-C, SIGTERM) are
common/interrupts.py.
"""

import json
import logging
import threading

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from showo_jax.common import checkpoint_integrity as integrity
from showo_jax.common import paths


class CheckpointMismatchError(ValueError):
  """A checkpoint was written by an incompatible config; the message names the field."""


class NonFiniteStateError(RuntimeError):
  """The state about to be saved holds a NaN or an infinity: it is not saved."""


@jax.jit
def _all_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves or [jnp.array(True)]))


def check_finite(state, step: int, ckpt=None):
  """Raises NonFiniteStateError unless every float in `state` (params, optimizer state, EMA) is finite: the
  check before each save, so the newest saved checkpoint is always finite."""
  if not bool(jax.device_get(_all_finite(state))):
    newest = ckpt.latest_step() if ckpt is not None else None
    raise NonFiniteStateError(
        f"the parameters or optimizer state became non-finite at step {step}: not saved"
        + (f"; the newest saved checkpoint, step {newest}, is finite" if newest is not None else "")
        + " (lower --config.optimizer.lr or lengthen the warmup)")


class Checkpointer:
  """Save / restore of (state, data iterator, config) under `directory`, keeping the last `max_to_keep` (None:
  all)."""

  def __init__(self, directory: str, *, max_to_keep=3, async_save: bool = True, save_concurrent_gb=None):
    """`save_concurrent_gb` (the checkpoint converter's mode; state + config items only) writes numpy leaves in
    place, at most that many GB at once: Orbax's default numpy handler deep-copies every leaf first, and its
    jax.Array handler copies every array to host before writing (on CPU too), either a second copy of the
    state. The caller must leave the arrays unchanged until save() returns."""
    if max_to_keep is not None and (isinstance(max_to_keep, bool) or int(max_to_keep) < 1):
      raise ValueError(f"keep_checkpoints={max_to_keep!r}: keep at least 1 checkpoint (0 would delete them all)")
    self.directory = paths.resolve(directory)
    self.max_to_keep = None if max_to_keep is None else int(max_to_keep)
    self._finisher = None  # the thread writing the last save's manifest
    self._finisher_error = None
    # Orbax keeps everything; `_finish` drops old steps once the new one has its manifest.
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                           enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    handlers = None
    self._in_place = save_concurrent_gb is not None
    if self._in_place:
      th = ocp.type_handlers
      registry = th.create_type_handler_registry(
          (np.ndarray, th.NumpyHandler(deepcopy_host_arrays=False)), (np.number, th.ScalarHandler()),
          (int, th.ScalarHandler()), (float, th.ScalarHandler()), (jax.Array, th.ArrayHandler()))
      handlers = {"state": ocp.PyTreeCheckpointHandler(save_concurrent_gb=int(save_concurrent_gb), use_ocdbt=False,
                                                       type_handler_registry=registry),
                  "config": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  # -- queries ---------------------------------------------------------------------------------------------
  def latest_step(self):
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  # -- save / restore ----------------------------------------------------------------------------------------
  def step_dir(self, step: int) -> str:
    return paths.join(self.directory, str(int(step)))

  def save(self, step: int, state, *, data_iter=None, config=None) -> bool:
    self._join_finisher()
    items = {"state": ocp.args.PyTreeSave(state) if self._in_place else ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config.to_json()))
    saved = self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
    if saved:
      self._finisher = threading.Thread(target=self._finish, args=(int(step),), daemon=True,
                                        name="checkpoint-manifest")
      self._finisher.start()
    return saved

  def _finish(self, step: int):
    """After Orbax committed `step`: its manifest (the mark of a whole checkpoint), then the retention."""
    try:
      self._manager.wait_until_finished()
      if jax.process_index() != 0:
        return
      integrity.write_manifest(self.step_dir(step))
      if self.max_to_keep is not None:
        for old in sorted(s for s in self._manager.all_steps() if s < step)[:-self.max_to_keep + 1 or None]:
          self._manager.delete(old)
    except BaseException as e:  # pylint: disable=broad-except
      self._finisher_error = e  # re-raised in the main thread by the next save / wait / close

  def _join_finisher(self):
    if self._finisher is not None:
      self._finisher.join()
      self._finisher = None
    if self._finisher_error is not None:
      error, self._finisher_error = self._finisher_error, None
      raise error

  def discard(self, step: int, reason: str):
    """Moves a saved step aside (never deletes it), e.g. one whose parameters gave a non-finite loss."""
    self.wait()
    if int(step) in self.all_steps():
      integrity.quarantine(self.directory, int(step), reason)
      self._manager.reload()

  def restore_newest_intact(self, restore_fn, target=None):
    """(step, restore_fn(step)) for the newest step that passes its digests and restores; (None, None) when
    none does.

    Damage and a run that does not fit are told apart by what is read. Files that fail the manifest (a failed
    digest, a missing file, an empty folder) are damage: the step is moved aside with one warning. When
    restore_fn fails on files that pass, the saved state's leaf paths and shapes (Orbax's metadata) are compared
    with `target`'s (the abstract state restore_fn restores into): a difference is this run's error
    (CheckpointMismatchError naming the leaf; nothing is moved). Otherwise a step without a manifest is damage,
    and on a step whose manifest holds, the files are whole and fit, so the error is raised as it is.
    """
    for step in sorted(self.all_steps(), reverse=True):
      step_dir = self.step_dir(step)
      problem = integrity.verify(step_dir)
      if problem is None:
        verified = integrity.has_manifest(step_dir)
        if not verified:
          logging.warning("checkpoint step %d in %s has no %s (written by an older version, or killed before "
                          "it): its content cannot be verified", step, self.directory, integrity.MANIFEST)
        try:
          return step, restore_fn(step)
        except CheckpointMismatchError:
          raise
        except Exception as e:  # pylint: disable=broad-except
          difference = self.state_difference(step, target) if target is not None else None
          if difference is not None:
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} is intact but does not fit this run's state "
                f"({difference}): was the model or optimizer config changed? (use a new --workdir)") from None
          if verified:
            raise
          reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
          problem = f"it does not restore: {type(e).__name__}: {reason}"
      integrity.quarantine(self.directory, step, problem)
      self._manager.reload()
    return None, None

  def state_difference(self, step: int, target):
    """The first difference between the saved `state`'s leaves (paths and shapes, from Orbax's metadata) and
    those of `target` (arrays or ShapeDtypeStructs), in words; None when they agree or the metadata does not
    read (then nothing is known about the tree)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
      saved_tree = handler.metadata(self._item_path(step, "state")).tree
    except Exception:  # pylint: disable=broad-except
      return None
    finally:
      handler.close()
    is_leaf = lambda x: hasattr(x, "shape")  # pylint: disable=unnecessary-lambda-assignment
    saved = {k: tuple(v.shape) for k, v in ocp.tree.to_flat_dict(saved_tree, is_leaf=is_leaf).items()}
    wanted = {k: tuple(v.shape) for k, v in ocp.tree.to_flat_dict(target, is_leaf=is_leaf).items()}
    for path in sorted(set(saved) | set(wanted)):
      name = "/".join(path)
      if path not in saved:
        return f"this run has {name} {wanted[path]}, the checkpoint has not"
      if path not in wanted:
        return f"the checkpoint has {name} {saved[path]}, this run has not"
      if saved[path] != wanted[path]:
        return f"{name} is {saved[path]} in the checkpoint, {wanted[path]} in this run"
    return None

  def restore(self, step: int, abstract_state, *, data_iter=None):
    """Restores `state` shaped and sharded like `abstract_state` (ShapeDtypeStructs with .sharding)."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
    return restored["state"], restored.get("data_iter") if data_iter is not None else None

  def restore_raw(self, step: int):
    """The saved state as a tree of numpy arrays, without a target (for params-only loading). Read as host
    arrays, so a state saved on any device topology (a pod, 8 fake CPUs) loads on this process's devices."""
    handler = ocp.PyTreeCheckpointHandler(restore_concurrent_gb=1)
    try:
      path = self._item_path(step, "state")
      is_leaf = lambda x: hasattr(x, "shape")  # pylint: disable=unnecessary-lambda-assignment
      tree = handler.metadata(path).tree
      item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree, is_leaf=is_leaf)
      args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), tree, is_leaf=is_leaf)
      return handler.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=args))
    finally:
      handler.close()

  def saved_leaves(self, step: int) -> dict:
    """{leaf path (tuple of keys): (shape, dtype)} of the saved `state`, from its metadata (no array data)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
      tree = handler.metadata(self._item_path(step, "state")).tree
    finally:
      handler.close()
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path): (tuple(v.shape), v.dtype)
            for path, v in flat}

  def restore_leaves(self, step: int, leaves: dict) -> dict:
    """Only the given leaves ({path: (shape, dtype)}, as from saved_leaves) of the saved `state`, as numpy.

    A partial restore: the rest of the state is never read, so memory is the leaves asked for (the streaming
    export reads a checkpoint a few hundred MB at a time).
    """
    item, args = {}, {}
    for path, (shape, dtype) in leaves.items():
      node, arg_node = item, args
      for key in path[:-1]:
        node, arg_node = node.setdefault(key, {}), arg_node.setdefault(key, {})
      node[path[-1]] = jax.ShapeDtypeStruct(shape, dtype)
      arg_node[path[-1]] = ocp.RestoreArgs(restore_type=np.ndarray)  # host arrays: no device copy
    handler = ocp.PyTreeCheckpointHandler(restore_concurrent_gb=1)
    try:
      restored = handler.restore(self._item_path(step, "state"),
                                 args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
    finally:
      handler.close()
    out = {}
    for path in leaves:
      node = restored
      for key in path:
        node = node[key]
      out[path] = node
    return out

  def _item_path(self, step: int, item: str):
    return paths.Path(self.step_dir(step)) / item

  def saved_config(self, step: int) -> dict:
    restored = self._manager.restore(int(step), args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored["config"]

  def wait(self):
    self._manager.wait_until_finished()
    self._join_finisher()

  def close(self):
    try:
      self.wait()
    finally:
      self._manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying the target shardings: the restore target for a sharded state."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings)


def check_compatible(saved: dict, current: dict, fields, prefix: str = "config"):
  """Raises CheckpointMismatchError naming the first field (dotted path) whose value differs."""
  for field in fields:
    a, b = saved, current
    for part in field.split("."):
      a = a.get(part) if isinstance(a, dict) else None
      b = b.get(part) if isinstance(b, dict) else None
    if a != b:
      raise CheckpointMismatchError(f"the checkpoint was written with {prefix}.{field}={a!r}, this run has "
                                    f"{prefix}.{field}={b!r}: refusing to resume (use a new --workdir)")
