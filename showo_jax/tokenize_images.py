r"""Pre-tokenizes an image collection into an ArrayRecord dataset of MAGVIT-v2 token ids.

  python -m showo_jax.tokenize_images --checkpoint DIR --input SPEC --output FOLDER

--checkpoint: a train_tokenizer workdir / checkpoint folder (EMA weights) or an official MAGVIT-v2 file/folder.
--input: an image folder (captions from `captions.jsonl` or a `.txt` beside each image), `records:FOLDER`,
`tfds:NAME[:SPLIT]@DATA_DIR` or `embedded:train|validation|test`. See tokenizer/pretokenize.py.
"""

import json
import logging
import sys

from absl import app
from absl import flags

from showo_jax.interop import checkpoints
from showo_jax.tokenizer import pretokenize

FLAGS = flags.FLAGS


def _define_flags():  # only when run: importing this module defines no flags
  flags.DEFINE_string("checkpoint", None, "tokenizer: train_tokenizer workdir/checkpoints or official weights")
  flags.DEFINE_string("input", None,
                      "image folder | records:FOLDER | tfds:NAME[:SPLIT]@DIR | embedded:train|validation|test")
  flags.DEFINE_string("output", None, "output record folder")
  flags.DEFINE_integer("batch_size", 64, "images per encoder call")
  flags.DEFINE_integer("resolution", 0, "image side; 0 = the tokenizer's data.resolution")
  flags.DEFINE_bool("resize", True, "resize + center-crop (official); --noresize refuses non-divisible sizes")
  flags.DEFINE_string("image_field", "image", "image field of record/tfds inputs")
  flags.DEFINE_integer("records_per_shard", 10_000, "inputs per output shard (the unit of resumption)")


def main(argv):
  del argv
  f = FLAGS
  try:
    tokenizer = checkpoints.load_tokenizer(f.checkpoint)
    stats = pretokenize.pretokenize(tokenizer, f.input, f.output, batch_size=f.batch_size, resolution=f.resolution,
                                    resize=f.resize, image_field=f.image_field,
                                    records_per_shard=f.records_per_shard, checkpoint_name=f.checkpoint)
  except (FileNotFoundError, ValueError) as e:  # bad input (ImageError, CheckpointError, ConfigError): one line
    sys.exit(f"error: {e}")
  for example in stats.pop("corrupt_examples"):
    logging.warning("skipped: %s", example)
  print(json.dumps(stats))


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["checkpoint", "input", "output"])
  app.run(main)
