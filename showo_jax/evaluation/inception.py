"""The FID InceptionV3 (the TF 2015-12-05 graph as ported by pytorch-fid) in Flax, NHWC.

It is torchvision's InceptionV3 with the pool branches of the TF graph: every average pool of the Inception
blocks leaves the padding out of the mean (`count_include_pad=False`), and the last block (Mixed_7c) max-pools.
`features` takes uint8 or [0, 1] images of any size, resizes them to 299² bilinearly (half-pixel centres, no
antialiasing: torch's `interpolate(..., align_corners=False)`), maps them to [-1, 1] and returns the 2,048
pool features FID is computed on. Module names follow pytorch-fid's state dict, so its weight file converts key
for key (`load_weights`): `Mixed_5b.branch1x1.conv.weight` → params Mixed_5b/branch1x1/conv/kernel.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from showo_jax.evaluation import weight_files

FEATURES = 2048
SIZE = 299


class BasicConv(nn.Module):
  """conv (no bias) → BatchNorm (eps 1e-3, running statistics) → ReLU."""
  features: int
  kernel: tuple = (1, 1)
  stride: int = 1
  padding: tuple = (0, 0)

  @nn.compact
  def __call__(self, x):
    pad = [(self.padding[0],) * 2, (self.padding[1],) * 2]
    x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=pad, use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_valid_only(x):
  """3×3, stride 1, padding 1, the mean over the in-image window only (count_include_pad=False)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  count = jax.lax.reduce_window(jnp.ones(x.shape[1:3], x.dtype)[None, :, :, None], 0.0, jax.lax.add,
                                (1, 3, 3, 1), (1, 1, 1, 1), pad)
  return total / count


def _max_pool(x, stride, pad):
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, name="branch1x1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(BasicConv(48, name="branch5x5_1")(x))
    b3 = BasicConv(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_valid_only(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = BasicConv(64, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 2, 0)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = BasicConv(192, name="branch1x1")(x)
    b7 = BasicConv(c, name="branch7x7_1")(x)
    b7 = BasicConv(c, **row, name="branch7x7_2")(b7)
    b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
    bd = BasicConv(c, name="branch7x7dbl_1")(x)
    for i, (width, shape) in enumerate(((c, col), (c, row), (c, col), (192, row)), 2):
      bd = BasicConv(width, **shape, name=f"branch7x7dbl_{i}")(bd)
    bp = BasicConv(192, name="branch_pool")(_avg_pool_valid_only(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(BasicConv(192, name="branch3x3_1")(x))
    b7 = BasicConv(192, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
  max_pool: bool  # the TF graph's last block max-pools (pytorch-fid's FIDInceptionE_2)

  @nn.compact
  def __call__(self, x):
    row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    b1 = BasicConv(320, name="branch1x1")(x)
    b3 = BasicConv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, **row, name="branch3x3_2a")(b3),
                          BasicConv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv(448, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, **row, name="branch3x3dbl_3a")(bd),
                          BasicConv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _max_pool(x, 1, 1) if self.max_pool else _avg_pool_valid_only(x)
    bp = BasicConv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """[-1, 1] images NHWC (at least 75², 299² for FID) → pool features [N, 2048]."""

  @nn.compact
  def __call__(self, x):
    x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x, 2, 0)
    x = BasicConv(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool(x, 2, 0)
    for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(False, name="Mixed_7b")(x)
    x = InceptionE(True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


def preprocess(images, size: int = SIZE) -> jax.Array:
  """uint8 [N, H, W, 3] (or float in [0, 1]) → float32 [N, size, size, 3] in [-1, 1], as pytorch-fid does."""
  x = jnp.asarray(images)
  x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=False)
  return 2.0 * x - 1.0


@functools.partial(jax.jit, static_argnames=("size",))
def features(variables, images, size: int = SIZE) -> jax.Array:
  """Pool features [N, 2048] of uint8 or [0, 1] images of any size."""
  return FIDInceptionV3().apply(variables, preprocess(images, size))


def variable_shapes(size: int = 75) -> dict:
  """{collection: {path: shape}} of the network's variables (no compute)."""
  shapes = jax.eval_shape(lambda: FIDInceptionV3().init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  return jax.tree.map(lambda s: s.shape, shapes)


# Flax (collection, leaf) ↔ the last part of a torch name
_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
           ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def torch_shapes() -> dict:
  """{pytorch-fid state-dict name: shape} of what the network uses (conv weights OIHW)."""
  out = {}
  for collection, tree in variable_shapes().items():
    for path, shape in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda v: isinstance(v, tuple))[0]:
      keys = [str(k.key) for k in path]
      shape = (shape[3], shape[2], shape[0], shape[1]) if keys[-1] == "kernel" else tuple(shape)
      out[".".join(keys[:-1] + [_LEAVES[(collection, keys[-1])]])] = shape
  return out


def from_torch_state_dict(state: dict, source: str = "the weights") -> dict:
  """pytorch-fid's state dict (name → array) → Flax variables; ValueError naming the first missing, unexpected
  or mis-shaped entry. The classifier (fc.*) and BatchNorm's num_batches_tracked are not used."""
  want = torch_shapes()
  used = {k: v for k, v in state.items() if not (k.startswith("fc.") or k.endswith(".num_batches_tracked"))}
  for name in sorted(set(used) & set(want)):
    if tuple(np.shape(used[name])) != want[name]:
      raise ValueError(f"{source}: {name} has shape {tuple(np.shape(used[name]))}, the FID InceptionV3 needs "
                       f"{want[name]}")
  missing = sorted(set(want) - set(used))
  if missing:
    raise ValueError(f"{source}: missing {missing[0]} (not an FID InceptionV3 state dict)")
  extra = sorted(set(used) - set(want))
  if extra:
    raise ValueError(f"{source}: unexpected entry {extra[0]} (not an FID InceptionV3 state dict)")
  variables = {"params": {}, "batch_stats": {}}
  for name, value in used.items():
    parts, value = name.split("."), np.asarray(value, np.float32)
    if parts[-1] == "weight":
      collection, leaf = "params", "kernel" if value.ndim == 4 else "scale"
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    else:
      collection, leaf = next(k for k, v in _LEAVES.items() if v == parts[-1])
    node = variables[collection]
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[leaf] = value
  return variables


def load_weights(path: str) -> dict:
  """Flax variables from pytorch-fid's pt_inception-2015-12-05-*.pth (or its .safetensors / .npz conversion);
  ValueError naming the file for anything else."""
  return jax.tree.map(jnp.asarray, from_torch_state_dict(weight_files.read_state_dict(path), path))
