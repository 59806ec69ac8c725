"""The benchmarks behind `python -m showo_jax.bench` (showo_jax/bench.py, whose docstring says what each measures):
one `cmd_<name>(args) -> dict` per subcommand; every figure names the machine it ran on.
"""

import json
import os
import platform
import resource
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.common import peak as peak_lib
from showo_jax.common import sharding
from showo_jax.common import xla_options
from showo_jax.config import base as config_base
from showo_jax.config import showo as showo_config
from showo_jax.training import flops as flops_lib

_PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


# The CPU features that decide which matmul units XLA:CPU can use.
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16")


def cpu_model() -> str:
  """"MODEL (family F model M; flags ...)" from /proc/cpuinfo (platform.processor() elsewhere)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:  # a system file, not a user path
      text = f.read()
  except OSError:
    return platform.processor() or "unknown CPU"
  fields = {}
  for line in text.splitlines():
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())
  flags = set(fields.get("flags", "").split())
  have = " ".join(f for f in _CPU_FLAGS if f in flags) or "none of " + " ".join(_CPU_FLAGS)
  return (f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')} model "
          f"{fields.get('model', '?')}; {have})")


def machine() -> str:
  dev = jax.devices()[0]
  return f"{dev.platform}:{dev.device_kind} x{jax.device_count()}, {os.cpu_count()} cpus, {cpu_model()}"


def medium_config():
  c = showo_config.showo_config("tiny")
  m = c.model
  m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.intermediate_size = 512, 8, 8, 8, 2048
  m.vocab.update(llm_vocab_size=1000, codebook_size=8192, bos_id=999, eos_id=999)
  m.vocab_size = 1000 + 10 + 8192 + 1
  c.data.update(num_image_tokens=256, max_text_len=64)
  c.train.update(batch_t2i=4, batch_lm=2, batch_mmu=2)
  return showo_config.validate(c)


def official_config():
  """The official 1.3B model (phi-1.5 at 256 px, L = 387) at batch t2i/lm/mmu 8/4/4: an accelerator-sized step."""
  c = showo_config.showo_config("phi-1.5")
  c.train.update(batch_t2i=8, batch_lm=4, batch_mmu=4)
  c.model.scan_layers = True  # one compiled layer: minutes less compilation, the same step
  return showo_config.validate(c)


def tiny_config():
  path = os.path.join(_PROJECT, "configs", "tiny.py")
  if os.path.exists(path):
    return config_base.load_config_file(path)
  return showo_config.showo_config("tiny")


def _peak_memory_bytes() -> float:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return float(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # CPU: the process's peak resident set


def _random_batch(config, rng):
  layout = showo_config.vocab_layout(config)
  t = config.train
  rows, length = t.batch_t2i + t.batch_lm + t.batch_mmu, showo_config.seq_len(config)
  ids = rng.integers(0, layout.llm_vocab_size, (rows, length)).astype(np.int32)
  n, tl = config.data.num_image_tokens, config.data.max_text_len
  ids[:t.batch_t2i, tl + 1] = layout.soi_id
  ids[:t.batch_t2i, tl + 2:tl + 2 + n] = rng.integers(layout.image_offset, layout.mask_id + 1, (t.batch_t2i, n))
  ids[:t.batch_t2i, -1] = layout.eoi_id
  labels = np.where(rng.random(ids.shape) < 0.5, ids, -100).astype(np.int32)
  tasks = np.repeat(np.array([0, 1, 2], np.int32), [t.batch_t2i, t.batch_lm, t.batch_mmu])
  return {"input_ids": ids, "labels": labels, "task_ids": tasks}


# Matmul peaks reported beside the results, for reference: (operand dtype, result dtype). A row's MFU is against
# common/peak.py's choice for its dtype and precision, the trainer's denominator.
PEAKS = {"float32": ("float32", "float32"), "bfloat16->float32": ("bfloat16", "float32"),
         "bfloat16": ("bfloat16", "bfloat16")}


def _measured_peak(operands: str, out: str, repeats: int = 5) -> float:
  """Median FLOP/s of `operands` × `operands` → `out` products on the first device (peak_lib's product)."""
  device = jax.local_devices()[0]
  size = peak_lib.default_size(device)
  a = jax.device_put(jnp.ones((size, size), jnp.dtype(operands)), device)
  f = peak_lib.matmul(out_dtype=jnp.dtype(out))
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2.0 * size**3 / statistics.median(times)


def _step_peak(config, devices) -> peak_lib.Peak:
  return peak_lib.choose(devices, config.model.dtype, config.model.get("matmul_precision", "default"))


def bench_train_step(config, steps: int) -> dict:
  """Median step time etc.; MFU against the step's peak (common/peak.py, as the trainer's), re-measured
  between the timed steps where it is measured.

  Other processes on a shared CPU change the share of it this process gets from minute to minute, so the
  step times are set against peak samples taken between them (`mfu`); `mfu_vs_start_peak` uses the single
  sample taken before the first timed step.
  """
  from showo_jax.training import trainer  # pylint: disable=g-import-not-at-top
  config.mesh.update(data=1, fsdp=1, tensor=1)
  devices = jax.devices()[:1]
  run = trainer.Run(config, mesh=sharding.make_mesh(config.mesh, devices))
  state = run.init_state(0)
  batch = _random_batch(config, np.random.default_rng(0))
  rng = jax.random.key(0)
  peak = _step_peak(config, devices)
  sample_peak = peak_lib.sampler(peak, devices[0])
  t0 = time.perf_counter()
  state, metrics = run.step(state, batch, rng)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  times, peaks = [], [sample_peak()]
  load = os.getloadavg()[0]
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = run.step(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    peaks.append(sample_peak())
  step_s = statistics.median(times)
  local_peak = statistics.median(peaks) * peak.chips
  tokens = batch["input_ids"].size
  flops = flops_lib.train_flops_per_step(config)
  return {"step_time_s": step_s, "tokens_per_s": tokens / step_s, "tflops_per_s": flops / step_s / 1e12,
          "mfu": flops / step_s / local_peak, "mfu_vs_start_peak": flops / step_s / (peaks[0] * peak.chips),
          "mfu_peak": peak.source, "peak_tflops_interleaved": local_peak / 1e12,
          "load_average": (load + os.getloadavg()[0]) / 2,
          "peak_memory_gb": _peak_memory_bytes() / 2**30, "compile_s": compile_s,
          "loss": float(metrics["loss"]), "steps_timed": steps}


def cmd_train(args) -> dict:
  peaks = {name: _measured_peak(d, o) for name, (d, o) in PEAKS.items()}
  out = {"machine": machine(), "f32_matmul_peak_tflops": peaks["float32"] / 1e12, "results": {}}
  print(f"machine: {out['machine']}")
  for name, peak in peaks.items():
    out[f"{name.replace('->', '_to_')}_matmul_peak_tflops"] = peak / 1e12
    print(f"{name} matmul peak: {peak / 1e9:.1f} GFLOP/s")
  makers = {"tiny": tiny_config, "medium": medium_config, "official": official_config}
  for name in args.sizes.split(","):
    if name not in makers:
      raise SystemExit(f"error: --sizes: unknown config {name!r}; known: {', '.join(makers)}")
    make = makers[name]
    for dtype in ("float32", "bfloat16"):
      config = make()
      config.model.update(dtype=dtype, activation_dtype=args.activations,
                          attention_impl=args.attention)
      r = bench_train_step(config, args.steps)
      r.update(activations=showo_config.activation_dtype(config.model), attention=config.model.attention_impl)
      out["results"][f"{name}/{dtype}"] = r
      print(f"{name:6s} {dtype:8s} step {r['step_time_s'] * 1e3:8.1f} ms  {r['tokens_per_s']:9.0f} tok/s  "
            f"MFU {100 * r['mfu']:5.1f}% of the peak ({r['mfu_peak']}: {r['peak_tflops_interleaved'] * 1e3:.1f} "
            f"GFLOP/s between steps; {100 * r['mfu_vs_start_peak']:.1f}% of the start peak)  "
            f"peak mem {r['peak_memory_gb']:.2f} GB  load {r['load_average']:.1f}")
    f32, bf16 = out["results"][f"{name}/float32"], out["results"][f"{name}/bfloat16"]
    print(f"{name:6s} bf16 speed-up over f32: {f32['step_time_s'] / bf16['step_time_s']:.2f}x")
  return out


def _medium_data(config, folder: str):
  """Sources and text tokenizer shaped for the medium config: records of 256 image tokens (8,192 codes) with a
  caption and a two-turn LLaVA conversation (so mmu runs the llava prompt path), and the embedded documents."""
  from showo_jax.data import embedded, records, text_tokenizer  # pylint: disable=g-import-not-at-top
  layout = showo_config.vocab_layout(config)
  tok_path = os.path.join(folder, f"text_tokenizer_{layout.llm_vocab_size}.json")
  if not os.path.exists(tok_path):
    embedded.train_text_tokenizer(tok_path, vocab_size=layout.llm_vocab_size)
  docs = embedded.load_text("train")
  images, text = os.path.join(folder, "medium_images"), os.path.join(folder, "medium_text")
  rng = np.random.default_rng(0)
  if not os.path.exists(os.path.join(images, records.META)):
    records.write_records(images, ({
        "image_tokens": rng.integers(0, layout.codebook_size, config.data.num_image_tokens).astype(np.int16),
        "caption": docs[i % len(docs)][:300],
        "conversation": json.dumps([[f"What is in picture {i}?", docs[i % len(docs)][:200]],
                                    ["And then?", docs[(i + 1) % len(docs)][:100]]]),
    } for i in range(512)))
  if not os.path.exists(os.path.join(text, records.META)):
    records.write_records(text, ({"text": d} for d in docs))
  image_source = records.RecordSource(images)
  sources = {"t2i": image_source, "mmu": image_source, "lm": records.RecordSource(text)}
  return sources, text_tokenizer.TextTokenizer(tok_path, layout), layout


def cmd_data(args) -> dict:
  """Batches/s of each task pipeline against the train step rate, for the tiny and the medium config."""
  from showo_jax.data import pipeline
  from showo_jax.training import prepare  # pylint: disable=g-import-not-at-top
  workdir = args.workdir or tempfile.mkdtemp(prefix="showo_bench_")
  out = {"machine": machine(), "workdir": workdir}
  print(f"machine: {out['machine']}")
  for name, make in (("tiny", tiny_config), ("medium", medium_config)):
    config = make()
    if name == "tiny":  # the embedded default (MNIST digits, news text)
      data = prepare.prepare_training_data(config, workdir)
      sources, tok, layout = data.sources, data.text_tokenizer, data.layout
    else:
      sources, tok, layout = _medium_data(config, workdir)
    sizes = {"t2i": config.train.batch_t2i, "lm": config.train.batch_lm, "mmu": config.train.batch_mmu}
    rates = {}
    for task, ds in pipeline.task_datasets(sources, sizes, tok, layout, config, seed=0).items():
      # Timed from the start over enough batches to amortise it: a warm iterator would drain grain's prefetch
      # buffer instead of measuring the sustained rate.
      n = max(100, args.steps)
      t0 = time.perf_counter()
      it = iter(ds)
      for _ in range(n):
        next(it)
      rates[task] = n / (time.perf_counter() - t0)
    step_rate = 1.0 / bench_train_step(config, max(3, args.steps // 10))["step_time_s"]
    together = 1.0 / sum(1.0 / r for r in rates.values())  # one process builds all three per step
    out[name] = {"batches_per_s": rates, "train_steps_per_s": step_rate, "data_steps_per_s": together}
    for task, r in rates.items():
      print(f"{name:6s} {task:4s} pipeline {r:8.1f} batches/s")
    verdict = "feeds it" if together > step_rate else "STALLS it"
    print(f"{name:6s} all tasks {together:8.1f} steps/s of data vs {step_rate:.1f} train steps/s: {verdict} "
          f"({together / step_rate:.1f}x)", flush=True)
  return out


SHAPES = os.path.join(os.path.dirname(_PROJECT), "shared", "parity", "param_shapes_full.json")


def _run_measured(argv) -> tuple[float, float]:
  """(peak resident bytes, seconds) of one child process; raises if it fails."""
  import subprocess  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  proc = subprocess.Popen(argv, env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu")))
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}")
  return usage.ru_maxrss * 1024.0, time.perf_counter() - t0


def cmd_convert(args) -> dict:
  import shutil  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from showo_jax.interop import streaming  # pylint: disable=g-import-not-at-top
  with open(args.shapes) as f:
    shapes = {k: tuple(v) for k, v in json.load(f)["show-o (256x256, num_vq_tokens=256)"].items()}
  if args.layers:
    shapes = {k: v for k, v in shapes.items()
              if not k.startswith("showo.model.layers.") or int(k.split(".")[3]) < args.layers}
  workdir = args.workdir or tempfile.mkdtemp(prefix="showo_bench_convert_")
  src, ckpt, exported = (os.path.join(workdir, n) for n in ("official", "ckpt", "exported"))
  for path in (src, ckpt, exported):
    shutil.rmtree(path, ignore_errors=True)
  os.makedirs(src)
  rng = np.random.default_rng(0)
  specs = [(k, (v, np.float32)) for k, v in sorted(shapes.items())]
  t0 = time.perf_counter()
  weights = os.path.join(src, "pytorch_model.safetensors")
  # Generated one tensor at a time, so this process stays small while writing.
  streaming.write_safetensors(weights, specs, ((k, rng.random(v, np.float32) - 0.5) for k, (v, _) in specs))
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump({"_class_name": "Showo", "codebook_size": 8192, "llm_model_path": "microsoft/phi-1_5",
               "llm_vocab_size": 50295, "load_from_showo": True, "mask_token_id": 58497, "num_vq_tokens": 256,
               "vocab_size": 58498, "w_clip_vit": False}, f)
  size = float(os.path.getsize(weights))
  out = {"machine": machine(), "workdir": workdir, "tensors": len(specs), "checkpoint_bytes": size,
         "write_s": time.perf_counter() - t0}
  print(f"synthetic checkpoint: {len(specs)} tensors, {size / 1e9:.2f} GB ({out['write_s']:.0f} s)")
  cli = [sys.executable, "-m", "showo_jax.convert"]
  for name, argv in (("import", cli + ["import", "--input", src, "--output", ckpt]),
                     ("export", cli + ["export", "--checkpoint", ckpt, "--output", exported])):
    peak, seconds = _run_measured(argv)
    out[name] = {"peak_rss_bytes": peak, "ratio_to_checkpoint": peak / size, "seconds": seconds}
    print(f"convert {name}: peak RSS {peak / 1e9:.2f} GB = {peak / size:.2f}x the checkpoint, {seconds:.0f} s")
  if not args.keep:
    shutil.rmtree(workdir, ignore_errors=True)
  return out


def _time_into(out: dict, name: str, fn, params, x, repeats: int):
  """Compiles and times fn(params, x); records NAME_compile_s and NAME_images_per_s; returns the result."""
  t0 = time.perf_counter()
  result = jax.block_until_ready(fn(params, x))
  out[f"{name}_compile_s"] = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, x))
    times.append(time.perf_counter() - t0)
  out[f"{name}_images_per_s"] = x.shape[0] / statistics.median(times)
  return result


def bench_tokenizer_size(size: str, batch: int, repeats: int) -> dict:
  from showo_jax.tokenizer import config as tokenizer_config  # pylint: disable=g-import-not-at-top
  from showo_jax.tokenizer import magvit  # pylint: disable=g-import-not-at-top
  config = tokenizer_config.magvit_config(size)
  res = int(config.resolution)  # tiny: the embedded default's 32 px digits; official: 256 px
  model = tokenizer_config.magvit_from_config(config)
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, res, res, 3)), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
  grid = res // tokenizer_config.downsample_factor(config)
  encode_fn = lambda p, x: model.apply({"params": p}, x, method=magvit.MagvitV2.encode)[2].reshape(batch, -1)
  decode_fn = lambda p, i: model.apply({"params": p}, i, (grid, grid), method=magvit.MagvitV2.decode_indices)
  out = {"resolution": res, "batch": batch, "tokens_per_image": grid * grid}
  # The project's options (common/xla_options.py), then XLA's defaults for comparison.
  for suffix, options in (("", xla_options.conv_net()), ("_xla_defaults", {})):
    encode = jax.jit(encode_fn, compiler_options=options)
    decode = jax.jit(decode_fn, compiler_options=options)
    indices = _time_into(out, "encode" + suffix, encode, params, images, repeats)
    _time_into(out, "decode" + suffix, decode, params, indices, repeats)
    if not options:
      break
  out["peak_memory_gb"] = _peak_memory_bytes() / 2**30
  return out


