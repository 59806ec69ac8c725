"""What the host CPU's matrix units can do, for choosing how bf16 products run on the CPU backend.

XLA:CPU runs a bf16 × bf16 → f32 product on the matrix units of CPUs with AVX512-BF16 or AMX-BF16. Without them it
converts inside a slower kernel (about 0.75× the f32 speed on an AVX2 EPYC). The same product is exact in f32 (two
8-bit mantissas multiply into 16 bits, which f32 holds), so there the models round the operands to bf16 and
multiply in f32: the numbers of bf16 compute at f32 speed. `SHOWO_CPU_BF16_UNITS=1|0` overrides the detection.
"""

import functools
import os

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
OVERRIDE_ENV = "SHOWO_CPU_BF16_UNITS"


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
  """The host's CPU flags (/proc/cpuinfo; empty where that file does not exist)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:  # a system file, not a user path
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.partition(":")[2].split())
  except OSError:
    pass
  return frozenset()


def has_bf16_units() -> bool:
  """True where bf16 products have hardware (or SHOWO_CPU_BF16_UNITS says so)."""
  override = os.environ.get(OVERRIDE_ENV, "")
  if override in ("0", "1"):
    return override == "1"
  return any(flag in cpu_flags() for flag in BF16_FLAGS)
