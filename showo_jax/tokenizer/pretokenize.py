r"""Pre-tokenizes an image collection into an ArrayRecord dataset of MAGVIT-v2 token ids.

The CLI is `python -m showo_jax.tokenize_images --checkpoint DIR --input SPEC --output FOLDER` (its --help).
The tokenizer: one of our train_tokenizer workdirs / checkpoint folders (EMA weights), or a (params, config) pair
(official MAGVIT-v2 weights, loaded by interop/checkpoints.py).
The input: an image folder (captions from `captions.jsonl` lines {"file", "caption"[, "label"]} or a `.txt`
  beside each image), `records:FOLDER` / a record folder or `tfds:NAME[:SPLIT]@DATA_DIR` (images in the
  `--image_field` field, uint8 arrays or encoded bytes), or `embedded:train|validation|test`.
Each record: `image_tokens` int16 [h·w] (row-major over the token grid; int32 past 15 bits) plus the carried
fields: `caption`, `label`, and for the embedded digits `question` ("What digit is this?") and `answer` (the
digit word), so one dataset feeds both t2i and mmu. With --noresize the images are encoded at their own size
(which must be a multiple of the downsampling factor) and each record also carries `token_grid` [h, w].

The input is split into contiguous shards; each finished shard is renamed into place and marked done, so a
rerun skips finished shards. Unreadable images and corrupt records are counted, reported and skipped.
The writing is data/sharded_writer.py's; the dataset builders (data/builders) feed their sources through the same
`Encoder` and writer.
"""

import functools
import json

import jax
import ml_collections
import numpy as np

from showo_jax.common import sharding
from showo_jax.common import xla_options
from showo_jax.data import images as images_lib
from showo_jax.data import sharded_writer
from showo_jax.tokenizer import config as tokenizer_config
from showo_jax.tokenizer import magvit
from showo_jax.tokenizer import trainer as tokenizer_trainer



@functools.lru_cache(maxsize=8)
def _encoder(config_json: str):
  model = tokenizer_config.magvit_from_config(ml_collections.ConfigDict(json.loads(config_json)))

  def encode(params, images_u8):  # uint8 [B, H, W, 3] → int32 [B, h, w]
    return model.apply({"params": params}, images_lib.to_float(images_u8), method=magvit.MagvitV2.encode)[2]

  return jax.jit(encode, compiler_options=xla_options.conv_net())


class Encoder:
  """Batched uint8 [B, H, W, 3] → int32 [B, h·w], sharded over the local devices (batch over data × fsdp).

  Also says how to feed it: `resolution` (image side), `factor` (downsampling), `token_dtype`, `codebook_bits`.
  """

  def __init__(self, params, config, batch_size: int, resolution: int = 0):
    if batch_size < 1 or resolution < 0:
      raise ValueError(f"--batch-size must be >= 1 and --resolution >= 0 (0 = the tokenizer's), got {batch_size} "
                       f"and {resolution}")
    self.mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)), jax.local_devices())
    dp = sharding.data_parallel_size(self.mesh)
    self.batch_size = -(-batch_size // dp) * dp  # a multiple of the device count
    self._sharding = sharding.batch_sharding(self.mesh)
    self.params = jax.device_put(params, sharding.replicated(self.mesh))
    self._fn = _encoder(json.dumps(config.to_dict(), sort_keys=True))
    self.factor = tokenizer_config.downsample_factor(config)
    data_cfg = config.get("data", None)
    self.resolution = int(resolution or (data_cfg.resolution if data_cfg else config.resolution))
    if self.resolution % self.factor:
      raise ValueError(f"--resolution {self.resolution} is not a multiple of the tokenizer's downsampling factor "
                       f"{self.factor} (e.g. {max(self.factor, self.resolution // self.factor * self.factor)})")
    self.codebook_bits = int(config.codebook_bits)
    self.token_dtype = np.int16 if self.codebook_bits <= 15 else np.int32

  @classmethod
  def from_checkpoint(cls, checkpoint, batch_size: int = 64, resolution: int = 0) -> "Encoder":
    """`checkpoint`: one of our tokenizer checkpoints (`tokenizer_trainer.load_tokenizer`), or a (params, config)
    pair, e.g. official weights from interop/checkpoints.py `load_tokenizer`."""
    params, config = (checkpoint if isinstance(checkpoint, tuple)
                      else tokenizer_trainer.load_tokenizer(checkpoint))
    return cls(params, config, batch_size, resolution)

  def __call__(self, batch: np.ndarray) -> np.ndarray:
    n = len(batch)
    padded = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - n, 0)]) if n < self.batch_size else batch
    with jax.set_mesh(self.mesh):
      indices = self._fn(self.params, jax.device_put(padded, self._sharding))
    indices = np.asarray(jax.device_get(indices))[:n]
    return indices.reshape(n, -1), indices.shape[1:]


def pretokenize(checkpoint, input_spec: str, output_folder: str, *, batch_size: int = 64, resolution: int = 0,
                resize: bool = True, image_field: str = "image", records_per_shard: int = 10_000,
                name: str = "data", checkpoint_name: str = "") -> dict:
  """Writes the token dataset of `input_spec` into `output_folder`; returns its stats.

  Args:
    checkpoint: one of our tokenizer checkpoints (a path), or a (params, config) pair (official weights come
      as a pair from interop/checkpoints.py `load_tokenizer`).
    input_spec: see the module docstring.
    output_folder: the record folder (records.RecordSource / records.open_source read it).
    batch_size: images per encoder call (rounded up to a multiple of the local device count).
    resolution: image side; 0 = the tokenizer config's `data.resolution` (else its `resolution`).
    resize: False = encode at each image's own size, refusing sizes not divisible by the downsampling factor.
    image_field: the image field of record / tfds inputs.
    records_per_shard: inputs per output shard (the unit of resumption).
    name: shard file prefix.
    checkpoint_name: where a (params, config) pair came from, recorded in the folder's plan (a rerun must match).

  Returns:
    {"num_records", "corrupt", "corrupt_examples", "num_shards", "shards_skipped", "seconds", ...}.
  """
  encoder = Encoder.from_checkpoint(checkpoint, batch_size, resolution)
  resolution = encoder.resolution
  collection = images_lib.open_collection(input_spec, resolution, resize=resize, factor=encoder.factor,
                                          image_field=image_field, exact=False)
  source = checkpoint if isinstance(checkpoint, str) else (checkpoint_name or "<in memory>")
  plan = {"input": input_spec, "checkpoint": source,
          "resolution": resolution, "resize": resize}
  grid = resolution // encoder.factor
  meta = dict(codebook_bits=encoder.codebook_bits, token_grid=[grid, grid] if resize else None,
              token_dtype=np.dtype(encoder.token_dtype).name)
  return sharded_writer.write_sharded(collection, output_folder, plan, encoder=encoder, resize=resize,
                       records_per_shard=records_per_shard, name=name, meta=meta, desc=f"tokenize {input_spec}")
