"""Orbax checkpointing: the only module that imports orbax.

One CheckpointManager per run directory, with named items: `state` (the sharded train state), `data_iter`
(the input pipeline's position, via grain's handler) and `config` (JSON). Saves are asynchronous and atomic
(Orbax writes to a temporary folder and renames it when complete), so a run killed at any moment resumes from
its last complete checkpoint. Signals (Ctrl-C, SIGTERM) are common/interrupts.py.
"""

import json
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """A checkpoint was written by an incompatible config; the message names the field."""


class Checkpointer:
  """Save / restore of (state, data iterator, config) under `directory`, keeping the last `max_to_keep`."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True, save_concurrent_gb=None):
    """`save_concurrent_gb` (the checkpoint converter's mode; state + config items only) writes numpy leaves in
    place, at most that many GB at once: Orbax's default numpy handler deep-copies every leaf first, and its
    jax.Array handler copies every array to host before writing (on CPU too), either a second copy of the
    state. The caller must leave the arrays unchanged until save() returns."""
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
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
  def save(self, step: int, state, *, data_iter=None, config=None) -> bool:
    items = {"state": ocp.args.PyTreeSave(state) if self._in_place else ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config.to_json()))
    return self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state, *, data_iter=None):
    """Restores `state` shaped and sharded like `abstract_state` (ShapeDtypeStructs with .sharding)."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
    return restored["state"], restored.get("data_iter") if data_iter is not None else None

  def restore_raw(self, step: int):
    """The saved state as a tree of host arrays, without a target (for params-only loading)."""
    restored = self._manager.restore(int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]

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
    from etils import epath  # pylint: disable=g-import-not-at-top
    return epath.Path(self.directory) / str(int(step)) / item

  def saved_config(self, step: int) -> dict:
    restored = self._manager.restore(int(step), args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored["config"]

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
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
