r"""Builds the training datasets of the paper's recipe as ArrayRecord folders (docs/datasets.md).

  python -m showo_jax.build_dataset text     --input refinedweb/ --output data/refinedweb
  python -m showo_jax.build_dataset imagenet --input imagenet/ --class-names LOC_synset_mapping.txt \
      --output data/imagenet --tokenizer-checkpoint magvitv2/
  python -m showo_jax.build_dataset pairs    --input cc12m/ --output data/cc12m --tokenizer-checkpoint magvitv2/
  python -m showo_jax.build_dataset llava    --input llava_v1_5_mix665k.json --image-root tuning_data/ \
      --output data/llava_tune --tokenizer-checkpoint magvitv2/
  python -m showo_jax.build_dataset jsonl    --input my_data.jsonl --image-root my_images/ \
      --output data/my_data --tokenizer-checkpoint magvitv2/
  python -m showo_jax.build_dataset digits   --output digits/ [--split test --num 10 --view sideways]  (PNGs + data.jsonl)

`KIND --help` describes that kind's input layout (its module under showo_jax/data/builders/). Images are
pre-tokenized here, once, by the image tokenizer, so training reads token ids. The output is split into shards of
--records-per-shard inputs; shard i is written by process i % --process-count (default: jax's process info, or
one process), and a rerun skips finished shards (an interrupted shard is redone from scratch, so nothing is
duplicated). Bad input is skipped, counted per reason and reported at the end with examples; the folder's
meta.json keeps the same report.
"""

import json
import logging
import sys

from showo_jax.common import cli
from showo_jax.common import console
from showo_jax.data import builders
from showo_jax.data import embedded
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


_KIND_OPTIONS = {  # kind -> its own options: (flag, default, help)
    "text": [("--field", "", "the text field / column ('' = content, then text)")],
    "imagenet": [("--class-names", "", "class-name file (LOC_synset_mapping.txt layout)"),
                 ("--split", "train", "train | validation")],
    "pairs": [("--image-root", "", "JSONL manifests: the image folder ('' = the manifest's folder)")],
    "llava": [("--image-root", "", "the folder the conversation file's image paths are relative to")],
    "jsonl": [("--image-root", "", "the folder the lines' image paths are relative to ('' = each file's folder)")],
}


def _parser():
  parser = cli.Parser(prog="python -m showo_jax.build_dataset", description=__doc__.split("\n")[0],
                      epilog="KIND --help describes that kind's input layout.")
  sub = parser.add_subparsers(dest="kind", required=True, parser_class=cli.Parser, metavar="KIND")
  digits = sub.add_parser("digits", help="the embedded MNIST digits as PNG files (inputs for sample, "
                          "tokenize_images and the pairs kind)", description=embedded.write_digit_folder.__doc__)
  digits.add_argument("--output", required=True, help="folder to write the PNGs and their .txt captions into")
  digits.add_argument("--split", default="test", choices=embedded.SPLITS, help="which split of the digits")
  digits.add_argument("--num", type=int, default=10, help="how many, spread over the split (10 = one per digit)")
  digits.add_argument("--view", default="default", choices=embedded.VIEWS, help="as they are (default), turned "
                      "90° clockwise with the fine-tuning demo's captions and question (sideways), or as they are "
                      "with its question (upright)")
  for kind in builders.KINDS:
    doc = builders.source_module(kind).__doc__ or ""
    p = sub.add_parser(kind, help=doc.strip().split("\n")[0], description=doc.strip())
    p.add_argument("--input", nargs="+", required=True, help="files, globs or folders (see above)")
    p.add_argument("--output", required=True, help="the record folder to write")
    if builders.source_module(kind).Source.needs_images:
      p.add_argument("--tokenizer-checkpoint", required=True,
                     help="image tokenizer: a train_tokenizer workdir/checkpoints or official MAGVIT-v2 weights")
      p.add_argument("--resolution", type=int, default=0, help="image side (0 = the tokenizer's)")
      p.add_argument("--batch-size", type=int, default=64, help="images per encoder call")
    p.add_argument("--records-per-shard", type=int, default=10_000, help="inputs per shard (the unit of resume)")
    p.add_argument("--process-index", type=int, default=None, help="this process (default: jax's)")
    p.add_argument("--process-count", type=int, default=None, help="processes sharing the build (default: jax's)")
    for flag, default, text in _KIND_OPTIONS[kind]:
      p.add_argument(flag, default=default, help=text)
  return parser


def main(argv=None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  console.setup()

  def work(args):
    if args.kind == "digits":
      written = embedded.write_digit_folder(args.output, args.split, args.num, args.view)
      print(f"{args.output}: {len(written)} digits of the {args.split} split, e.g. {written[0]}; their captions "
            f"and questions in {args.output}/data.jsonl")
      return
    if (args.process_index is None) != (args.process_count is None):
      raise ValueError("give both --process-index and --process-count, or neither")
    options = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
               for flag, _, _ in _KIND_OPTIONS[args.kind]}
    encoder, checkpoint = None, getattr(args, "tokenizer_checkpoint", None) or ""
    if checkpoint:
      params, tokenizer_cfg = checkpoints.load_tokenizer(checkpoint)
      encoder = pretokenize.Encoder(params, tokenizer_cfg, args.batch_size, args.resolution)
    stats = builders.build(args.kind, args.input, args.output, encoder=encoder, checkpoint=checkpoint,
                           records_per_shard=args.records_per_shard, process_index=args.process_index,
                           process_count=args.process_count, **options)
    print(_report(stats))
    print(json.dumps({k: v for k, v in stats.items() if k not in ("corrupt_examples", "skipped_examples")}))

  return cli.parse_and_run(_parser(), argv, work)


if __name__ == "__main__":
  sys.exit(main())
