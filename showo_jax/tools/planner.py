"""Ahead-of-time plan of a training run: per-device memory, FLOPs per step, and whether it fits.

Compiles the real train step (the function `trainer.Run` jits, with its shardings and donation) against
abstract inputs — ShapeDtypeStructs carrying the run's shardings — so nothing is allocated. The memory figures
are XLA's buffer assignment for one device; parameters and optimizer state are split out from the abstract
state's per-device shard shapes. The CLI is `python -m showo_jax.plan` (showo_jax/plan.py).
"""

import math
import os
import time

from showo_jax.common import cpu_features
from showo_jax.common import sharding
from showo_jax.config import showo as showo_config

GIB = 2**30
FAKE_DEVICES_ENV = "SHOWO_PLAN_FAKE_DEVICES"  # set in the re-executed CLI process that runs on fake CPU devices


def parse_mesh(text: str) -> dict:
  """'data=1,fsdp=8' → {'data': 1, 'fsdp': 8}; unknown axes or non-integers raise MeshError."""
  sizes = {}
  for item in filter(None, (text or "").split(",")):
    name, sep, value = item.partition("=")
    if not sep or name.strip() not in sharding.MESH_AXES or not value.strip().lstrip("-").isdigit():
      raise sharding.MeshError(f"--mesh {text!r}: expected axis=size with axes {', '.join(sharding.MESH_AXES)}, "
                               f"got {item!r}")
    sizes[name.strip()] = int(value)
  return sizes


def sharded_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs that carry shardings."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
             for leaf in jax.tree.leaves(tree))


