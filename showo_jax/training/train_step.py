"""The pure train step: omni-attention mask → forward → Show-o loss → gradients → AdamW update.

`train_step(state, batch, rng) -> (state, metrics)`. The batch holds `input_ids` [B, L], `labels` [B, L] and
`task_ids` [B]; the attention mask is built on device from the ids (no [B, L, L] host transfer). With
`grad_accum_steps` k > 1 the batch is split into k micro-batches scanned in sequence; each micro-batch loss is
divided by the *whole* batch's per-task target counts, so the summed gradient equals the full-batch gradient.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from showo_jax.common import optimizer as optimizer_lib
from showo_jax.config import showo as showo_config
from showo_jax.models import losses
from showo_jax.models import omni_mask
from showo_jax.models import transformer
from showo_jax.models import vocab as vocab_lib
from showo_jax.training import trainable as trainable_lib

_LOSS_KEYS = ("loss", "loss_t2i", "loss_lm", "loss_mmu")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done
  params: Any
  opt_state: Any
  # Moving average of the trained params (config.train.ema_decay > 0), else None. Frozen params never change, so
  # their average is themselves: `inference_params` takes them from `params` instead of keeping a second copy.
  ema_params: Any = None


def init_params(rng, model: transformer.Transformer, seq_len: int):
  """The model's boxed params, from one row of `seq_len` tokens (jax.eval_shape it for the shapes alone)."""
  return model.init(rng, jnp.zeros((1, seq_len), jnp.int32), omni_mask.causal_spans(1, seq_len))["params"]


def init_state(rng, model: transformer.Transformer, tx, seq_len: int, ema: bool = False,
               bit_layout: vocab_lib.VocabLayout = None, trainable: str = "all") -> TrainState:
  """Boxed (logically annotated) initial state; jit it with out_shardings and nn.unbox the result. With
  `bit_layout`, the image-code rows of the embedding and the head are `vocab.codebook_bit_rows`. The optimizer
  state and the EMA cover only the `trainable` parameters (training/trainable.py)."""
  params = init_params(rng, model, seq_len)
  if bit_layout is not None:
    params = _codebook_bit_init(jax.random.fold_in(rng, 1), params, bit_layout, model.cfg)
  trained, _ = trainable_lib.split(params, trainable_lib.trainable_paths(params, trainable))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trained),
                    ema_params=trained if ema else None)


def _codebook_bit_init(rng, params, layout, cfg):
  start, stop = layout.image_offset, layout.mask_id
  emb_rng, head_rng = jax.random.split(rng)
  emb = params["embed"]["embedding"]
  head = params["lm_head"]["kernel"]
  rows = vocab_lib.codebook_bit_rows(emb_rng, layout, cfg.hidden_size, cfg.init_std)
  cols = vocab_lib.codebook_bit_rows(head_rng, layout, cfg.hidden_size, cfg.init_std).T
  emb_value, head_value = emb.unbox(), head.unbox()
  params = flax.core.unfreeze(params)
  params["embed"]["embedding"] = emb.replace_boxed(emb_value.at[start:stop].set(rows.astype(emb_value.dtype)))
  params["lm_head"]["kernel"] = head.replace_boxed(head_value.at[:, start:stop].set(cols.astype(head_value.dtype)))
  return params


def ema_decay_at(step, decay: float):
  """The EMA decay used after update `step` (0-based): min(decay, (1 + t) / (10 + t)), so the average is not
  dominated by the random init early on (the warm-up of TF's ExponentialMovingAverage with num_updates)."""
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def inference_params(state, paths=None):
  """The full params to sample and evaluate with: when the run keeps an EMA, the EMA of the trained params
  (`paths`, None = all) and the frozen params as they are."""
  if state.ema_params is None:
    return state.params
  return trainable_lib.join(state.ema_params, trainable_lib.split(state.params, paths)[1])


def checkpoint_state(state, paths=None):
  """The state as saved: `ema_params` holds the full inference tree, so that export, `load_checkpoint` and
  init_from read every parameter there, as they do in checkpoints of runs that averaged frozen params too. Its
  frozen leaves are the params' own arrays: no device memory is added, only their bytes on disk."""
  if state.ema_params is None:
    return state
  return state.replace(ema_params=inference_params(state, paths))


