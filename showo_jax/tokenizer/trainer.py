"""train_tokenizer(config, workdir) and load_tokenizer(path): training of the MAGVIT-v2 image tokenizer.

The official project released tokenizer weights but not its training code; this follows the recipe of its
lineage (taming-transformers VQGAN → MAGVIT-v2): reconstruction L1 + L2 (+ an optional perceptual term),
the LFQ commitment and entropy losses (tokenizer/lfq.py), and optionally a PatchGAN discriminator with hinge or
non-saturating loss, LeCAM regularisation and the adaptive generator weight, switched on at
`config.disc.start_step`. AdamW with warmup + cosine decay (optimizer.py), an EMA of the weights (what
`load_tokenizer` returns), Orbax checkpoints with automatic resume, TensorBoard + metrics.jsonl, PNG grids.

Data: the batch of step s holds rows [s·B, (s+1)·B) of an endless stream that visits the collection in a new
seeded permutation every epoch, so it is a pure function of (seed, step): resuming needs no iterator state and
is bit-exact. Each process loads its own rows (data/images.py collections).
"""

import logging
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from showo_jax.common import checkpointing
from showo_jax.common import interrupts
from showo_jax.common import metrics as metrics_lib
from showo_jax.common import optimizer as optimizer_lib
from showo_jax.common import paths
from showo_jax.common import sharding
from showo_jax.common import workdir_lock
from showo_jax.common import xla_options
from showo_jax.data import images as images_lib
from showo_jax.tokenizer import config as tokenizer_config
from showo_jax.tokenizer import lfq
from showo_jax.tokenizer import losses as tl
from showo_jax.tokenizer import magvit
from showo_jax.tokenizer import reports

CHECKPOINTS = "checkpoints"
EVAL_FILE = "eval.json"
# Fields that must agree between a checkpoint and the run resuming it.
_RESUME_FIELDS = ("encoder", "decoder", "codebook_bits", "in_channels", "out_channels", "data.resolution",
                  "disc.enabled", "disc.ch", "disc.num_layers", "disc.norm", "train.ema_decay")


@flax.struct.dataclass
class TokenizerState:
  step: jax.Array  # int32 scalar: updates done
  params: Any  # MagvitV2 params
  opt_state: Any
  ema_params: Any  # None when config.train.ema_decay == 0
  disc_params: Any  # None when config.disc.enabled is False
  disc_opt_state: Any
  lecam_ema: Any  # float32 [2]: running means of the real / fake logits (LeCAM anchors)


def _last_layer(params):
  return params["decoder"]["conv_out"]["kernel"]  # the decoder's last layer, for the adaptive weight


def _with_last_layer(params, kernel):
  params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else dict(params)
  decoder = dict(params["decoder"])
  decoder["conv_out"] = dict(decoder["conv_out"], kernel=kernel)
  return dict(params, decoder=decoder)


