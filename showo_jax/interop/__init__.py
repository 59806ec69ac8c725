"""Official Show-o / MAGVIT-v2 checkpoints in and out, LLM initialisation, and loading our own checkpoints.

The names below are a stable public API (other work and outside checks import them from `showo_jax.interop`);
they are defined in interop/api.py and tokenizer/codec.py.
"""

from showo_jax.interop.api import attention_mask
from showo_jax.interop.api import CheckpointError
from showo_jax.interop.api import load_official_magvit
from showo_jax.interop.api import load_official_showo
from showo_jax.interop.api import magvit_decode
from showo_jax.interop.api import magvit_encode
from showo_jax.interop.api import showo_logits
from showo_jax.interop.api import showo_losses

__all__ = ["load_official_showo", "showo_logits", "attention_mask", "showo_losses", "load_official_magvit",
           "magvit_encode", "magvit_decode", "CheckpointError"]
