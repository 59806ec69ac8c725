"""train_and_evaluate(config, workdir): the Show-o training loop.

Resume order (first that applies): 1. the workdir's latest checkpoint (state + data position); 2.
`config.train.init_from` (params only: one of our checkpoints, or an official Show-o state dict); 3. scratch.
"""

import dataclasses
import functools
import logging
import math
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from showo_jax.common import checkpointing
from showo_jax.common import console
from showo_jax.common import interrupts
from showo_jax.common import metrics as metrics_lib
from showo_jax.common import optimizer as optimizer_lib
from showo_jax.common import paths
from showo_jax.common import peak as peak_lib
from showo_jax.common import sharding
from showo_jax.common import workdir_lock
from showo_jax.config import showo as showo_config
from showo_jax.data import pipeline
from showo_jax.interop import checkpoints
from showo_jax.models import transformer
from showo_jax.training import flops as flops_lib
from showo_jax.training import preflight
from showo_jax.training import prepare
from showo_jax.training import samples
from showo_jax.training import train_step as step_lib
from showo_jax.training import trainable as trainable_lib

# Fields that must agree between a checkpoint and the run resuming it.
_RESUME_FIELDS = ("model.family", "model.hidden_size", "model.num_layers", "model.num_heads", "model.num_kv_heads",
                  "model.intermediate_size", "model.vocab_size", "model.scan_layers", "model.vocab.llm_vocab_size",
                  "model.vocab.codebook_size", "data.max_text_len", "data.num_image_tokens", "train.ema_decay")


def _batch_sizes(config) -> dict:
  return {"t2i": config.train.batch_t2i, "lm": config.train.batch_lm, "mmu": config.train.batch_mmu}


def _bit_layout(config):
  if config.model.get("image_embedding_init", "normal") != "codebook_bits":
    return None
  return showo_config.vocab_layout(config)


class Run:
  """Model, optimizer, shardings and jitted functions of one training run (also used by tests and bench)."""

  def __init__(self, config, mesh=None):
    self.config = config
    self.mesh = mesh or sharding.make_mesh(config.mesh)
    self.rules = sharding.logical_rules(config)
    self.model = transformer.Transformer(showo_config.transformer_config(config))
    self.tx, self.lr_schedule = optimizer_lib.make_optimizer(config.optimizer, config.train.steps)
    self.seq_len = showo_config.seq_len(config)
    rows = sum(_batch_sizes(config).values())
    sharding.check_batch(rows // config.train.grad_accum_steps, self.mesh, "micro-batch (all tasks)")
    trainable = str(config.train.get("trainable", "all"))
    init = functools.partial(step_lib.init_state, model=self.model, tx=self.tx, seq_len=self.seq_len,
                             ema=config.train.get("ema_decay", 0.0) > 0, bit_layout=_bit_layout(config),
                             trainable=trainable)
    with self.scope():
      boxed = jax.eval_shape(init, jax.random.key(0))
      self.trainable_paths = trainable_lib.trainable_paths(boxed.params, trainable)
      self.state_shardings = sharding.logical_shardings(boxed, self.mesh, self.rules)
      self.abstract_state = checkpointing.abstract_with_shardings(step_lib.strip_boxes(boxed), self.state_shardings)
      # What a checkpoint holds (train_step.checkpoint_state): the EMA as a full tree, sharded like the params.
      self.checkpoint_abstract = step_lib.checkpoint_state(self.abstract_state, self.trainable_paths)
      sharding.check_divisible(self.abstract_state.params)
      self._init = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=self.state_shardings)
      batch_sh = sharding.batch_sharding(self.mesh)
      step = step_lib.make_train_step(self.model, self.tx, config, self.lr_schedule, self.trainable_paths)
      self.train_step = jax.jit(step, in_shardings=(self.state_shardings, batch_sh, sharding.replicated(self.mesh)),
                                out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                                donate_argnums=(0,))
      # The step's own gradient function, jitted apart so tests can compare gradients across meshes.
      trained_sh, _ = trainable_lib.split(self.state_shardings.params, self.trainable_paths)
      self._gradients = jax.jit(step_lib.make_gradient_fn(self.model, config, self.trainable_paths),
                                in_shardings=(self.state_shardings.params, batch_sh, sharding.replicated(self.mesh)),
                                out_shardings=(sharding.replicated(self.mesh), trained_sh))

  def scope(self):
    """jax.set_mesh + the logical axis rules, for everything that traces the model."""
    import contextlib  # pylint: disable=g-import-not-at-top
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def init_state(self, seed: int):
    with self.scope():
      return self._init(jax.random.key(seed))

  def step(self, state, local_batch: dict, rng):
    with self.scope():
      return self.train_step(state, sharding.global_batch(local_batch, self.mesh), rng)

  def gradients(self, state, local_batch: dict, rng):
    """(loss terms, grads) that `step` would apply to `state` for this batch and rng (nothing is updated)."""
    with self.scope():
      return self._gradients(state.params, sharding.global_batch(local_batch, self.mesh),
                             jax.random.fold_in(rng, state.step))