class TokenizerRun:
  """Model, optimizers, shardings and jitted functions of one tokenizer training run (used by tests too)."""

  def __init__(self, config, mesh=None, *, with_feature_net: bool = True):
    self.config = config
    self.mesh = mesh or sharding.make_mesh(config.mesh)
    self.model = tokenizer_config.magvit_from_config(config)
    self.disc = tokenizer_config.discriminator_from_config(config) if config.disc.enabled else None
    self.tx, self.lr_schedule = optimizer_lib.make_optimizer(config.optimizer, config.train.steps)
    disc_opt = ml_collections.ConfigDict(config.optimizer.to_dict())
    disc_opt.lr = config.disc.lr
    self.disc_tx, _ = optimizer_lib.make_optimizer(disc_opt, max(config.train.steps - config.disc.start_step, 1))
    self.feature_net = None
    if with_feature_net and config.loss.perceptual_weight > 0:
      self.feature_net = tl.load_feature_net(config.loss.perceptual_weights)
    self.codebook_size = tokenizer_config.codebook_size(config)
    repl, self.batch_sh = sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)
    abstract = jax.eval_shape(self._init_fn, jax.random.key(0))
    self.state_shardings = jax.tree.map(lambda _: repl, abstract)  # small model: params replicated
    self.abstract_state = checkpointing.abstract_with_shardings(abstract, self.state_shardings)
    # Runs once: XLA's backend optimisations would take ~10× longer to compile the many PRNG calls than the
    # unoptimised init takes to run.
    self._init = jax.jit(self._init_fn, out_shardings=self.state_shardings,
                         compiler_options={"xla_backend_optimization_level": 0})
    self._train_step = jax.jit(self.make_train_step(), in_shardings=(self.state_shardings, self.batch_sh, repl),
                               out_shardings=(self.state_shardings, repl), donate_argnums=(0,),
                               compiler_options=xla_options.conv_net())
    # Evaluation runs on this process's devices only, so each process can evaluate whole sets on its own.
    self.eval_mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
                                        jax.local_devices())
    self._eval_sh = sharding.batch_sharding(self.eval_mesh)
    self._eval = jax.jit(self._eval_fn, in_shardings=(sharding.replicated(self.eval_mesh), self._eval_sh),
                         out_shardings=self._eval_sh, compiler_options=xla_options.conv_net())

  # -- state ---------------------------------------------------------------------------------------------------
  def _init_fn(self, rng) -> TokenizerState:
    c, res = self.config, self.config.data.resolution
    x = jnp.zeros((1, res, res, c.in_channels), jnp.float32)
    g_rng, d_rng = jax.random.split(rng)
    params = self.model.init(g_rng, x)["params"]
    disc_params = self.disc.init(d_rng, x)["params"] if self.disc else None
    return TokenizerState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
        ema_params=params if c.train.ema_decay > 0 else None, disc_params=disc_params,
        disc_opt_state=self.disc_tx.init(disc_params) if self.disc else None,
        lecam_ema=jnp.zeros((2,), jnp.float32))

  def init_state(self, seed: int) -> TokenizerState:
    with jax.set_mesh(self.mesh):
      return self._init(jax.random.key(seed))

  # -- losses --------------------------------------------------------------------------------------------------
  def forward(self, params, x):
    """x float32 [B, H, W, 3] → (recon [B, H, W, 3], z, codes [B, h, w, K], indices [B, h, w])."""
    z, codes, indices = self.model.apply({"params": params}, x, method=magvit.MagvitV2.encode)
    return self.model.apply({"params": params}, codes, method=magvit.MagvitV2.decode_codes), z, codes, indices

  def rec_loss(self, x, recon):
    """(rec_loss = the 'nll' of taming: reconstruction + perceptual, parts dict)."""
    loss_cfg = self.config.loss
    total, l1, l2 = tl.reconstruction_loss(x, recon, loss_cfg.l1_weight, loss_cfg.l2_weight)
    parts = {"l1": l1, "l2": l2}
    if self.feature_net is not None:
      parts["perceptual"] = tl.perceptual_loss(self.feature_net, x, recon)
      total = total + loss_cfg.perceptual_weight * parts["perceptual"]
    return total, parts

  def adv_loss(self, disc_params, recon):
    return tl.generator_loss(self.disc.apply({"params": disc_params}, recon), self.config.disc.loss)

  def adaptive_weight(self, params, disc_params, x):
    """‖∇_L rec‖ / (‖∇_L adv‖ + 1e-4), clipped, at the decoder's last conv kernel L (unscaled by disc.weight)."""
    def losses(kernel):  # differentiated w.r.t. L only: two cheap backward passes through the last conv
      recon = self.forward(_with_last_layer(params, kernel), x)[0]
      return self.rec_loss(x, recon)[0], self.adv_loss(disc_params, recon)
    _, vjp = jax.vjp(losses, _last_layer(params))
    one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
    (rec_grad,), (adv_grad,) = vjp((one, zero)), vjp((zero, one))
    return tl.adaptive_weight(rec_grad, adv_grad, self.config.disc.adaptive_weight_max)

  def generator_loss(self, params, disc_params, x, adv_scale):
    recon, z, codes, indices = self.forward(params, x)
    rec, parts = self.rec_loss(x, recon)
    lfq_terms = lfq.lfq_losses(z, codes, self.config.lfq)
    loss = rec + lfq_terms["quantizer_loss"] + lfq_terms["entropy_loss"]
    metrics = dict(parts, rec_loss=rec, **lfq_terms)
    if self.disc is not None:
      metrics["g_adv"] = self.adv_loss(disc_params, recon)
      loss = loss + adv_scale * metrics["g_adv"]
    metrics["loss"] = loss
    return loss, (metrics, recon, indices)

  def discriminator_loss(self, disc_params, x, recon, lecam_ema):
    d = self.config.disc
    real = self.disc.apply({"params": disc_params}, x)
    fake = self.disc.apply({"params": disc_params}, jax.lax.stop_gradient(recon))
    d_loss = tl.discriminator_loss(real, fake, d.loss)
    lecam = tl.lecam_regularizer(real, fake, lecam_ema[0], lecam_ema[1])
    means = jnp.stack([jnp.mean(real), jnp.mean(fake)])
    return d_loss + d.lecam_weight * lecam, {"d_loss": d_loss, "lecam": lecam, "logits": means}

  # -- steps ---------------------------------------------------------------------------------------------------
  def make_train_step(self):
    c = self.config
    ema_decay, d = float(c.train.ema_decay), c.disc
    g_grad = jax.value_and_grad(self.generator_loss, has_aux=True)

    def train_step(state: TokenizerState, images_u8, rng):
      del rng  # deterministic: no dropout, no noise
      x = images_lib.to_float(images_u8)  # uint8 [B, H, W, 3] → float32 [−1, 1]
      adv_scale, active = jnp.zeros((), jnp.float32), None
      if self.disc is not None:
        active = state.step >= d.start_step
        weight = self.adaptive_weight(state.params, state.disc_params, x)
        adv_scale = jnp.where(active, d.weight * weight, 0.0)
      (_, (metrics, recon, indices)), grads = g_grad(state.params, state.disc_params, x, adv_scale)
      updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      ema = tl.ema_update(state.ema_params, params, ema_decay) if ema_decay > 0 else None
      new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
      metrics.update(grad_norm=optimizer_lib.global_norm(grads), lr=self.lr_schedule(state.step),
                     psnr=jnp.mean(tl.psnr(x, recon)),
                     code_entropy_bits=tl.code_entropy_bits(indices, self.codebook_size))
      if self.disc is not None:
        (_, d_out), d_grads = jax.value_and_grad(self.discriminator_loss, has_aux=True)(
            state.disc_params, x, recon, state.lecam_ema)
        d_updates, d_opt = self.disc_tx.update(d_grads, state.disc_opt_state, state.disc_params)
        lecam_ema = d.lecam_ema_decay * state.lecam_ema + (1 - d.lecam_ema_decay) * d_out["logits"]
        # Before start_step the discriminator and its optimizer state stay as they are.
        keep = lambda a, b: jax.tree.map(lambda u, v: jnp.where(active, u, v), a, b)  # pylint: disable=g-long-lambda
        new = new.replace(disc_params=keep(optax.apply_updates(state.disc_params, d_updates), state.disc_params),
                          disc_opt_state=keep(d_opt, state.disc_opt_state),
                          lecam_ema=keep(lecam_ema, state.lecam_ema))
        metrics.update(d_loss=d_out["d_loss"], lecam=d_out["lecam"], logits_real=d_out["logits"][0],
                       logits_fake=d_out["logits"][1], adaptive_weight=adv_scale)
      return new, metrics

    return train_step

  def _eval_fn(self, params, images_u8):
    x = images_lib.to_float(images_u8)
    recon, _, _, indices = self.forward(params, x)
    return recon, indices, tl.psnr(x, recon)

  def step(self, state, local_images, rng):
    with jax.set_mesh(self.mesh):
      return self._train_step(state, sharding.global_batch({"x": local_images}, self.mesh)["x"], rng)

  def reconstruct(self, params, images_u8: np.ndarray, batch_size: int):
    """uint8 [N, H, W, 3] → (recon float32 [N, H, W, 3], indices int32 [N, h, w], psnr [N]) on the host."""
    dp = sharding.data_parallel_size(self.eval_mesh)
    batch_size = -(-batch_size // dp) * dp
    # This process's copy of the replicated params, placed on the local evaluation mesh.
    local = jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, params)
    local = jax.device_put(local, sharding.replicated(self.eval_mesh))
    outs = []
    for start in range(0, len(images_u8), batch_size):
      chunk = images_u8[start:start + batch_size]
      padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])  # static shape
      with jax.set_mesh(self.eval_mesh):
        out = self._eval(local, jax.device_put(padded, self._eval_sh))
      outs.append([np.asarray(jax.device_get(o))[:len(chunk)] for o in out])
    return tuple(np.concatenate(parts) for parts in zip(*outs))


