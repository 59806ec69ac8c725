"""`python -m showo_jax.convert import|export|llm`: official PyTorch checkpoints ↔ showo_jax checkpoints.

  import --input FOLDER_OR_FILE --output CKPT_DIR [--kind showo|magvit] [--overwrite]
      An official Show-o (hub folder, .safetensors, sharded index, .npz, .bin with torch) becomes a checkpoint
      that `sample`, `evaluate` and `train --config.train.init_from=CKPT_DIR` load: CKPT_DIR/checkpoints/0/ with
      the `state` item ({"step", "params"[, "extras"]}) and the `config` item. Sizes and the vocabulary split come
      from the tensor shapes and the official config.json. The CLIP variant's `mm_projector.*` tensors go to
      state["extras"] and are named in config.model.extra_keys. A MAGVIT-v2 becomes a tokenizer checkpoint
      that `tokenizer_trainer.load_tokenizer` (and `sample --tokenizer`) reads.
  export --checkpoint CKPT_DIR --output FOLDER [--merge-lora] [--overwrite]
      The official layout back: config.json (SPEC §9 fields) + pytorch_model.safetensors ([out, in] weights).
      import → export gives back every tensor bit for bit (float32 sources). A LoRA fine-tune needs
      --merge-lora: each adapter is folded into its kernel (the merged model's logits equal the adapted one's).
  llm --input HF_FOLDER --output CKPT_DIR --config configs/showo.py:size=… [--qk-norm identity|init]
      A Phi-1.5 or LLaMA-family HF checkpoint as the backbone of a fresh Show-o (see `llm_init.llm_to_showo`).

Every output is written in a temporary folder beside the target and renamed into place when complete; bad input
gives a one-line error and a non-zero exit. The work is done by interop/conversion.py and interop/llm_init.py.
"""

import sys

from showo_jax.common import cli
from showo_jax.config import base as config_base
from showo_jax.interop import conversion
from showo_jax.interop import llm_init
from showo_jax.interop import reader
from showo_jax.interop import streaming


def _parser():
  parser = cli.Parser(prog="python -m showo_jax.convert", description=__doc__)
  sub = parser.add_subparsers(dest="cmd", required=True, parser_class=cli.Parser)
  imp = sub.add_parser("import", help="official Show-o / MAGVIT-v2 → showo_jax checkpoint")
  imp.add_argument("--input", required=True, help="hub folder, .safetensors, index.json, .npz or .bin")
  imp.add_argument("--output", required=True, help="checkpoint folder to write (CKPT_DIR/checkpoints/0/)")
  imp.add_argument("--kind", choices=["showo", "magvit"], default=None, help="default: detected from the keys")
  imp.add_argument("--allow-non-finite", action="store_true", help="import tensors holding NaN / inf (with a "
                   "warning) instead of refusing them")
  exp = sub.add_parser("export", help="showo_jax checkpoint → official folder")
  exp.add_argument("--checkpoint", required=True, help="a showo_jax workdir, checkpoints folder or step folder")
  exp.add_argument("--output", required=True, help="folder to write: config.json + pytorch_model.safetensors")
  exp.add_argument("--merge-lora", action="store_true", help="fold the checkpoint's LoRA adapters into their "
                   "kernels (needed when it has any: the official layout has no adapter tensors)")
  llm = sub.add_parser("llm", help="HF Phi / LLaMA-family LLM → fresh Show-o checkpoint")
  llm.add_argument("--input", required=True, help="HF folder: config.json + *.safetensors")
  llm.add_argument("--output", required=True, help="checkpoint folder to write")
  llm.add_argument("--config", required=True, help="e.g. configs/showo.py:size=phi-1.5")
  llm.add_argument("--qk-norm", choices=["identity", "init"], default="identity",
                   help="the new QK-norm scales: identity (ones, the LLM's attention unchanged) or init")
  llm.add_argument("--seed", type=int, default=0, help="for the new embedding and head rows")
  for p in (imp, exp, llm):
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --output")
  return parser


def run(args) -> str:
  if args.cmd == "import":
    kind = args.kind
    if kind is None:
      state = streaming.open_state_dict(args.input)
      kind = conversion.detect_kind(state.keys(), getattr(state, "description", args.input))
      del state
    (conversion.import_showo if kind == "showo" else conversion.import_magvit)(
        args.input, args.output, overwrite=args.overwrite, allow_non_finite=args.allow_non_finite)
    return f"imported {kind} {args.input} → {args.output}"
  if args.cmd == "export":
    conversion.export_showo(args.checkpoint, args.output, overwrite=args.overwrite, merge_lora=args.merge_lora)
    return f"exported {args.checkpoint} → {args.output}"
  config = config_base.load_config_file(args.config)
  llm_init.llm_to_showo(args.input, args.output, config, qk_norm=args.qk_norm, seed=args.seed,
                        overwrite=args.overwrite)
  return f"converted LLM {args.input} → {args.output}"


def main(argv=None) -> int:
  return cli.parse_and_run(_parser(), argv, lambda args: print(run(args)),
                           bad_input=(reader.CheckpointError, config_base.ConfigError))


if __name__ == "__main__":
  sys.exit(main())