def from_checkpoint(state, paths=None):
  """The inverse of `checkpoint_state`: the EMA of the trained params only. The frozen leaves dropped are
  equal to `params` bit for bit (an average of a constant that starts at it), also in older checkpoints."""
  if state.ema_params is None:
    return state
  return state.replace(ema_params=trainable_lib.split(state.ema_params, paths)[0])


def make_gradient_fn(model: transformer.Transformer, config, paths=None):
  """Builds gradients(params, batch, rng) -> (loss terms, grads) of the Show-o loss over one global batch; the
  grads are those of the trained parameters (`paths`, from trainable.trainable_paths; None = all).

  With `config.train.grad_accum_steps` = k > 1 the batch is cut into k micro-batches whose gradients are summed;
  every micro-batch divides by the whole batch's target counts, so the sum is the full batch's gradient.
  """
  layout = showo_config.vocab_layout(config)
  accum = int(config.train.get("grad_accum_steps", 1))
  loss_kwargs = showo_config.loss_settings(config)
  coeffs = {name: loss_kwargs.pop(name) for name in ("t2i_coeff", "lm_coeff", "mmu_coeff")}

  cfg = model.cfg
  dropout = cfg.dropout_rate > 0 or (cfg.lora_rank > 0 and cfg.lora_dropout > 0)
  train_model = model.clone(deterministic=False) if dropout else model

  def micro_loss(trained, frozen, micro, denominators, rng):
    params = trainable_lib.join(trained, frozen)
    # The compact mask: the model expands it for the "xla" kernel, "flash" reads it as it is.
    allowed = omni_mask.omni_spans(micro["input_ids"], micro["task_ids"], layout)
    rngs = {"dropout": rng} if dropout else None
    logits = train_model.apply({"params": params}, micro["input_ids"], allowed, rngs=rngs)
    out = losses.showo_loss(logits, micro["input_ids"], micro["labels"], micro["task_ids"], **loss_kwargs,
                            **coeffs, denominators=denominators)
    return out["loss"], out

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def gradients(params, batch, rng):
    params, frozen = trainable_lib.split(params, paths)
    counts = losses.target_counts(batch["input_ids"], batch["labels"], batch["task_ids"], **loss_kwargs)
    if accum == 1:
      (_, out), grads = grad_fn(params, frozen, batch, counts, rng)
      return {k: out[k] for k in _LOSS_KEYS}, grads
    # Row j*k + i goes to micro-batch i: each device splits its own rows, so no data moves between devices.
    micro_batches = jax.tree.map(
        lambda x: x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1), batch)

    def body(carry, micro_and_index):
      grads_acc, sums = carry
      micro, index = micro_and_index
      (_, out), g = grad_fn(params, frozen, micro, counts, jax.random.fold_in(rng, index))
      sums = {k: sums[k] + out[k] for k in sums}
      return (jax.tree.map(jnp.add, grads_acc, g), sums), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    sums0 = {k: jnp.zeros((), jnp.float32) for k in _LOSS_KEYS}
    (grads, out), _ = jax.lax.scan(body, (zeros, sums0), (micro_batches, jnp.arange(accum)))
    return out, grads

  return gradients


def make_train_step(model: transformer.Transformer, tx, config, lr_schedule, paths=None):
  """Builds train_step(state, batch, rng) for jax.jit (model, optimizer and config are closed over). Only the
  `paths` parameters (None = all) are updated; the others are passed through as they are."""
  ema_decay = float(config.train.get("ema_decay", 0.0))
  gradients = make_gradient_fn(model, config, paths)

  def train_step(state: TrainState, batch, rng):
    # Masking and condition dropout happen in the input pipeline; `rng` only drives model dropout (if any).
    out, grads = gradients(state.params, batch, jax.random.fold_in(rng, state.step))
    trained, frozen = trainable_lib.split(state.params, paths)
    updates, opt_state = tx.update(grads, state.opt_state, trained)
    trained = optax.apply_updates(trained, updates)
    params = trainable_lib.join(trained, frozen)
    ema = None
    if ema_decay > 0:
      d = ema_decay_at(state.step, ema_decay)
      ema = jax.tree.map(lambda e, p: e + (1.0 - d) * (p - e), state.ema_params, trained)
    metrics = dict(out)
    metrics["grad_norm"] = optimizer_lib.global_norm(grads)
    metrics["param_norm"] = optimizer_lib.global_norm(params)
    metrics["lr"] = lr_schedule(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics

  return train_step


def strip_boxes(tree):
  """The values inside nn.Partitioned boxes, without applying their sharding constraints (for abstract trees)."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))