def _export_params(state):
  return state.ema_params if state.ema_params is not None else state.params


def _open_images(config):
  return images_lib.open_collection(config.data.source, config.data.resolution, resize=config.data.resize,
                                    factor=tokenizer_config.downsample_factor(config),
                                    image_field=config.data.image_field)


def check_before_work(config, workdir: str):
  """The checks that raise before anything is written: the config, the mesh and the batch divisibility (by
  building the run) and, for a workdir not made yet (nothing to resume), the training images. Returns (run,
  those images or None)."""
  tokenizer_config.validate_training(config)
  sharding.maybe_initialize_distributed(config.train.distributed)
  run = TokenizerRun(config)
  sharding.check_batch(config.train.batch_size, run.mesh, "config.train.batch_size")
  return run, (None if paths.exists(paths.resolve(workdir)) else _open_images(config))


def train_tokenizer(config, workdir: str, checked=None) -> str:
  """Trains (or resumes) the tokenizer in `workdir`; returns its checkpoint folder (load_tokenizer reads it).
  `checked`: check_before_work's result when the caller ran it (the CLI, before it makes the workdir)."""
  run, images = checked or check_before_work(config, workdir)
  workdir = paths.resolve(workdir)
  paths.makedirs(workdir)
  # One writer per workdir; Ctrl-C / SIGTERM: save at the next step, then stop (interrupts.Interrupted).
  with workdir_lock.WorkdirLock(workdir, "the tokenizer trainer"), interrupts.handling():
    return _train_tokenizer(run, images, config, workdir)