def cmd_tokenizer(args) -> dict:
  out = {"machine": machine(), "load_average": os.getloadavg()[0], "results": {}}
  print(f"machine: {out['machine']}, load average {out['load_average']:.1f}")
  for size in ("tiny", "official"):
    r = bench_tokenizer_size(size, 8, max(1, args.steps // (1 if size == "tiny" else 3)))
    out["results"][size] = r
    print(f"{size:8s} {r['resolution']}px batch {r['batch']}: encode {r['encode_images_per_s']:8.1f} img/s  "
          f"decode {r['decode_images_per_s']:8.1f} img/s  peak mem {r['peak_memory_gb']:.2f} GB "
          f"(process, cumulative)", flush=True)
    if "encode_xla_defaults_images_per_s" in r:
      print(f"{'':8s} with XLA's default library fusions: encode {r['encode_xla_defaults_images_per_s']:8.1f} "
            f"img/s  decode {r['decode_xla_defaults_images_per_s']:8.1f} img/s", flush=True)
  return out


def cmd_sample(args) -> dict:
  from showo_jax.tools import bench_sample  # pylint: disable=g-import-not-at-top
  out = {"machine": machine(), "load_average": os.getloadavg(), "results": {}}
  print(f"machine: {out['machine']}, load average {out['load_average'][0]:.1f}")
  for name, make in (("tiny", tiny_config), ("medium", medium_config)):
    r = bench_sample.bench_config(make(), repeats=args.steps, batch_repeats=max(1, args.steps // 3))
    out["results"][name] = r
    print("\n".join(bench_sample.report_lines(name, r)), flush=True)
  out["load_average_end"] = os.getloadavg()
  return out
