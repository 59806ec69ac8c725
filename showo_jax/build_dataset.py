r"""Builds the training datasets of the paper's recipe as ArrayRecord folders (README, "Datasets").

  python -m showo_jax.build_dataset text     --input refinedweb/ --output data/refinedweb
  python -m showo_jax.build_dataset imagenet --input imagenet/ --class-names LOC_synset_mapping.txt \
      --output data/imagenet --tokenizer-checkpoint magvitv2/
  python -m showo_jax.build_dataset pairs    --input cc12m/ --output data/cc12m --tokenizer-checkpoint magvitv2/
  python -m showo_jax.build_dataset llava    --input llava_v1_5_mix665k.json --image-root tuning_data/ \
      --output data/llava_tune --tokenizer-checkpoint magvitv2/

Each input layout is described in its module under showo_jax/data/builders/. Images are pre-tokenized here,
once, by the image tokenizer, so training reads token ids. The output is split into shards of
--records-per-shard inputs; shard i is written by process i % --process-count (default: jax's process info, or
one process), and a rerun skips finished shards (an interrupted shard is redone from scratch, so nothing is
duplicated). Bad input is skipped, counted per reason and reported at the end with examples; the folder's
meta.json keeps the same report.
"""

import argparse
import json
import logging
import sys

from showo_jax.data import builders
from showo_jax.interop import checkpoints
from showo_jax.tokenizer import pretokenize


def _report(stats: dict) -> str:
  if not stats.get("complete", True):
    return (f"{stats['output']}: this process's shards are done; meta.json is written by the last process to "
            "finish (or by rerunning any of them)")
  lines = [f"{stats['output']}: {stats['num_records']} records in {stats['num_shards']} shards "
           f"({stats['shards_skipped']} already done), {stats['corrupt']} inputs skipped"]
  for reason, count in sorted(stats["skipped"].items(), key=lambda kv: -kv[1]):
    lines.append(f"  skipped {count} ({reason}), e.g.:")
    lines += [f"    {example}" for example in stats["skipped_examples"][reason]]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m showo_jax.build_dataset", description=__doc__.split("\n")[0])
  parser.add_argument("kind", choices=builders.KINDS)
  parser.add_argument("--input", nargs="+", required=True, help="files, globs or folders (see the kind)")
  parser.add_argument("--output", required=True, help="the record folder to write")
  parser.add_argument("--tokenizer-checkpoint", default=None,
                      help="image tokenizer: a train_tokenizer workdir/checkpoints or official MAGVIT-v2 weights")
  parser.add_argument("--resolution", type=int, default=0, help="image side; 0 = the tokenizer's")
  parser.add_argument("--batch-size", type=int, default=64, help="images per encoder call")
  parser.add_argument("--records-per-shard", type=int, default=10_000, help="inputs per shard (unit of resume)")
  parser.add_argument("--process-index", type=int, default=None, help="this process (default: jax's)")
  parser.add_argument("--process-count", type=int, default=None, help="processes sharing the build")
  parser.add_argument("--class-names", default="", help="imagenet: class-name file")
  parser.add_argument("--split", default="train", help="imagenet, tfds layout: train | validation")
  parser.add_argument("--image-root", default="", help="pairs (JSONL manifests), llava: image folder")
  parser.add_argument("--field", default="", help="text: the text field / column (default: content, then text)")
  args = parser.parse_args(argv)
  if (args.process_index is None) != (args.process_count is None):
    parser.error("give both --process-index and --process-count, or neither")
  options = {"text": dict(field=args.field), "imagenet": dict(class_names=args.class_names, split=args.split),
             "pairs": dict(image_root=args.image_root), "llava": dict(image_root=args.image_root)}[args.kind]
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    encoder = None
    if args.tokenizer_checkpoint and builders.source_module(args.kind).Source.needs_images:
      params, tokenizer_cfg = checkpoints.load_tokenizer(args.tokenizer_checkpoint)
      encoder = pretokenize.Encoder(params, tokenizer_cfg, args.batch_size, args.resolution)
    stats = builders.build(args.kind, args.input, args.output, encoder=encoder,
                           checkpoint=args.tokenizer_checkpoint or "", records_per_shard=args.records_per_shard,
                           process_index=args.process_index, process_count=args.process_count, **options)
  except (FileNotFoundError, ValueError) as e:  # bad layout, names file, checkpoint, flags: one line
    sys.exit(f"error: {e}")
  print(_report(stats))
  print(json.dumps({k: v for k, v in stats.items() if k not in ("corrupt_examples", "skipped_examples")}))


if __name__ == "__main__":
  main()
