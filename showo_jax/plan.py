"""Ahead-of-time plan of a training run: per-device memory, FLOPs per step, and whether it fits.

  python -m showo_jax.plan --config configs/stages.py:stage=pretrain1,devices=64 \
      --mesh data=1,fsdp=64,tensor=1 --remat full --device-memory-gb 80 --json plan.json

Compiles the real train step (the function `trainer.Run` jits, with its shardings and donation) against
abstract inputs — ShapeDtypeStructs carrying the run's shardings — so nothing is allocated. The memory figures
are XLA's buffer assignment for one device; parameters and optimizer state are split out from the abstract
state's per-device shard shapes. Where this host has fewer devices than the mesh needs, the CLI re-executes
itself (same process, `os.execve`) on that many fake CPU devices: the CPU compiler then plans the buffers,
which is close to but not the same as what the GPU or TPU compiler would do (docs/planning.md).
"""

import json
import math
import os
import sys

from absl import flags

from showo_jax.common import cli
from showo_jax.common import paths
from showo_jax.common import sharding
from showo_jax.config import base as config_base
from showo_jax.config import showo as showo_config
from showo_jax.tools import planner

_CONFIG = config_base.define_config_flag()
flags.mark_flag_as_required("config")
_MESH = flags.DEFINE_string("mesh", "", "mesh sizes, e.g. data=1,fsdp=64,tensor=1 (axes not named keep config.mesh).")
_REMAT = flags.DEFINE_string("remat", "",
                             f"overrides config.model.remat_policy: {'|'.join(showo_config.REMAT_POLICIES)}.")
_ATTENTION = flags.DEFINE_string("attention", "", "overrides config.model.attention_impl: "
                                 f"{'|'.join(showo_config.ATTENTION_IMPLS)}.")
_MEMORY = flags.DEFINE_float("device-memory-gb", 80.0, "memory of one device in GiB; the plan says if it fits.")
_DEVICES = flags.DEFINE_integer("devices", 0, "devices to plan for (default: the mesh's product; with a -1 axis, "
                                "this host's devices).")
_JSON = flags.DEFINE_string("json", "", "also write the figures to this JSON file.")

_FAKE_ENV = planner.FAKE_DEVICES_ENV


def _devices(needed: int):
  """The first `needed` devices; re-executes this CLI on `needed` fake CPU devices where there are fewer."""
  import jax  # pylint: disable=g-import-not-at-top
  have = jax.devices()
  if not needed or len(have) >= needed:
    return have[:needed] if needed else have
  if os.environ.get(_FAKE_ENV):
    raise sharding.MeshError(f"asked for {needed} fake CPU devices, got {len(have)}")
  # XLA reads the fake device count only when the backend starts, which has happened: start afresh.
  xla_flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
               if not f.startswith("--xla_force_host_platform_device_count")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{_FAKE_ENV: str(needed)},
             XLA_FLAGS=" ".join(xla_flags + [f"--xla_force_host_platform_device_count={needed}"]))
  print(f"plan: {len(have)} {have[0].platform} device(s) here, the mesh needs {needed}: "
        f"re-running on {needed} fake CPU devices", flush=True)
  os.execve(sys.executable, [sys.executable, "-m", "showo_jax.plan", *sys.argv[1:]], env)


def main(argv):
  del argv  # cli.absl_main refuses positional arguments
  return cli.run(_plan)


def _plan():
  from showo_jax.common import console  # pylint: disable=g-import-not-at-top
  console.setup()  # jax's backend probing and other INFO records stay off the terminal
  config = _CONFIG.value
  config.mesh.update(planner.parse_mesh(_MESH.value))
  if _REMAT.value:
    config.model.remat_policy = _REMAT.value
  if _ATTENTION.value:
    config.model.attention_impl = _ATTENTION.value
  showo_config.validate(config)
  sizes = [int(config.mesh[a]) for a in sharding.MESH_AXES]
  needed = _DEVICES.value or (math.prod(sizes) if -1 not in sizes else 0)
  if needed:
    sharding.mesh_shape(config.mesh, needed)  # a mesh that does not multiply to the devices fails here
  devices = _devices(needed)
  note = planner.for_accelerators(config, devices)
  result = planner.plan(config, devices)
  if note:
    result["note"] = note
  result.update(config=flags.FLAGS["config"].config_filename, device_memory_gb=_MEMORY.value,
                fits=planner.fits(result, _MEMORY.value))
  print(planner.report(result, _MEMORY.value))
  if _JSON.value:
    paths.write_text(_JSON.value, json.dumps(result, indent=1))


if __name__ == "__main__":
  cli.absl_main(main, __doc__, [_CONFIG, _MESH, _REMAT, _ATTENTION, _MEMORY, _DEVICES, _JSON], required=("config",),
                precheck=config_base.config_flag_problem)
