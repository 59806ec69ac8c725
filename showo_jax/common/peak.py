"""The MFU denominator: the peak matmul FLOP/s of the chips that run a step, chosen in one place for the trainer
and `python -m showo_jax.bench train`.

The peak is that of the product the step's matmuls run: `dtype` operands summed in float32, at the backbone's
`matmul_precision`:
  GPU  the datasheet's dense figure of the device kind (DATASHEET_TFLOPS): bf16 for bfloat16 (or float16)
       compute; for float32, TF32 at precision "default" or "high" (what XLA:GPU runs them as on Ampere and later)
       and FP32 at "highest". A kind missing from the table is measured.
  TPU  measured; the precision sets the number of bf16 passes of a float32 product (1, 3 or 6), and the measured
       product takes it.
  CPU  measured. bfloat16 compute on a CPU without bf16 units counts as float32: the models widen the operands
       there (common/cpu_features.py), so their products run at the f32 peak, not at the slower bf16 kernel's.
Chips: every device on an accelerator. CPU devices of one process share that host's cores
(--xla_force_host_platform_device_count splits one machine), so each process counts once. `per_chip_tflops` > 0
(config.train.peak_tflops_per_device) replaces the per-chip figure.
"""

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp

from showo_jax.common import cpu_features

# Dense (no sparsity) tensor-core TFLOP/s per chip from NVIDIA's datasheets, by a substring of
# `device.device_kind`; the first match wins, so "H100 PCIe" comes before "H100".
DATASHEET_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.5, "tf32": 494.5, "fp32": 67.0}),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", {"bf16": 989.5, "tf32": 494.5, "fp32": 67.0}),  # also GH200
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)
PRECISIONS = ("default", "high", "highest")


@dataclasses.dataclass(frozen=True)
class Peak:
  """What a step's MFU is measured against: `chips` × the peak of one chip on the step's product."""
  chips: int
  operands: str  # dtype of the product's operands: "float32" or "bfloat16" (float16 as bfloat16)
  precision: str  # one of PRECISIONS
  per_chip: float  # FLOP/s from the datasheet or the config; 0: measured on the chip (`sampler`)
  source: str  # where the figure comes from, for logs


def _datasheet(device_kind: str):
  for name, figures in DATASHEET_TFLOPS:
    if name in device_kind:
      return name, figures
  return None, None


def chips(devices) -> int:
  """How many chips `devices` are: one per device on accelerators, one per process on CPU."""
  devices = list(devices)
  if devices[0].platform == "cpu":
    return len({d.process_index for d in devices})
  return len(devices)


def choose(devices, dtype, precision: str = "default", per_chip_tflops: float = 0.0) -> Peak:
  """The peak of a step whose products take `dtype` operands at `precision` on `devices` (its mesh's)."""
  if precision not in PRECISIONS:
    raise ValueError(f"matmul precision {precision!r} is not one of {PRECISIONS}")
  devices = list(devices)
  platform = devices[0].platform
  low = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
  if platform == "cpu" and low and not cpu_features.has_bf16_units():
    low = False  # widened to float32 inside every product (layers.product_operands)
  operands = "bfloat16" if low else "float32"
  n = chips(devices)
  if per_chip_tflops > 0:
    return Peak(n, operands, precision, float(per_chip_tflops) * 1e12, "configured")
  name, figures = _datasheet(devices[0].device_kind) if platform == "gpu" else (None, None)
  if figures is not None:
    mode = "bf16" if low else ("fp32" if precision == "highest" else "tf32")
    return Peak(n, operands, precision, figures[mode] * 1e12, f"datasheet {name} {mode}")
  return Peak(n, operands, precision, 0.0, f"measured {operands} x {operands} -> float32, precision {precision}")


def matmul(precision: str = "default", out_dtype=jnp.float32):
  """x · x, the product a peak is measured on (a step's products: f32 sums of `x`'s dtype)."""
  return jax.jit(lambda x: jax.lax.dot(x, x, precision=jax.lax.Precision(precision),
                                       preferred_element_type=out_dtype))


def default_size(device) -> int:
  return 2048 if device.platform == "cpu" else 8192  # an accelerator needs a big product to reach its peak


def sampler(peak: Peak, device=None, size: int = 0):
  """A function returning one sample of the per-chip FLOP/s: the fixed figure, or the best of 3 products of
  `size`² (0: default_size) on `device` (None: the first local one)."""
  if peak.per_chip > 0:
    return lambda: peak.per_chip
  device = device or jax.local_devices()[0]
  size = size or default_size(device)
  a = jax.device_put(jnp.ones((size, size), jnp.dtype(peak.operands)), device)
  f = matmul(peak.precision)
  f(a).block_until_ready()

  def sample() -> float:
    best = float("inf")
    for _ in range(3):
      t0 = time.perf_counter()
      f(a).block_until_ready()
      best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best
  return sample


def peak_flops(devices, dtype, precision: str = "default", per_chip_tflops: float = 0.0, repeats: int = 3) -> float:
  """FLOP/s of all the chips of `devices` on a step of `dtype` products at `precision`: the MFU denominator
  (`choose`, then the median of `repeats` samples where the figure is measured)."""
  peak = choose(devices, dtype, precision, per_chip_tflops)
  sample = sampler(peak)
  return peak.chips * statistics.median(sample() for _ in range(repeats))