def _init_from(run: Run, state, source: str):
  """Replaces the params of a fresh state with those of another checkpoint (params only). LoRA factors the source
  lacks (a base model) keep their fresh values (B = 0: the adapted model starts as the source), and so does an
  image-grid convolution (`model.image_conv`) added on top of an official-architecture source."""
  base = run.config.copy_and_resolve_references()
  if "lora" in base.model:
    base.model.lora.rank = 0
  loaded = flax.traverse_util.flatten_dict(flax.core.unfreeze(checkpoints.load_params(source, base)))
  fresh = flax.traverse_util.flatten_dict(flax.core.unfreeze(state.params))
  extra = sorted("/".join(k) for k in loaded if k not in fresh)
  if extra:
    raise ValueError(f"config.train.init_from={source!r} holds parameters this config has not ({extra[0]}, ...): "
                     f"set config.model (lora, image_conv) like the source's, or merge its adapters (convert export "
                     "--merge-lora)")
  params = flax.traverse_util.unflatten_dict({k: loaded.get(k, v) for k, v in fresh.items()})
  params = jax.device_put(params, run.state_shardings.params)
  ema = None
  if state.ema_params is not None:
    ema = jax.tree.map(jnp.copy, trainable_lib.split(params, run.trainable_paths)[0])
  return state.replace(params=params, ema_params=ema)


def _check_saved_step(ckpt, saved_step: int, device_metrics):
  """Finite params can still be unusable (a huge lr gives 1e29 weights, then a NaN loss): when the step after a
  save has a non-finite loss, that checkpoint is moved aside, so no resume starts from it."""
  loss = float(jax.device_get(device_metrics["loss"]))
  if not math.isfinite(loss):
    ckpt.discard(saved_step, f"its parameters gave loss {loss} at the next step")
    raise metrics_lib.NonFiniteLossError(
        f"loss became {loss} at step {saved_step + 1}: stopping; checkpoint step {saved_step}, whose parameters "
        f"gave it, was moved aside, the newest kept is step {ckpt.latest_step()} (lower the learning rate)")


def _peak_flops(config, devices) -> float:
  """FLOP/s of all the chips among `devices` (the mesh's) on the step's products: the MFU denominator."""
  m = config.model
  return peak_lib.peak_flops(devices, m.dtype, m.get("matmul_precision", "default"),
                             float(config.train.peak_tflops_per_device))


@dataclasses.dataclass
class StepClock:
  """The loop's timing state: the step and time of the last host-metrics read, and the work of one step."""
  step: int
  time: float
  tokens_per_step: int
  flops_per_step: float
  peak_flops: float  # of all the chips (common/peak.py)

  def rates(self, step: int, now: float) -> dict:
    """Step time, tokens/s and MFU averaged over the steps since the last call; then starts from `step`."""
    dt = (now - self.time) / max(step - self.step, 1)
    self.step, self.time = step, now
    return {"step_time_s": dt, "tokens_per_s": self.tokens_per_step / dt,
            "mfu": self.flops_per_step / dt / self.peak_flops}


def check_before_work(config) -> Run:
  """Every check that needs no data, raising before anything is written: the config, the mesh, the batch
  divisibility and the parameter shardings (by building the Run, which is returned), then preflight's paths,
  records and tokenizer."""
  showo_config.validate(config)
  run = Run(config)
  preflight.check_before_work(config)
  return run


def train_and_evaluate(config, workdir: str, run: Run = None):
  """Trains Show-o as configured; returns the host-side metrics (and "step") of the last logged step. `run`:
  check_before_work's result when the caller ran it (the CLI, before it makes the workdir and its log)."""
  run = run or check_before_work(config)
  workdir = paths.resolve(workdir)
  paths.makedirs(workdir)
  # One writer per workdir; from here on Ctrl-C / SIGTERM save what the running phase allows.
  with workdir_lock.WorkdirLock(workdir, "python -m showo_jax.train"), interrupts.handling():
    return _train(run, config, workdir)


def _restore(ckpt, run: Run, config, data_iter):
  """The newest intact checkpoint's step and state (None, None when there is none)."""
  def restore(step):
    checkpointing.check_compatible(ckpt.saved_config(step), config.to_dict(), _RESUME_FIELDS)
    state = ckpt.restore(step, run.checkpoint_abstract, data_iter=data_iter)[0]
    return step_lib.from_checkpoint(state, run.trainable_paths)
  return ckpt.restore_newest_intact(restore, target=run.checkpoint_abstract)


