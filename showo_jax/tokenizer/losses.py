"""Losses and metrics of MAGVIT-v2 tokenizer training, as pure functions (images NHWC float32 in [−1, 1]).

* reconstruction: `l1·mean|x − x̂| + l2·mean(x − x̂)²`.
* GAN (taming-transformers VQGAN recipe): hinge or non-saturating discriminator/generator losses; LeCAM
  regularisation (Tseng et al. 2021) `mean(relu(D(x) − ema_fake)²) + mean(relu(ema_real − D(x̂))²)`; the
  adaptive weight `‖∇_L rec‖ / (‖∇_L adv‖ + 1e-4)` at the decoder's last layer L, clipped to [0, max] and
  never differentiated.
* perceptual (optional): an LPIPS-style distance in the feature space of a user-supplied VGG-style network
  (see `load_feature_net` for the weight format; none ship, so it is off by default).
* metrics: PSNR on [0, 1] images after the official clamp, codebook usage, and the code entropy of a batch.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

GAN_LOSSES = ("hinge", "non_saturating")


def reconstruction_loss(images, recon, l1_weight: float, l2_weight: float):
  """(weighted total, l1, l2): float32 scalars; images, recon [B, H, W, C]."""
  diff = recon.astype(jnp.float32) - images.astype(jnp.float32)
  l1, l2 = jnp.mean(jnp.abs(diff)), jnp.mean(jnp.square(diff))
  return l1_weight * l1 + l2_weight * l2, l1, l2


###########################  GAN  ###########################

def discriminator_loss(real_logits, fake_logits, kind: str):
  """Hinge: ½(mean relu(1 − D(x)) + mean relu(1 + D(x̂))); non-saturating: mean softplus(−D(x)) + softplus(D(x̂))."""
  if kind == "hinge":
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits)))
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
  raise ValueError(f"GAN loss {kind!r} is not one of {GAN_LOSSES}")


def generator_loss(fake_logits, kind: str):
  """Hinge: −mean D(x̂); non-saturating: mean softplus(−D(x̂))."""
  if kind == "hinge":
    return -jnp.mean(fake_logits)
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake_logits))
  raise ValueError(f"GAN loss {kind!r} is not one of {GAN_LOSSES}")


def lecam_regularizer(real_logits, fake_logits, ema_real, ema_fake):
  """LeCAM: keeps D(x) near the running mean of D(x̂) and D(x̂) near that of D(x) (emas are scalars)."""
  return (jnp.mean(jnp.square(jax.nn.relu(real_logits - ema_fake)))
          + jnp.mean(jnp.square(jax.nn.relu(ema_real - fake_logits))))


def adaptive_weight(rec_grad, adv_grad, max_weight: float):
  """‖rec_grad‖ / (‖adv_grad‖ + 1e-4) clipped to [0, max_weight], with its gradient stopped (taming)."""
  ratio = jnp.linalg.norm(rec_grad.ravel()) / (jnp.linalg.norm(adv_grad.ravel()) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))


def ema_update(ema_tree, tree, decay):
  """decay·ema + (1 − decay)·new, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_tree, tree)


###########################  Perceptual  ###########################

