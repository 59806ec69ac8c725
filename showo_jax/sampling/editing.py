"""Inputs and outputs of image editing with MaskGIT: inpainting masks and extrapolation windows (SPEC §3.2).

Both only prepare the image block of a `t2i_gen_prompt` ([MASK] where tokens are to be generated) and put the
generated codes back; the decoding itself is `maskgit.t2i_generate`. Token grids are row-major (h, w).

Inpainting (`inference_t2i.py`): the mask image (already resized/cropped to the model resolution by the
official `image_transform`) is ToTensor'ed to [0, 1], resized to the token grid with PyTorch's
`F.interpolate(mode="bicubic")` (align_corners=False, no antialias), thresholded at 0.5 (≥ 0.5 → generate) and
flattened row-major. `bicubic_resize` reimplements exactly that resize in numpy float32.

Extrapolation: a square model window of side W slides by half a window: it keeps `W//2 - offset` lines of the
current grid on the side of the direction and masks the other `W//2 + offset` (in general `W - keep`) lines
beyond it; after generation the window is stitched to the rest of the grid, which grows by `W - keep` lines.
"""

from typing import Union

import numpy as np

_A = -0.75  # PyTorch's bicubic convolution coefficient


def _cubic_weights(t):
  """The 4 tap weights [..., 4] for fractional offsets t in [0, 1) (Keys' kernel with A = -0.75)."""
  def near(x):  # |x| <= 1
    return ((_A + 2) * x - (_A + 3)) * x * x + 1
  def far(x):  # 1 < |x| < 2
    return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A
  one = np.float32(1)
  return np.stack([far(t + one), near(t), near(one - t), far(2 * one - t)], axis=-1)


def _resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """float32 [out, in]: 1-D bicubic resampling, align_corners=False, taps clamped at the borders."""
  scale = np.float32(in_size / out_size)
  src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)  # not clamped
  base = np.floor(src)
  weights = _cubic_weights((src - base).astype(np.float32))  # [out, 4]
  taps = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)  # [out, 4]
  matrix = np.zeros((out_size, in_size), np.float32)
  np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.ravel()), weights.ravel())
  return matrix


def bicubic_resize(image, size) -> np.ndarray:
  """`F.interpolate(x[None, None], size, mode="bicubic")[0, 0]` for a float [H, W] image; size int or (h, w)."""
  image = np.asarray(image, np.float32)
  h, w = (size, size) if isinstance(size, int) else size
  rows = _resize_matrix(image.shape[0], h)  # [h, H]
  cols = _resize_matrix(image.shape[1], w)  # [w, W]
  return rows @ image @ cols.T


def _mask_array(mask) -> np.ndarray:
  """float32 [H, W] in [0, 1] from a PIL image (→ "L", /255), a uint8 array (/255), or a float/bool array."""
  if hasattr(mask, "convert"):  # PIL
    return np.asarray(mask.convert("L"), np.float32) / np.float32(255)
  arr = np.asarray(mask)
  if arr.ndim != 2:
    raise ValueError(f"inpainting mask must be [H, W], got shape {arr.shape}")
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / np.float32(255)
  return arr.astype(np.float32)


def inpainting_token_mask(mask, grid_size) -> np.ndarray:
  """bool [h·w], row-major: True where image tokens are to be regenerated.

  Args:
    mask: the inpainting mask at image resolution (white / 1 = inpaint): PIL image, uint8 or float [H, W].
    grid_size: token grid side (res // 16) or (h, w).
  """
  return (bicubic_resize(_mask_array(mask), grid_size) >= 0.5).reshape(-1)


def mask_tokens(image_tokens, token_mask, mask_id: int) -> np.ndarray:
  """image_tokens [B, N] (or [N]) with [MASK] where token_mask ([N] or [B, N]) is True."""
  tokens = np.asarray(image_tokens)
  return np.where(np.asarray(token_mask, bool), mask_id, tokens).astype(tokens.dtype)


# ------------------------------------------------------------------------------------------- extrapolation

DIRECTIONS = ("left", "right", "up", "down")


def _keep(window: int, offset: int) -> int:
  keep = window // 2 - offset
  if not 0 <= keep < window:
    raise ValueError(f"offset {offset} leaves {keep} kept lines of a {window}-token window")
  return keep


def _check(grid: np.ndarray, direction: str, window: int):
  if direction not in DIRECTIONS:
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
  across = grid.shape[-2] if direction in ("left", "right") else grid.shape[-1]
  if across != window:
    raise ValueError(f"extending {direction} needs a grid {window} tokens "
                     f"{'high' if direction in ('left', 'right') else 'wide'}, got shape {grid.shape[-2:]}")


def extrapolation_window(grid, direction: str, fill_id: int, window: Union[int, None] = None,
                         offset: int = 0) -> np.ndarray:
  """The [..., W, W] image block to generate when extending `grid` [..., h, w] one step in `direction`.

  The `keep = W//2 - offset` grid lines nearest to the new side are kept and the `W - keep` lines beyond them
  are `fill_id` ([MASK]). W defaults to the grid's side across the direction (the model's square grid).
  """
  grid = np.asarray(grid)
  window = window or (grid.shape[-2] if direction in ("left", "right") else grid.shape[-1])
  _check(grid, direction, window)
  keep = _keep(window, offset)
  horizontal = direction in ("left", "right")
  fill_shape = grid.shape[:-2] + ((window, window - keep) if horizontal else (window - keep, window))
  fill = np.full(fill_shape, fill_id, grid.dtype)
  if direction == "left":
    return np.concatenate([fill, grid[..., :, :keep]], axis=-1)
  if direction == "right":
    return np.concatenate([grid[..., :, grid.shape[-1] - keep:], fill], axis=-1)
  if direction == "up":
    return np.concatenate([fill, grid[..., :keep, :]], axis=-2)
  return np.concatenate([grid[..., grid.shape[-2] - keep:, :], fill], axis=-2)


def stitch_extrapolation(grid, generated, direction: str, offset: int = 0) -> np.ndarray:
  """The extended grid: `generated` [..., W, W] (the decoded window) joined to the part of `grid` [..., h, w]
  outside the window. Left/right give [..., h, w + W - keep], up/down [..., h + W - keep, w].

  The official "down" branch joins `image_left_part` (a column slice) instead of the upper part of the grid
  (SPEC §3.2), which fails or garbles the result; here "down" keeps the rows above the window, mirroring "up".
  """
  grid = np.asarray(grid)
  generated = np.asarray(generated).astype(grid.dtype)
  window = generated.shape[-1]
  if generated.shape[-2] != window:
    raise ValueError(f"generated window must be square, got shape {generated.shape[-2:]}")
  _check(grid, direction, window)
  keep = _keep(window, offset)
  if direction == "left":  # the window covered the grid's first `keep` columns
    return np.concatenate([generated, grid[..., :, keep:]], axis=-1)
  if direction == "right":
    return np.concatenate([grid[..., :, :grid.shape[-1] - keep], generated], axis=-1)
  if direction == "up":
    return np.concatenate([generated, grid[..., keep:, :]], axis=-2)
  return np.concatenate([grid[..., :grid.shape[-2] - keep, :], generated], axis=-2)
