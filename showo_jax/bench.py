"""Benchmarks: `python -m showo_jax.bench train|data [--steps N] [--json OUT]`.

train: the float32 matmul peak of this machine, then for the tiny and the medium config (phi, width 512, 8 layers,
  8 heads, MLP 2048, text vocab 1,000 + codebook 8,192, 64 text + 256 image tokens → L = 323, batch t2i/lm/mmu
  4/2/2), in float32 and with bfloat16 compute (float32 params): median step time, tokens/s, MFU against the
  measured peak, and peak memory.
data: batches/s of each task's input pipeline (embedded data) against the tiny config's step rate.
Medians over `--steps` timed steps after warm-up; every figure names the machine it ran on.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time

import jax
import numpy as np

from showo_jax import config_lib
from showo_jax import sharding
from showo_jax.training import flops as flops_lib


def machine() -> str:
  dev = jax.devices()[0]
  return f"{dev.platform}:{dev.device_kind} x{jax.device_count()}, {os.cpu_count()} cpus, {platform.processor()}"


def medium_config():
  c = config_lib.showo_config("tiny")
  m = c.model
  m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.intermediate_size = 512, 8, 8, 8, 2048
  m.vocab.update(llm_vocab_size=1000, codebook_size=8192, bos_id=999, eos_id=999)
  m.vocab_size = 1000 + 10 + 8192 + 1
  c.data.update(num_image_tokens=256, max_text_len=64)
  c.train.update(batch_t2i=4, batch_lm=2, batch_mmu=2)
  return config_lib.validate(c)


def tiny_config():
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.py")
  if os.path.exists(path):
    spec = importlib.util.spec_from_file_location("tiny_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
  return config_lib.showo_config("tiny")


def _peak_memory_bytes() -> float:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return float(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # CPU: the process's peak resident set


def _random_batch(config, rng):
  from showo_jax.models import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  layout = vocab_lib.VocabLayout.from_config(config)
  t = config.train
  rows, length = t.batch_t2i + t.batch_lm + t.batch_mmu, config_lib.seq_len(config)
  ids = rng.integers(0, layout.llm_vocab_size, (rows, length)).astype(np.int32)
  n, tl = config.data.num_image_tokens, config.data.max_text_len
  ids[:t.batch_t2i, tl + 1] = layout.soi_id
  ids[:t.batch_t2i, tl + 2:tl + 2 + n] = rng.integers(layout.image_offset, layout.mask_id + 1, (t.batch_t2i, n))
  ids[:t.batch_t2i, -1] = layout.eoi_id
  labels = np.where(rng.random(ids.shape) < 0.5, ids, -100).astype(np.int32)
  tasks = np.repeat(np.array([0, 1, 2], np.int32), [t.batch_t2i, t.batch_lm, t.batch_mmu])
  return {"input_ids": ids, "labels": labels, "task_ids": tasks}


def bench_train_step(config, steps: int, peak: float) -> dict:
  from showo_jax.training import trainer  # pylint: disable=g-import-not-at-top
  config.mesh.update(data=1, fsdp=1, tensor=1)
  run = trainer.Run(config, mesh=sharding.make_mesh(config.mesh, jax.devices()[:1]))
  state = run.init_state(0)
  batch = _random_batch(config, np.random.default_rng(0))
  rng = jax.random.key(0)
  t0 = time.perf_counter()
  state, metrics = run.step(state, batch, rng)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = run.step(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  tokens = batch["input_ids"].size
  flops = flops_lib.train_flops_per_step(config)
  return {"step_time_s": step_s, "tokens_per_s": tokens / step_s, "tflops_per_s": flops / step_s / 1e12,
          "mfu": flops / step_s / peak, "peak_memory_gb": _peak_memory_bytes() / 2**30, "compile_s": compile_s,
          "loss": float(metrics["loss"]), "steps_timed": steps}


def cmd_train(args) -> dict:
  peak = flops_lib.measure_matmul_peak()
  out = {"machine": machine(), "f32_matmul_peak_tflops": peak / 1e12, "results": {}}
  print(f"machine: {out['machine']}\nfloat32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
  for name, make in (("tiny", tiny_config), ("medium", medium_config)):
    for dtype in ("float32", "bfloat16"):
      config = make()
      config.model.dtype = dtype
      r = bench_train_step(config, args.steps, peak)
      out["results"][f"{name}/{dtype}"] = r
      print(f"{name:6s} {dtype:8s} step {r['step_time_s'] * 1e3:8.1f} ms  {r['tokens_per_s']:9.0f} tok/s  "
            f"MFU {100 * r['mfu']:5.1f}% of the f32 peak  peak mem {r['peak_memory_gb']:.2f} GB")
    f32, bf16 = out["results"][f"{name}/float32"], out["results"][f"{name}/bfloat16"]
    print(f"{name:6s} bf16 speed-up over f32: {f32['step_time_s'] / bf16['step_time_s']:.2f}x")
  return out


def cmd_data(args) -> dict:
  from showo_jax.data import pipeline, prepare  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  workdir = args.workdir or tempfile.mkdtemp(prefix="showo_bench_")
  data = prepare.prepare_training_data(config, workdir)
  out = {"machine": machine(), "workdir": workdir, "batches_per_s": {}}
  sizes = {"t2i": config.train.batch_t2i, "lm": config.train.batch_lm, "mmu": config.train.batch_mmu}
  datasets = pipeline.task_datasets(data.sources, sizes, data.text_tokenizer, data.layout, config, seed=0)
  for task, ds in datasets.items():
    it = iter(ds)
    next(it)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      next(it)
    out["batches_per_s"][task] = args.steps / (time.perf_counter() - t0)
    print(f"{task:4s} pipeline: {out['batches_per_s'][task]:8.1f} batches/s")
  step = bench_train_step(config, max(3, args.steps // 10), flops_lib.measure_matmul_peak())
  out["train_steps_per_s"] = 1.0 / step["step_time_s"]
  print(f"tiny train step: {out['train_steps_per_s']:.1f} steps/s (each pipeline must exceed this)")
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m showo_jax.bench", description=__doc__.split("\n")[0])
  parser.add_argument("what", choices=["train", "data"])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--json", default="", help="also write the figures to this file")
  parser.add_argument("--workdir", default="", help="data: where the embedded data is prepared (reused)")
  args = parser.parse_args(argv)
  out = {"train": cmd_train, "data": cmd_data}[args.what](args)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