def load_feature_net(path: str) -> dict:
  """Weights of the perceptual feature network from an .npz file.

  Format (all float32; one conv layer per index i = 0, 1, …, applied in order, each followed by ReLU):
    conv{i}_kernel [3, 3, C_in, C_out]  HWIO (a PyTorch [out, in, kh, kw] weight transposed by (2, 3, 1, 0))
    conv{i}_bias   [C_out]
    pool_after     int [P]   indices of convs followed by a 2×2 stride-2 max-pool (VGG16: 1, 3, 6, 9)
    feature_layers int [F]   indices of convs whose ReLU outputs are compared (LPIPS-VGG16: 1, 3, 6, 9, 12)
    mean, std      [3]       optional input normalisation of [0, 1] RGB (ImageNet: .485 .456 .406 / .229 .224 .225)
    lin{j}         [C_j]     optional non-negative per-channel weights of feature layer j (LPIPS "lin" layers);
                             without them every channel weighs 1.
  The distance is Σ_j mean_{b,h,w} Σ_c lin_j,c · (f̂_j − f̂'_j)², with f̂ the features unit-normalised over
  channels (LPIPS). torchvision's VGG16 `features` convs 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 are
  conv0 … conv12.
  """
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f"{path or '(empty path)'}: perceptual feature-network weights not found "
                            "(config.loss.perceptual_weights; none ship with showo_jax)")
  try:
    with np.load(path, allow_pickle=False) as data:
      raw = {k: np.asarray(data[k]) for k in data.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: unreadable perceptual weights ({type(e).__name__}: {e})") from None
  num = 0
  while f"conv{num}_kernel" in raw:
    num += 1
  if num == 0 or "feature_layers" not in raw:
    raise ValueError(f"{path}: expected conv0_kernel, conv0_bias, … and feature_layers "
                     "(see tokenizer/losses.py load_feature_net)")
  net = {"convs": [(jnp.asarray(raw[f"conv{i}_kernel"], jnp.float32), jnp.asarray(raw[f"conv{i}_bias"], jnp.float32))
                   for i in range(num)],
         "pool_after": tuple(int(i) for i in raw.get("pool_after", [])),
         "feature_layers": tuple(int(i) for i in raw["feature_layers"]),
         "mean": jnp.asarray(raw.get("mean", np.full(3, 0.5)), jnp.float32),
         "std": jnp.asarray(raw.get("std", np.full(3, 0.5)), jnp.float32)}
  net["lin"] = [jnp.asarray(raw[f"lin{j}"], jnp.float32) if f"lin{j}" in raw else None
                for j in range(len(net["feature_layers"]))]
  for i, (kernel, _) in enumerate(net["convs"]):
    if kernel.ndim != 4:
      raise ValueError(f"{path}: conv{i}_kernel has shape {kernel.shape}, expected [kh, kw, C_in, C_out]")
  if max(net["feature_layers"]) >= num:
    raise ValueError(f"{path}: feature_layers {net['feature_layers']} name convs beyond conv{num - 1}")
  return net


def _features(net, images):
  """images [B, H, W, 3] in [−1, 1] → list of [B, h, w, C_j] ReLU features."""
  x = ((images + 1.0) / 2.0 - net["mean"]) / net["std"]
  out = []
  for i, (kernel, bias) in enumerate(net["convs"]):
    x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = jax.nn.relu(x + bias)
    if i in net["feature_layers"]:
      out.append(x)
    if i in net["pool_after"]:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  return out


def perceptual_loss(net, images, recon):
  """LPIPS-style distance (see load_feature_net), averaged over the batch → scalar."""
  total = 0.0
  feats = _features(net, jnp.concatenate([images, recon]).astype(jnp.float32))
  for j, f in enumerate(feats):
    f = f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + 1e-10)
    a, b = jnp.split(f, 2)
    d = jnp.square(a - b)
    if net["lin"][j] is not None:
      d = d * net["lin"][j]
    total = total + jnp.mean(jnp.sum(d, axis=-1))
  return total


###########################  Metrics  ###########################

def psnr(images, recon):
  """Per-image PSNR in dB of [−1, 1] images, on [0, 1] after the official clamp of recon. [B, H, W, C] → [B]."""
  x = (jnp.asarray(images, jnp.float32) + 1.0) / 2.0
  y = jnp.clip((jnp.asarray(recon, jnp.float32) + 1.0) / 2.0, 0.0, 1.0)
  mse = jnp.mean(jnp.square(x - y), axis=tuple(range(1, x.ndim)))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))  # identical images: capped at 100 dB


def code_histogram(indices, codebook_size: int):
  """int indices (any shape) → float32 [codebook_size] counts."""
  return jnp.zeros((codebook_size,), jnp.float32).at[jnp.ravel(indices)].add(1.0)


def code_entropy_bits(indices, codebook_size: int):
  """Entropy (bits) of the empirical code distribution of a batch; log2(codebook_size) at most."""
  counts = code_histogram(indices, codebook_size)
  p = counts / jnp.sum(counts)
  return jnp.sum(jax.scipy.special.entr(p)) / jnp.log(2.0)


def codebook_usage(indices, codebook_size: int) -> float:
  """Share of the codebook's codes that occur at least once in `indices` (host-side, any shape)."""
  used = np.unique(np.asarray(indices).ravel())
  return float(len(used)) / float(codebook_size)