def _train_tokenizer(run: TokenizerRun, images, config, workdir: str):
  t = config.train
  ckpt = checkpointing.Checkpointer(paths.join(workdir, CHECKPOINTS), max_to_keep=t.keep_checkpoints)

  def restore(step):
    checkpointing.check_compatible(ckpt.saved_config(step), config.to_dict(), _RESUME_FIELDS)
    return ckpt.restore(step, run.abstract_state)[0]
  latest, state = ckpt.restore_newest_intact(restore, target=run.abstract_state)
  if latest is not None:
    if latest >= t.steps and (not config.data.eval_source or paths.exists(paths.join(workdir, EVAL_FILE))):
      ckpt.close()
      return ckpt.directory  # already complete
  factor = tokenizer_config.downsample_factor(config)
  train_data = images_lib.StepBatches(images if images is not None else _open_images(config), t.batch_size, t.seed,
                                      jax.process_index(), jax.process_count())
  eval_images = reports.eval_images(config, factor)
  samples = eval_images if eval_images is not None else train_data.batch(0)
  if latest is not None:
    logging.info("resumed the tokenizer from %s step %d", ckpt.directory, latest)
  else:
    state = run.init_state(t.seed)
  start = int(jax.device_get(state.step))
  staging = paths.Staging(workdir)  # metrics and TensorBoard (copied up at each save on a bucket)
  writer = metrics_lib.MetricWriter(staging, resume_step=start)
  clock = {"t": time.perf_counter(), "step": start, "dt": {}}

  def host_metrics(step, host):  # step_time_s was measured when the step was pushed (see the loop)
    del host
    dt = clock["dt"].pop(step, float("nan"))
    return {"step_time_s": dt, "images_per_s": t.batch_size / dt, "skipped_images": float(len(train_data.skipped))}

  logger = metrics_lib.BufferedLogger(writer, host_metrics)
  bar = metrics_lib.progress_bar(t.steps, initial=start, desc="tokenizer")
  rng, step, preempted = jax.random.key(t.seed), start, False
  try:
    while step < t.steps:
      batch = train_data.batch(step)
      with jax.profiler.StepTraceAnnotation("tokenizer", step_num=step):
        state, device_metrics = run.step(state, batch, jax.random.fold_in(rng, step))
      step += 1
      bar.update(1)
      preempted = interrupts.requested()
      save = preempted or step == t.steps or (t.checkpoint_every and step % t.checkpoint_every == 0)
      if save or step % t.log_every == 0:
        now = time.perf_counter()  # dispatch-to-dispatch time; equals compute time once the queue is full
        clock["dt"][step] = (now - clock["t"]) / max(step - clock["step"], 1)
        clock.update(t=now, step=step)
        flushed = logger.push(step, device_metrics)
        flushed = logger.flush() if save else flushed  # a non-finite loss raises before it is saved
        if flushed:
          bar.set_postfix(loss=f"{flushed[1]['loss']:.4f}", psnr=f"{flushed[1]['psnr']:.1f}")
      if save:
        checkpointing.check_finite(state, step, ckpt)
        ckpt.save(step, state, config=config)
        staging.sync()
      if preempted:
        break
      if t.sample_every and step % t.sample_every == 0 and step < t.steps:
        reports.write_samples(run, _export_params(state), config, samples, workdir, step)
      if t.eval_every and step % t.eval_every == 0 and step < t.steps and eval_images is not None:
        reports.write_eval(run, _export_params(state), config, eval_images, paths.join(workdir, EVAL_FILE), step,
                           writer)
    logger.flush()
    if not preempted:
      reports.write_samples(run, _export_params(state), config, samples, workdir, step)
      if eval_images is not None:
        reports.write_eval(run, _export_params(state), config, eval_images, paths.join(workdir, EVAL_FILE), step,
                           writer)
  finally:
    bar.close()
    try:
      ckpt.close()
    finally:
      writer.close()
      staging.sync()
  if preempted:
    interrupts.stop(f"saved tokenizer step {step} in {ckpt.directory}")
  return ckpt.directory


