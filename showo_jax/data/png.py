"""PNG files of uint8 image arrays, written to a local path or a cloud URL.

Its own module so that both the image library (images.py) and the embedded dataset (embedded.py), which the
image library reads, can write PNGs without importing each other.
"""

import io

import numpy as np
from PIL import Image

from showo_jax.common import paths


def save_png(array: np.ndarray, path: str):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  paths.write_bytes(path, buffer.getvalue())
