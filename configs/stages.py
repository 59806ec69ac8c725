"""The paper's training recipe (SPEC §10): Show-o on Phi-1.5, stage by stage.

  --config configs/stages.py:stage=pretrain1                  # ImageNet-1k t2i + captioning, 500k steps
  --config configs/stages.py:stage=pretrain2                  # image-text pairs, 1M steps
  --config configs/stages.py:stage=pretrain3                  # high-quality pairs, 50k steps
  --config configs/stages.py:stage=tune1,res=256              # instruction tuning 1 (LLaVA-Pretrain-558K)
  --config configs/stages.py:stage=tune2,res=512              # instruction tuning 2 (LLaVA-v1.5-mix-665K)
Args: stage, res (256 | 512; pretraining stages are 256 only), devices (the official run used 48 GPUs: the
per-device batch sizes of the official configs times `devices` give the global batch).

Each stage starts from the previous one with one flag, `--config.train.init_from=PREVIOUS_WORKDIR` (params only;
the optimizer and data position start fresh, as the official runs did). The data sources are record folders
written by the dataset builders (docs/datasets.md): set `--config.data.t2i_records=…,…`,
`--config.data.mmu_records=…`, `--config.data.lm_records=…`; several comma-separated folders in one task are
mixed with the weights in `--config.data.<task>_weights` (same order; default equal).
The official loader modes ("max_size_cycle" for pretraining, "min_size" for instruction tuning) only decide when
an epoch ends; here every task stream repeats forever and training is counted in steps, so both reduce to the
step counts below. `config.data.loader_mode` records which one the official run used.
"""

from showo_jax.config import base as config_base
from showo_jax.config import showo as showo_config

# stage: (res allowed, T, per-device batch t2i/lm/mmu, lr, warmup, steps, loader mode, CFG used in eval samples)
_STAGES = {
    "pretrain1": ((256,), 128, (15, 4, 10), 1e-4, 5000, 500_000, "max_size_cycle", 1.5),
    "pretrain2": ((256,), 128, (10, 4, 10), 1e-4, 5000, 1_000_000, "max_size_cycle", 0.0),
    "pretrain3": ((256,), 128, (10, 4, 10), 2e-5, 5000, 50_000, "max_size_cycle", 0.0),
    "tune1": ((256, 512), 381, None, 2e-5, 1000, None, "min_size", 0.0),
    "tune2": ((256, 512), 381, None, 5e-5, 1000, None, "min_size", 0.0),
}
# Instruction tuning differs by resolution: per-device batches and steps (SPEC §10 table).
_TUNE = {("tune1", 256): ((4, 2, 7), 10_000), ("tune2", 256): ((4, 2, 6), 14_000),
         ("tune1", 512): ((5, 2, 5), 14_000), ("tune2", 512): ((5, 2, 5), 16_000)}


def get_config(arg: str = ""):
  args = config_base.parse_arg(arg, stage="pretrain1", res=256, devices=48)
  if args.stage not in _STAGES:
    raise config_base.ConfigError(f"unknown stage {args.stage!r}; known: {', '.join(_STAGES)}")
  res_ok, text_len, batches, lr, warmup, steps, mode, cfg_scale = _STAGES[args.stage]
  if args.res not in res_ok:
    raise config_base.ConfigError(f"stage {args.stage} is trained at {res_ok[0]} only, not res={args.res}")
  if batches is None:
    batches, steps = _TUNE[(args.stage, args.res)]
  c = showo_config.showo_config("phi-1.5", res=args.res)
  c.data.max_text_len = text_len  # 387-token sequences for pretraining, 640 / 1408 for instruction tuning
  c.data.loader_mode = mode
  c.train.update(steps=steps, batch_t2i=batches[0] * args.devices, batch_lm=batches[1] * args.devices,
                 batch_mmu=batches[2] * args.devices, checkpoint_every=5000, log_every=50, sample_every=10_000,
                 seed=10086)
  c.train.sample_guidance = cfg_scale
  c.train.sample_steps = 12
  c.optimizer.update(lr=lr, warmup_steps=warmup, final_lr_fraction=0.0, b1=0.9, b2=0.999, eps=1e-8,
                     weight_decay=0.01, weight_decay_mask="official", grad_clip_norm=1.0)
  c.model.update(dtype="bfloat16", param_dtype="float32", scan_layers=True, remat_policy="save_dots")
  c.mesh.update(data=1, fsdp=-1, tensor=1)  # ZeRO-like: params, grads and Adam moments sharded over all devices
  return c
