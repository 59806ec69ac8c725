"""What the tokenizer trainer reports: held-out metrics (PSNR, codebook usage, code entropy) and PNG grids of
originals beside their reconstructions."""

import json
import logging

import jax
import numpy as np

from showo_jax.common import console
from showo_jax.common import paths
from showo_jax.data import images as images_lib
from showo_jax.tokenizer import losses as tl


def evaluate(run, params, images_u8: np.ndarray, batch_size: int) -> dict:
  """Test-split metrics: mean PSNR (dB), codebook usage (share of codes used), mean per-batch code entropy."""
  _, indices, psnr = run.reconstruct(params, images_u8, batch_size)
  entropies = [float(tl.code_entropy_bits(indices[i:i + batch_size], run.codebook_size))
               for i in range(0, len(indices) - batch_size + 1, batch_size)] or [
                   float(tl.code_entropy_bits(indices, run.codebook_size))]
  return {"psnr": float(np.mean(psnr)), "codebook_usage": tl.codebook_usage(indices, run.codebook_size),
          "code_entropy_bits": float(np.mean(entropies)), "num_images": int(len(indices))}


def eval_images(config, factor):
  spec, n = config.data.eval_source, config.data.eval_images
  if not spec:
    return None
  coll = images_lib.open_collection(spec, config.data.resolution, resize=config.data.resize, factor=factor,
                                    image_field=config.data.image_field)
  count = len(coll) if not n else min(n, len(coll))
  loader = images_lib.StepBatches(coll, 1, 0)
  return coll.load_array(np.arange(count)) if coll.in_memory else np.stack([loader.load(i) for i in range(count)])


def write_eval(run, params, config, eval_images, eval_path, step, writer):
  result = dict(evaluate(run, params, eval_images, config.train.batch_size), step=int(step))
  writer.write(step, {f"eval_{k}": v for k, v in result.items() if k != "step"})
  if jax.process_index() == 0:
    paths.write_text(eval_path, json.dumps(result, indent=1))
  logging.info("tokenizer eval at step %d: %s", step, result)
  if step == config.train.steps:
    console.phase(f"image tokenizer: step {step}, {config.data.eval_source} PSNR {result['psnr']:.1f} dB, "
                  f"codebook usage {100 * result['codebook_usage']:.0f} % ({result['num_images']} images)")
  return result


def write_samples(run, params, config, originals, workdir, step):
  pick = np.linspace(0, len(originals) - 1, min(config.train.num_samples, len(originals))).astype(int)
  originals = originals[pick]  # spread over the split (the embedded digits are sorted by label)
  recon = run.reconstruct(params, originals, config.train.batch_size)[0]
  path = paths.join(workdir, "samples", f"step_{int(step):06d}.png")
  if jax.process_index() == 0:
    images_lib.save_png(images_lib.pair_grid(originals, images_lib.to_uint8(recon)), path)
  return path
