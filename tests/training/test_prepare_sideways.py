"""The fine-tuning demo's data (config.data.embedded_task = "sideways"): the new task's records mixed with the
default ones, built with the configured image tokenizer (the main job's, in the demo)."""

import os

import numpy as np

from showo_jax.config import base as config_base
from showo_jax.data import embedded
from showo_jax.data import images
from showo_jax.data import pipeline
from showo_jax.interop import checkpoints
from showo_jax.tokenizer import pretokenize
from showo_jax.training import prepare
from tests import train_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sideways_task_mixes_turned_and_upright_digits_with_the_default_tasks(tmp_path, monkeypatch):
  digits, labels = embedded.load_mnist()
  monkeypatch.setattr(embedded, "load_mnist", lambda: (digits[:100], labels[:100]))  # 80 training digits: fast
  tokenizer = str(tmp_path / "tokenizer" / "magvit.npz")
  train_fixtures.tiny_magvit_npz(tokenizer)  # 32 px → 16 tokens of 64 codes
  config = config_base.load_config_file(os.path.join(ROOT, "configs", "tiny_finetune.py") + f":base={tmp_path}")
  config.text_tokenizer.path = ""  # trained into the workdir here (the demo reads the base run's)
  config.tokenizer.checkpoint = tokenizer
  config.data.update(num_image_tokens=16, embedded_mmu_copies=1)
  data = prepare.prepare_training_data(config, str(tmp_path / "run"))
  t2i, mmu = data.sources["t2i"], data.sources["mmu"]
  assert isinstance(t2i, pipeline.Mixture) and isinstance(mmu, pipeline.Mixture)
  assert [s[0]["caption"].endswith(" on its side") for s in t2i.sources] == [True, False]
  assert [(s[0]["question"], s[0]["answer"] in ("yes", "no")) for s in mmu.sources] == [
      (embedded.SIDEWAYS_QUESTION, True), (embedded.SIDEWAYS_QUESTION, True), (embedded.QUESTION, False)]
  assert [s[7]["answer"] for s in mmu.sources[:2]] == ["yes", "no"]
  # The turned records hold the tokens of the turned training digits, through the configured tokenizer.
  encoder = pretokenize.Encoder(*checkpoints.load_tokenizer(tokenizer), 8, 32)
  pictures = [images.ImageCollection("embedded:train:sideways", 32).load(i)[0] for i in range(3)]
  codes, _ = encoder(np.stack(pictures))
  np.testing.assert_array_equal(np.stack([t2i.sources[0][i]["image_tokens"] for i in range(3)]), codes)
  assert len(t2i.sources[0]) == len(mmu.sources[1]) == 80