def _train(run: Run, config, workdir: str):
  data = prepare.prepare_training_data(config, workdir)  # tokenizers and pre-tokenized sources
  if interrupts.requested():
    interrupts.stop("the data preparation finished")
  tokens_per_step = sum(_batch_sizes(config).values()) * run.seq_len
  flops_per_step = flops_lib.train_flops_per_step(config)
  peak = _peak_flops(config, run.mesh.devices.flat)

  datasets = pipeline.task_datasets(data.sources, _batch_sizes(config), data.text_tokenizer, data.layout, config,
                                    seed=config.train.seed, process_index=jax.process_index(),
                                    process_count=jax.process_count())
  data_iter = pipeline.MultiTaskIterator(datasets)
  ckpt = checkpointing.Checkpointer(paths.join(workdir, "checkpoints"), max_to_keep=config.train.keep_checkpoints)
  latest, state = _restore(ckpt, run, config, data_iter)
  if latest is not None:
    logging.info("resumed from %s step %d", ckpt.directory, latest)  # the phase line says so too
  else:
    state = run.init_state(config.train.seed)
    if config.train.init_from:
      state = _init_from(run, state, config.train.init_from)
  start = int(jax.device_get(state.step))
  rows = ", ".join(f"{task} {n}" for task, n in _batch_sizes(config).items() if n)
  if start >= config.train.steps:
    console.phase(f"Show-o: {ckpt.directory} is at step {start} >= config.train.steps = {config.train.steps}: "
                  "nothing to train (raise --config.train.steps to continue)")
  else:
    console.phase(f"Show-o: {'resuming at step %d of' % start if start else 'training'} {config.train.steps} steps "
                  f"(rows per step: {rows}) -> {ckpt.directory}")

  staging = paths.Staging(workdir)  # metrics, TensorBoard and train.log (copied up at each save on a bucket)
  writer = metrics_lib.MetricWriter(staging, resume_step=start)
  clock = StepClock(start, time.perf_counter(), tokens_per_step, flops_per_step, peak)

  def host_metrics(step, host):
    del host
    # Read one step late, so the time spans whole steps (dispatch to dispatch).
    return dict(clock.rates(step, time.perf_counter()),
                corrupt_records=float(sum(getattr(s, "num_corrupt", 0) for s in data.sources.values())))

  logger = metrics_lib.BufferedLogger(writer, host_metrics)
  sampler = None
  if config.train.sample_every:
    sampler = samples.SampleWriter(config, data, workdir)
  bar = metrics_lib.progress_bar(config.train.steps, initial=start)
  rng = jax.random.key(config.train.seed)
  final, step, preempted, just_saved = None, start, False, None
  end = config.train.steps
  if config.train.get("stop_after", 0):  # a time-limited job: run this many steps, checkpoint, exit
    end = min(end, start + config.train.stop_after)
  try:
    while step < end:
      batch = next(data_iter)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, device_metrics = run.step(state, batch, rng)
      step += 1
      bar.update(1)
      if just_saved is not None:  # this step's loss shows whether the params just saved are usable
        _check_saved_step(ckpt, just_saved, device_metrics)
        just_saved = None
      preempted = interrupts.requested()
      save = preempted or step == end or (
          config.train.checkpoint_every and step % config.train.checkpoint_every == 0)
      if save or step % config.train.log_every == 0:
        flushed = logger.push(step, device_metrics)
        if save:  # check this very step's loss: a non-finite loss raises here, before it is saved
          flushed = logger.flush()
        if flushed:
          final = dict(flushed[1], step=flushed[0])
          bar.set_postfix(loss=f"{final['loss']:.3f}")
      if save:
        checkpointing.check_finite(state, step, ckpt)  # the loss and grad norm were checked by the flush
        ckpt.save(step, step_lib.checkpoint_state(state, run.trainable_paths), data_iter=data_iter, config=config)
        just_saved = step
        writer.flush()
        staging.sync()
      if sampler is not None and step % config.train.sample_every == 0:
        sampler.write(step, step_lib.inference_params(state, run.trainable_paths), writer)
      if preempted:
        break
    flushed = logger.flush()
    final = dict(flushed[1], step=flushed[0]) if flushed else final
  finally:
    bar.close()
    try:
      ckpt.close()
    finally:
      writer.close()
      staging.sync()
  if preempted:
    interrupts.stop(f"saved step {step} in {ckpt.directory}")
  return final

