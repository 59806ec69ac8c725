"""Device mesh, logical-axis rules and shardings: the one place that knows about mesh axes.

The mesh has axes ('data', 'fsdp', 'tensor'), sized by `config.mesh.{data,fsdp,tensor}` (one of them may be -1:
"all remaining devices"). Models annotate parameters and activations with logical names (common/axes.py);
`config.logical_axis_rules` maps those names to mesh axes. Batches are sharded over ('data', 'fsdp').
"""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding

from showo_jax.common import axes

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


class MeshError(ValueError):
  """The mesh or the batch does not fit the devices; the message names the numbers."""


def mesh_shape(mesh_config, num_devices: int) -> tuple:
  """Resolves the (data, fsdp, tensor) sizes, filling a single -1 with the remaining devices."""
  sizes = [int(mesh_config[name]) for name in MESH_AXES]
  if sizes.count(-1) > 1:
    raise MeshError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise MeshError(f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise MeshError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: {known} does not divide the {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                    f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """A mesh in Auto axis mode (logical rules + sharding constraints; jax.make_mesh defaults to Explicit)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_rules(config) -> tuple:
  rules = config.get("logical_axis_rules", None)
  return tuple((name, tuple(m) if isinstance(m, list) else m) for name, m in (rules or axes.DEFAULT_RULES))


def logical_shardings(boxed_tree, mesh, rules):
  """NamedShardings for a (possibly abstract) tree of nn.Partitioned leaves; unannotated leaves replicate."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_divisible(abstract_tree):
  """Fails before compiling when a sharded dimension is not a multiple of its mesh axes' size."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_tree)[0]:
    spec, mesh = leaf.sharding.spec, leaf.sharding.mesh
    for dim, entry in zip(leaf.shape, tuple(spec)):
      names = entry if isinstance(entry, tuple) else (entry,) if entry else ()
      parts = math.prod(mesh.shape[n] for n in names)
      if dim % parts:
        raise MeshError(f"{jax.tree_util.keystr(path)} has a dimension of {dim}, not divisible by the {parts} "
                        f"devices of mesh axes {names} (pad the size, e.g. config.model.vocab_size, or change the mesh)")


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, jax.P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis over data × fsdp; other axes replicated."""
  return NamedSharding(mesh, jax.P(BATCH_AXES))


def data_parallel_size(mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(global_batch: int, mesh, what: str = "global batch"):
  dp = data_parallel_size(mesh)
  if global_batch % dp:
    raise MeshError(f"{what} {global_batch} is not divisible by data×fsdp = {dp} devices "
                    f"(mesh {dict(mesh.shape)})")
  if global_batch % jax.process_count():
    raise MeshError(f"{what} {global_batch} is not divisible by the {jax.process_count()} processes")


def global_batch(local_batch: dict, mesh) -> dict:
  """Per-process numpy arrays (this process's rows) → global jax.Arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def maybe_initialize_distributed(enabled: bool):
  """jax.distributed.initialize() once. Explicit JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
  (launch/local_multiprocess.sh) win; otherwise JAX detects SLURM, Cloud TPU and similar environments."""
  import os  # pylint: disable=g-import-not-at-top
  if not enabled or jax.distributed.is_initialized():
    return
  env = os.environ
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU cross-process collectives (tests, laptops)
  if "JAX_COORDINATOR_ADDRESS" in env:
    jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
  else:
    jax.distributed.initialize()


def per_shard(fn, activations, rows, activation_axes, row_axes):
  """Runs fn(*activations, *rows) once per shard of the mesh set by `jax.set_mesh` (for a custom kernel, e.g.
  a Pallas call, which XLA cannot partition itself); without a mesh, just calls it.

  The activations share one layout with logical names `activation_axes` (their sizes may differ, e.g. query
  and kv heads), the rows theirs (`row_axes`); the active `nn.logical_axis_rules` map the names to mesh axes,
  and fn's single output is laid out as the first activation. A mesh axis that does not divide a dimension of
  every array is dropped there (that dimension is replicated).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(*activations, *rows)

  def spec(names, shapes):
    out = []
    for i, entry in enumerate(nn.logical_to_mesh_axes(names)):
      group = entry if isinstance(entry, tuple) else (entry,) if entry else ()
      parts = math.prod(mesh.shape[n] for n in group)
      out.append(entry if group and all(shape[i] % parts == 0 for shape in shapes) else None)
    return jax.P(*out)

  act = spec(activation_axes, [a.shape for a in activations])
  row = spec(row_axes, [r.shape for r in rows])
  return jax.shard_map(fn, in_specs=(act,) * len(activations) + (row,) * len(rows), out_specs=act,
                       check_vma=False)(*activations, *rows)
