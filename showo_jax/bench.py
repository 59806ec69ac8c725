"""Benchmarks: `python -m showo_jax.bench train|data|convert|sample|tokenizer [--steps N] [--json OUT]`.

train: the matmul peaks of this machine, then for the tiny and the medium config (phi, width 512, 8 layers,
  8 heads, MLP 2048, text vocab 1,000 + codebook 8,192, 64 text + 256 image tokens → L = 323, batch t2i/lm/mmu
  4/2/2), in float32 and with bfloat16 compute (float32 params): median step time, tokens/s, MFU against the
  peak of common/peak.py (the trainer's), and peak memory. `--sizes` picks configs, `official` (the 1.3B model, batch 8/4/4) among them.
  Peaks are measured for f32, bf16 operands with f32 sums (what our products do) and bf16 → bf16 (8192² products
  on an accelerator, 2048² on CPU) and printed; each row's MFU is against `peak.choose` for its dtype and precision
  (a datasheet figure on known GPUs, else the measured product the row's matmuls run). `--activations` and
  `--attention` set config.model.activation_dtype / attention_impl of every row. The machine line names the CPU
  model and its matmul-relevant flags (AVX-512, AVX512-BF16, AMX).
data: batches/s of each task's input pipeline against the train step rate, for the tiny config (embedded
  data) and the medium config (synthetic 256-token records with captions and LLaVA conversations).
convert: writes a synthetic official-shaped Show-o checkpoint of random float32 tensors (every key and shape of
  ../shared/parity/param_shapes_full.json; `--layers N` keeps only the first N decoder layers for a quick run),
  then runs `python -m showo_jax.convert import` and `export` on it as child processes and reports each one's
  peak resident memory against the checkpoint's size (goal: < 1.5x).
tokenizer: MAGVIT-v2 encode (image → indices) and decode (indices → image) images/s at batch 8 for the `tiny`
  (32 px) and `official` (256 px) shapes with random params, and the process's peak memory.
sample: MaskGIT T2I (16 steps, CFG) latency at batch 1 and images/s at batch 8, prefix-cached vs full forwards vs
  the 16 batched forwards alone; MMU ms/token with the KV cache vs full recomputation (showo_jax/tools/
  bench_sample.py), for the tiny and the medium config with random params (`--steps` = timed repeats).
Medians over `--steps` timed steps after warm-up; every figure names the machine it ran on.
"""

import json
import sys

from showo_jax.common import cli
from showo_jax.common import paths
from showo_jax.tools import bench


def _parser():
  parser = cli.Parser(prog="python -m showo_jax.bench", description=__doc__)
  parser.add_argument("what", choices=["train", "data", "convert", "sample", "tokenizer"], help="what to time")
  parser.add_argument("--steps", type=int, default=10, help="timed repeats after warm-up (figures are medians)")
  parser.add_argument("--json", default="", help="also write the figures to this file")
  parser.add_argument("--sizes", default="tiny,medium",
                      help="train: comma-separated configs among tiny, medium, official (1.3B; for accelerators)")
  parser.add_argument("--activations", default="auto", choices=["auto", "float32", "bfloat16"],
                      help="train: config.model.activation_dtype of every row (auto: f32 on CPU, the dtype elsewhere)")
  parser.add_argument("--attention", default="xla", choices=["xla", "flash", "blockwise", "cudnn"],
                      help="train: config.model.attention_impl of every row")
  parser.add_argument("--workdir", default="", help="data: where the embedded data is prepared (reused)")
  parser.add_argument("--shapes", default=bench.SHAPES, help="convert: param_shapes_full.json")
  parser.add_argument("--layers", type=int, default=0, help="convert: keep only this many layers (0 = all 24)")
  parser.add_argument("--keep", action="store_true", help="convert: keep the files written under --workdir")
  return parser


def main(argv=None):
  return cli.parse_and_run(_parser(), argv, _run)


def _run(args):
  out = {"train": bench.cmd_train, "data": bench.cmd_data, "convert": bench.cmd_convert,
         "sample": bench.cmd_sample, "tokenizer": bench.cmd_tokenizer}[args.what](args)
  if args.json:
    paths.write_text(args.json, json.dumps(out, indent=1))


if __name__ == "__main__":
  sys.exit(main())
