"""MFU: one peak (common/peak.py) for the trainer and the bench that counts the chips, the compute dtype, the
matmul precision and the platform; a FLOPs count whose attention is what the configured kernel computes (flash
skips key blocks, counted by hand here). No compilation: fake devices and numpy."""

import types

import numpy as np
import pytest

from showo_jax.common import peak as peak_lib
from showo_jax.config import showo as showo_config
from showo_jax.models import omni_mask
from showo_jax.tools import bench
from showo_jax.training import flops
from showo_jax.training import trainer

H100 = "NVIDIA H100 80GB HBM3"


def _devices(n, platform="gpu", kind=H100, processes=1):
  return [types.SimpleNamespace(platform=platform, device_kind=kind, process_index=i % processes) for i in range(n)]


def _config(**model):
  config = showo_config.showo_config("tiny")  # L = 16 text + 64 image + 3 = 83
  config.model.update(**model)
  return config


def test_mfu_of_n_devices_is_one_nth_for_the_same_global_batch_and_step_time():
  config = _config(dtype="bfloat16")
  flops_per_step = flops.train_flops_per_step(config)
  mfu = {}
  for n in (1, 8):
    clock = trainer.StepClock(0, 10.0, 1000, flops_per_step, trainer._peak_flops(config, _devices(n)))  # pylint: disable=protected-access
    mfu[n] = clock.rates(2, 10.5)["mfu"]
  assert mfu[8] == pytest.approx(mfu[1] / 8, rel=1e-12)
  assert mfu[1] == pytest.approx(flops_per_step / 0.25 / 989.5e12, rel=1e-12)  # H100 bf16, 0.25 s per step
  # A configured peak is per chip too.
  config.train.peak_tflops_per_device = 100.0
  assert trainer._peak_flops(config, _devices(8)) == 8 * 100e12  # pylint: disable=protected-access
  # CPU devices of one process share its cores: one chip; of two processes, two.
  assert peak_lib.chips(_devices(8, "cpu", "cpu")) == 1
  assert peak_lib.chips(_devices(8, "cpu", "cpu", processes=2)) == 2
  assert trainer._peak_flops(config, _devices(8, "cpu", "cpu")) == 100e12  # pylint: disable=protected-access


def test_clock_averages_over_the_steps_since_the_last_read():
  clock = trainer.StepClock(step=4, time=1.0, tokens_per_step=100, flops_per_step=1e9, peak_flops=1e10)
  rates = clock.rates(7, 4.0)  # 3 steps in 3 s
  assert rates == {"step_time_s": 1.0, "tokens_per_s": 100.0, "mfu": 0.1}
  assert (clock.step, clock.time) == (7, 4.0)


@pytest.mark.parametrize("kind, default, highest, bf16", [
    (H100, 494.5, 67.0, 989.5), ("NVIDIA A100-SXM4-80GB", 156.0, 19.5, 312.0),
    ("NVIDIA H100 PCIe", 378.0, 51.0, 756.0)])
def test_gpu_peak_follows_dtype_and_precision(kind, default, highest, bf16):
  """float32 at precision default (and high) runs as TF32 on these GPUs, at highest as FP32; bf16 is bf16."""
  one = _devices(1, kind=kind)
  pick = lambda dtype, precision: peak_lib.choose(one, dtype, precision).per_chip / 1e12
  assert (pick("float32", "default"), pick("float32", "high"), pick("float32", "highest")) == (default, default,
                                                                                               highest)
  assert pick("bfloat16", "default") == pick("bfloat16", "highest") == bf16


def test_unknown_accelerators_are_measured_at_the_steps_precision():
  for devices in (_devices(4, kind="NVIDIA Tesla V100"), _devices(4, "tpu", "TPU v5 lite")):
    peak = peak_lib.choose(devices, "float32", "highest")
    assert (peak.per_chip, peak.chips, peak.operands, peak.precision) == (0.0, 4, "float32", "highest")
  with pytest.raises(ValueError, match="'fast' is not one of"):
    peak_lib.choose(_devices(1), "float32", "fast")