def full_count(tree) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def abstract_inputs(run):
  """(batch, rng) as ShapeDtypeStructs with the step's input shardings; the batch is what the pipeline yields."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  t = run.config.train
  rows = t.batch_t2i + t.batch_lm + t.batch_mmu
  batch_sh = sharding.batch_sharding(run.mesh)
  tokens = jax.ShapeDtypeStruct((rows, run.seq_len), jnp.int32, sharding=batch_sh)
  batch = {"input_ids": tokens, "labels": tokens,
           "task_ids": jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=batch_sh)}
  key = jax.eval_shape(jax.random.key, 0)
  return batch, jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(run.mesh))


def _xla_flops(compiled):
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None  # not every backend implements it
  if isinstance(cost, (list, tuple)):  # older jaxlibs: one dict per computation
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None and flops >= 0 else None


def for_accelerators(config, devices) -> str:
  """Plans on CPU devices stand for accelerators: "auto" activations take the accelerator's choice (the compute
  dtype), bf16 products keep bf16 operands (this process only: SHOWO_CPU_BF16_UNITS=1); the Pallas kernel, which XLA:CPU only interprets (with whole-array copies no device makes), is sized
  as its blockwise XLA twin (same residuals, one query block's scores at a time); cuDNN, which XLA:CPU cannot
  compile, is refused in one line. Returns a note for the report ('' when nothing was substituted)."""
  if devices[0].platform != "cpu":
    return ""
  os.environ[cpu_features.OVERRIDE_ENV] = "1"  # bf16 products as bf16, not widened as on this CPU
  if config.model.get("activation_dtype", "auto") == "auto":
    config.model.activation_dtype = config.model.dtype
  if config.model.get("attention_impl", "xla") == "cudnn":
    raise sharding.MeshError("attention_impl=cudnn cannot be planned on CPU devices (XLA:CPU has no cuDNN): "
                             "plan on the GPUs, or plan 'flash' for an estimate")
  if config.model.get("attention_impl", "xla") == "flash":
    config.model.attention_impl = "blockwise"
    return "attention: flash, sized as its blockwise XLA twin (the Pallas kernel compiles on GPU/TPU only)"
  return ""


def plan(config, devices) -> dict:
  """Compiles the train step of `config` on a mesh over `devices` and returns the per-device figures.

  A mesh that does not multiply to len(devices), a batch it does not divide, or a parameter dimension that its
  mesh axes do not divide raise sharding.MeshError here, before anything is compiled.
  """
  from showo_jax.training import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from showo_jax.training import trainer  # pylint: disable=g-import-not-at-top
  showo_config.validate(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  run = trainer.Run(config, mesh)
  batch, rng = abstract_inputs(run)
  t0 = time.perf_counter()
  with run.scope():
    lowered = run.train_step.lower(run.abstract_state, batch, rng)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  mem = compiled.memory_analysis()

  n = len(devices)
  state = run.abstract_state
  params, opt_state = sharded_bytes(state.params), sharded_bytes(state.opt_state)
  rows = int(batch["task_ids"].shape[0])
  analytic = flops_lib.train_flops_per_step(config)
  out = dict(
      devices=n, platform=devices[0].platform, fake_devices=bool(os.environ.get(FAKE_DEVICES_ENV)),
      mesh=dict(mesh.shape), remat=config.model.remat_policy, scan_layers=bool(config.model.scan_layers),
      dtype=config.model.dtype, activations=showo_config.activation_dtype(config.model),
      attention=config.model.get("attention_impl", "xla"), param_dtype=config.model.param_dtype, grad_accum_steps=config.train.grad_accum_steps,
      rows=rows, rows_per_device=rows // sharding.data_parallel_size(mesh), seq_len=run.seq_len,
      param_count=full_count(state.params),
      params_bytes=params, opt_state_bytes=opt_state,
      flops_analytic=analytic, flops_analytic_per_device=analytic / n, flops_xla_per_device=_xla_flops(compiled),
      lower_s=round(t1 - t0, 2), compile_s=round(t2 - t1, 2))
  if mem is not None:
    arg, res, alias = mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes
    out.update(argument_bytes=arg, output_bytes=res, alias_bytes=alias, temp_bytes=mem.temp_size_in_bytes,
               generated_code_bytes=mem.generated_code_size_in_bytes,
               # Kept in the JSON only: XLA:CPU's figure leaves out the temporaries.
               xla_peak_bytes=int(getattr(mem, "peak_memory_in_bytes", 0) or 0),
               # The batch and the step counter (the rng is unused by the deterministic step; jit drops it).
               other_inputs_bytes=arg - params - opt_state,
               unaliased_output_bytes=max(res - alias, 0))  # outputs that do not reuse a donated input (metrics)
    # Live at once in the worst case: every input, the outputs that need fresh buffers, the temporaries (XLA
    # allocates them as one block of temp_size) and the code.
    out["total_bytes"] = arg + out["unaliased_output_bytes"] + out["temp_bytes"] + out["generated_code_bytes"]
  return out


def fits(result: dict, device_memory_gb: float) -> bool:
  return result.get("total_bytes", math.inf) <= device_memory_gb * GIB


def report(result: dict, device_memory_gb: float) -> str:
  """The plan as text; per-device sizes in one unit picked from the total."""
  top = result.get("total_bytes", result["params_bytes"] + result["opt_state_bytes"])
  unit, scale = next((u, s) for u, s in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10), ("B", 1)) if top >= s or s == 1)

  def size(num_bytes):
    return f"{num_bytes / scale:10.3f}"

  mesh = " ".join(f"{k}={v}" for k, v in result["mesh"].items())
  kind = "fake CPU" if result["fake_devices"] else result["platform"]
  lines = [
      f"plan: {result.get('config', '')}  mesh {mesh} on {result['devices']} {kind} devices",
      f"  {result['param_count'] / 1e9:.4g}B params ({result['param_dtype']}), products {result['dtype']}, "
      f"activations {result.get('activations', 'float32')}, attention {result.get('attention', 'xla')}, "
      f"remat={result['remat']}, scan_layers={result['scan_layers']}, grad_accum={result['grad_accum_steps']}",
      f"  batch {result['rows']} rows x {result['seq_len']} tokens ({result['rows_per_device']} rows per device)",
      f"per device ({unit})",
      f"  parameters                {size(result['params_bytes'])}",
      f"  optimizer state           {size(result['opt_state_bytes'])}",
  ]
  if "total_bytes" in result:
    lines += [
        f"  batch and step counter    {size(result['other_inputs_bytes'])}",
        f"  activations/temporaries   {size(result['temp_bytes'])}",
        f"  outputs not donated       {size(result['unaliased_output_bytes'])}",
        f"  generated code            {size(result['generated_code_bytes'])}",
        f"  total                     {size(result['total_bytes'])}",
    ]
  else:
    lines.append("  (this backend gives no memory_analysis: activations unknown)")
  xla = result["flops_xla_per_device"]
  if xla is None:
    xla_text = "unavailable"
  else:  # XLA's cost analysis does not multiply a while loop's body by its trip count
    xla_text = f"{xla:.4g} per device" + (" (counts the scanned layer stack as one layer)"
                                          if result["scan_layers"] else "")
  lines.append(f"FLOPs per step: analytic {result['flops_analytic']:.4g} ({result['flops_analytic_per_device']:.4g} "
               f"per device); XLA cost_analysis {xla_text}")
  lines.append(f"compile: lower {result['lower_s']:.1f} s, compile {result['compile_s']:.1f} s")
  if result.get("note"):
    lines.append(f"note: {result['note']}")
  total = result.get("total_bytes")
  if total is None:
    lines.append(f"fit in {device_memory_gb:g} GiB: unknown")
  elif fits(result, device_memory_gb):
    lines.append(f"fits in {device_memory_gb:g} GiB ({device_memory_gb - total / GIB:.2f} GiB to spare)")
  else:
    lines.append(f"does not fit in {device_memory_gb:g} GiB (needs {total / GIB:.2f} GiB)")
  return "\n".join(lines)
