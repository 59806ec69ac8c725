"""training/samples.py: the in-training sample writer's files (PNG grid of T2I samples, MMU answers)."""

import os

import jax
import numpy as np
from PIL import Image

from showo_jax.common import sharding
from showo_jax.data import embedded
from showo_jax.data import images as images_lib
from showo_jax.data import records
from showo_jax.inference import pipeline
from showo_jax.training import prepare
from showo_jax.training import samples
from showo_jax.training import trainer
from tests import train_fixtures

RES = 32  # the fixture's 16 image tokens: a 4×4 grid from a tokenizer that downsamples by 8


class _Writer:
  def __init__(self):
    self.texts = []

  def write_text(self, step, tag, text):
    self.texts.append((step, tag, text))


def test_sample_writer_files(tmp_path):
  config = train_fixtures.tiny_config(str(tmp_path / "data"))
  config.train.update(sample_steps=3, sample_guidance=1.5)
  data = prepare.prepare_training_data(config, str(tmp_path / "run"))
  data.image_tokenizer = str(tmp_path / "magvit.npz")
  train_fixtures.tiny_magvit_npz(data.image_tokenizer)
  data.eval_sources = {"images": records.open_source(config.data.t2i_records)}
  run = trainer.Run(config, mesh=sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
  params = jax.tree.map(np.asarray, run.init_state(0).params)
  writer = _Writer()
  sampler = samples.SampleWriter(config, data, str(tmp_path / "run"))
  sampler.write(7, params, writer)

  folder = tmp_path / "run" / "samples"
  assert sorted(os.listdir(folder)) == ["step_0000007.png", "step_0000007.txt"]
  grid = np.asarray(Image.open(folder / "step_0000007.png"))
  assert grid.shape == (RES + 2, 10 * (RES + 1) + 1, 3)  # one row of the 10 digit prompts, 1-pixel gaps
  # The cells are the T2I samples of the 10 prompts with the config's steps and CFG, seeded by the step.
  pipe = pipeline.Pipeline(params, config, data.text_tokenizer, sampler.image_tokenizer)
  prompts = [embedded.caption(d) for d in range(10)]
  want = pipe.t2i(prompts, steps=3, guidance=1.5, seed=7)
  np.testing.assert_array_equal(grid, images_lib.image_grid(want))
  assert not np.array_equal(want, pipe.t2i(prompts, steps=3, guidance=0.0, seed=7))  # the CFG weight matters

  lines = (folder / "step_0000007.txt").read_text().splitlines()
  assert lines[:10] == [f"t2i prompt {i}: {p}" for i, p in enumerate(prompts)]
  mmu = lines[10:]
  # 10 evaluation images spread over the split: here 0, 7, 14, …, 63, whose labels (i % 10) are all 10 digits.
  source = data.eval_sources["images"]
  picks = [0, 7, 14, 21, 28, 35, 42, 49, 56, 63]
  assert len(mmu) == 10 and sorted(source[i]["label"] for i in picks) == list(range(10))
  for i, line in zip(picks, mmu):
    assert line.startswith(f"{source[i]['caption']} | {embedded.QUESTION} -> "), line
  assert [(s, t) for s, t, _ in writer.texts] == [(7, "mmu")] and writer.texts[0][2] == "\n\n".join(mmu)