@pytest.mark.parametrize("units, operands", [("0", "float32"), ("1", "bfloat16")])
def test_bench_and_trainer_measure_the_same_product_on_cpu(monkeypatch, units, operands):
  """A CPU without bf16 units runs bf16 products as f32 (the operands widened): its peak is f32's, for both."""
  monkeypatch.setenv("SHOWO_CPU_BF16_UNITS", units)
  config = _config(dtype="bfloat16")
  cpu = _devices(8, "cpu", "cpu")
  assert bench._step_peak(config, cpu) == peak_lib.choose(cpu, "bfloat16", "default")  # pylint: disable=protected-access
  assert peak_lib.choose(cpu, "bfloat16").operands == operands
  assert peak_lib.choose(cpu, "float32").operands == "float32"


def test_flash_counts_the_key_blocks_it_visits():
  # Causal, 16 tokens in blocks of 4: query block i visits key blocks 0..i, 1 + 2 + 3 + 4 = 10 blocks of 4 × 4.
  assert flops.flash_score_pairs(omni_mask.causal_spans(1, 16), 4).tolist() == [10 * 16]
  # 10 tokens: padded to 12; the last query block (rows 8-11, padded rows see themselves) visits 3 blocks.
  assert flops.flash_score_pairs(omni_mask.causal_spans(1, 10), 4).tolist() == [(1 + 2 + 3) * 16]
  # Rows whose ranges start late skip the first blocks: rows 8-15 see [8, i].
  s = omni_mask.causal_spans(1, 16)
  late = omni_mask.Spans(s.start.at[:, 8:].set(8), s.end, s.skip_pad, s.key_pad)
  assert flops.flash_score_pairs(late, 4).tolist() == [(1 + 2 + 1 + 2) * 16]


def test_flash_flops_are_below_xla_and_equal_a_hand_count():
  """tiny config, blocks of 8: L = 83 is padded to 88, 11 query blocks; key blocks visited (by hand, from the
  rows each task lays out):
    lm   causal: 1 + 2 + ... + 11 = 66
    t2i  text rows 0-16 causal, rows 17-82 (<|soi|>, image, <|eoi|>) see all 83 keys (blocks 0-10): blocks 0
         and 1 visit 1 and 2, blocks 2-10 all 11 (block 10 holds padded rows): 1 + 2 + 9 × 11 = 102
    mmu  rows 0-66 (<|mmu|>, <|soi|>, image, <|eoi|>) see keys 0-66 (9 blocks), then causal: blocks 0-8 visit 9,
         blocks 9 and 10 visit 10 and 11: 9 × 9 + 10 + 11 = 102
  """
  xla, flash = _config(attention_impl="xla"), _config(attention_impl="flash", attention_block=8)
  blocks = {"lm": 66, "t2i": 102, "mmu": 102}
  assert flops.score_pairs(flash) == {task: n * 64 for task, n in blocks.items()}
  assert flops.score_pairs(xla) == {task: 83 * 83 for task in blocks}
  m, t = flash.model, flash.train
  per_pair = 3 * 2 * 2 * m.num_layers * m.num_heads * showo_config.head_dim(m)  # train = 3 × forward; q·k, p·v
  rows = {"t2i": t.batch_t2i, "lm": t.batch_lm, "mmu": t.batch_mmu}
  skipped = sum(rows[task] * (83 * 83 - n * 64) for task, n in blocks.items())
  assert flops.train_flops_per_step(xla) - flops.train_flops_per_step(flash) == pytest.approx(skipped * per_pair,
                                                                                              rel=1e-12)
  assert flops.train_flops_per_step(flash) < flops.train_flops_per_step(xla)
  # The rows are those of the pipeline's layout: <|soi|> and <|eoi|> where prompting puts them.
  layout = showo_config.vocab_layout(flash)
  ids = flops.task_ids(flash)
  assert [int(np.argmax(ids[task][0] == layout.eoi_id)) for task in ("t2i", "mmu")] == [82, 66]
  # blockwise reads every key of each (padded) query block: no block is skipped.
  assert flops.score_pairs(_config(attention_impl="blockwise", attention_block=8))["lm"] == 88 * 83
