"""The embedded fine-tuning demo: LoRA teaches the main job's model a task it never saw, on CPU in minutes.

  python -m showo_jax.train --config configs/tiny_finetune.py:base=runs/tiny --workdir runs/tiny_sideways
  python -m showo_jax.evaluate --workdir runs/tiny_sideways

`base` is the main job's workdir (configs/tiny.py, the same `seed`): its params (`train.init_from`), image
tokenizer and text BPE. The new task: digits turned 90° clockwise, captioned "a handwritten digit seven on its
side", and the question "Is this digit on its side?" (yes for turned digits, no for upright ones); see
data/embedded.py for why 90° and not 180°. Only rank-16 adapters on every projection train; the default tasks
stay in the mix (a quarter of the t2i rows, a third of the mmu rows) so that the base task is kept. `evaluate` reports
the new task (sideways_*) beside the base figures on the held-out validation and test digits.
"""

import os

from showo_jax.config import base as config_base


def get_config(arg: str = ""):
  args = config_base.parse_arg(arg, base="runs/tiny", steps=0, seed=0, rank=16)
  here = os.path.dirname(os.path.abspath(__file__))
  c = config_base.load_config_file(os.path.join(here, "tiny.py") + f":seed={args.seed}")  # the base architecture
  c.train.init_from = args.base
  c.tokenizer.checkpoint = os.path.join(args.base, "tokenizer")
  c.text_tokenizer.path = os.path.join(args.base, "text_tokenizer.json")
  c.data.embedded_task = "sideways"
  # "USER: \nIs this digit on its side? ASSISTANT: yes" is 17 BPE ids, 19 with BOS and EOS: the base's 16 would
  # cut the answer off (the first trial answered nothing else).
  c.data.max_text_len = 20
  c.model.lora.update(rank=args.rank, alpha=2.0 * args.rank, dropout=0.0, targets="q,k,v,o,fc1,fc2")
  c.train.trainable = "lora"
  # Rows per step as many as the base's (40), more of them t2i, and 3 in 4 of those turned: images are learnt from
  # far fewer rows than answers. Validation (base: the main job with dropout 0.1, seed 0): rank 8, lr 3e-3, 16/2/22
  # rows (t2i half turned), 1,500 steps gave sideways MMU 94.8 % but sideways T2I 48.5 %; 4/2/34 rows, lr 2e-3,
  # 1,000 steps 26 %. On the 2026-12-06 EPYC (family 25 model 17), base val MMU 93.4 / T2I 97.0 %: these settings
  # (rank 16, lr 4e-3, 24/2/14 rows, 3:1 turned, 2,000 steps) gave sideways MMU 95.2 %, sideways T2I 88.0 %, base
  # MMU 93.6 %, base T2I 81.5 %; 32 t2i rows 1:1 × 3,000 steps sideways T2I 86.0 %, base T2I 89.0 %; the same
  # settings with 3,000 steps (the final choice) sideways MMU 95.5 %, sideways T2I 89.5 %, base MMU 93.4 %, base
  # T2I 78.0 %.
  c.data.update(t2i_weights="3,1", mmu_weights="1,1,1")  # [turned, default]; [turned, upright asked, default]
  c.train.update(steps=args.steps or 3000, batch_t2i=24, batch_lm=2, batch_mmu=14, checkpoint_every=500,
                 sample_every=500)
  c.optimizer.update(lr=4e-3, warmup_steps=50, final_lr_fraction=0.1, weight_decay=0.0)
  # The figures above were measured with dropout 0.1 in the fine-tuning run, on a base trained with the main
  # job's settings until 2026-12-07 (dropout 0.1, weight decay 0.01, 4,000 steps); keep the dropout they had.
  c.model.dropout_rate = 0.1
  c.train.sample_guidance = 2.0  # and the guidance they were evaluated with (the main job's was 2 then, 4 since)
  return c