def checkpoint_folder(path: str):
  """Our Orbax folder for `path` (a workdir or its checkpoints/ folder), or None (then: an official file)."""
  for folder in (paths.join(path, CHECKPOINTS), path):
    if any(d.isdigit() and paths.isdir(paths.join(folder, d)) for d in paths.listdir(folder)):
      return paths.resolve(folder)
  return None


def load_tokenizer(path: str):
  """(params, config) of one of our tokenizer checkpoints: a train_tokenizer workdir or its checkpoints folder
  (EMA params when present). Official MAGVIT-v2 weights load through interop/checkpoints.py `load_tokenizer`."""
  path = paths.resolve(path)
  if not paths.exists(path):
    raise FileNotFoundError(f"{path}: no such tokenizer checkpoint (a train_tokenizer workdir or checkpoints "
                            "folder, or an official MAGVIT-v2 file/folder)")
  folder = checkpoint_folder(path)
  if folder is None:
    raise FileNotFoundError(f"{path}: not a train_tokenizer workdir or checkpoints folder")
  ckpt = checkpointing.Checkpointer(folder, async_save=False)

  def restore(step):
    config = ml_collections.ConfigDict(ckpt.saved_config(step))
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
    return ckpt.restore(step, TokenizerRun(config, mesh, with_feature_net=False).abstract_state)[0], config
  try:
    step, restored = ckpt.restore_newest_intact(restore)
  finally:
    ckpt.close()
  if step is None:
    raise FileNotFoundError(f"{path}: no intact tokenizer checkpoint left (the bad ones were moved to "
                            f"{ckpt.directory}.quarantine)")
  return _export_params(restored[0]), restored[1]

