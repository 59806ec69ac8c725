"""Per-function XLA compiler options (passed as `jax.jit(..., compiler_options=...)`, so no global flags).

XLA:CPU hands convolutions, reductions and elementwise chains to YNNPACK "library fusions" by default. For the
MAGVIT-v2 convolution stacks that is slower on AVX2 CPUs (the tiny encoder tokenizes about 1.6× more images/s
with those fusions off; `python -m showo_jax.bench tokenizer` prints both settings).
Other backends get no options.
"""

import jax

_NO_LIBRARY_FUSIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def conv_net() -> dict:
  """Options for the image tokenizer's jitted functions (encode, decode, its train step)."""
  return dict(_NO_LIBRARY_FUSIONS) if jax.default_backend() == "cpu" else {}
