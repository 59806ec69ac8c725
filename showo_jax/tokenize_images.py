r"""Pre-tokenizes an image collection into an ArrayRecord dataset of MAGVIT-v2 token ids.

  python -m showo_jax.tokenize_images --checkpoint DIR --input SPEC --output FOLDER

--checkpoint: a train_tokenizer workdir / checkpoint folder (EMA weights) or an official MAGVIT-v2 file/folder.
--input: an image folder (captions from `captions.jsonl` or a `.txt` beside each image), `records:FOLDER`,
`tfds:NAME[:SPLIT]@DATA_DIR` or `embedded:train|validation|test`. See tokenizer/pretokenize.py.
A rerun skips finished shards; Ctrl-C (exit 130) and SIGTERM (exit 0) stop after the shard being written.
Exit status: 0 done, 2 bad input (one line naming it), 1 an unexpected failure.
"""

import json
import logging

from absl import flags

from showo_jax.common import cli

_FLAGS = (
    flags.DEFINE_string("checkpoint", None, "tokenizer: train_tokenizer workdir/checkpoints or official weights"),
    flags.DEFINE_string("input", None,
                        "image folder | records:FOLDER | tfds:NAME[:SPLIT]@DIR | embedded:train|validation|test"),
    flags.DEFINE_string("output", None, "output record folder"),
    flags.DEFINE_integer("batch_size", 64, "images per encoder call"),
    flags.DEFINE_integer("resolution", 0, "image side; 0 = the tokenizer's data.resolution"),
    flags.DEFINE_bool("resize", True, "resize + center-crop (official); --noresize refuses non-divisible sizes"),
    flags.DEFINE_string("image_field", "image", "image field of record/tfds inputs"),
    flags.DEFINE_integer("records_per_shard", 10_000, "inputs per output shard (the unit of resumption)"),
) if __name__ == "__main__" else ()  # importing this module defines no flags
FLAGS = flags.FLAGS


def main(argv):
  del argv  # cli.absl_main refuses positional arguments
  f = FLAGS

  def work():
    from showo_jax.common import console  # pylint: disable=g-import-not-at-top
    from showo_jax.common import interrupts  # pylint: disable=g-import-not-at-top
    from showo_jax.interop import checkpoints  # pylint: disable=g-import-not-at-top
    from showo_jax.tokenizer import pretokenize  # pylint: disable=g-import-not-at-top
    console.setup()
    tokenizer = checkpoints.load_tokenizer(f.checkpoint)
    with interrupts.handling():  # Ctrl-C / SIGTERM: stop after the shard being written
      stats = pretokenize.pretokenize(tokenizer, f.input, f.output, batch_size=f.batch_size,
                                      resolution=f.resolution, resize=f.resize, image_field=f.image_field,
                                      records_per_shard=f.records_per_shard, checkpoint_name=f.checkpoint)
    for example in stats.pop("corrupt_examples"):
      logging.warning("skipped: %s", example)
    print(json.dumps(stats))

  return cli.run(work)


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "input", "output"])
  cli.absl_main(main, __doc__, _FLAGS, required=("checkpoint", "input", "output"))
