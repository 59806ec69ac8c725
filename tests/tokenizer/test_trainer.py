"""MAGVIT-v2 tokenizer training and pre-tokenization: exact resume, GAN path, metrics, round trip, bad input."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from showo_jax.common import checkpointing
from showo_jax.common import xla_options
from showo_jax.config import base as config_base
from showo_jax.data import images
from showo_jax.data import records
from showo_jax.tokenizer import config as tokenizer_config
from showo_jax.tokenizer import losses as tl
from showo_jax.tokenizer import magvit
from showo_jax.tokenizer import pretokenize
from showo_jax.tokenizer import trainer as tt


# Unoptimised XLA (faster compiles); one worker runs the whole module (setup.cfg: --dist loadgroup), so its trained
# module fixtures are built once.
pytestmark = [pytest.mark.usefixtures("fast_compiles"), pytest.mark.xdist_group("tokenizer_trainer")]


def _micro(**overrides):
  """A tokenizer small enough to compile in seconds: 2 levels (factor 2), 8/16 channels, 4 bits, 32 px."""
  c = tokenizer_config.training_config("tiny")
  for tower in (c.encoder, c.decoder):
    tower.ch, tower.ch_mult, tower.num_res_blocks = 8, [1, 2], [1, 1]
  c.norm_groups, c.codebook_bits, c.resolution = 8, 4, 32
  c.train.update(steps=3, batch_size=8, log_every=1, checkpoint_every=0, sample_every=0, num_samples=4)
  c.optimizer.warmup_steps = 10  # the lr of steps 0-2 does not depend on train.steps
  c.data.eval_images = 16
  c.disc.update(ch=8, num_layers=2)
  for dotted, value in overrides.items():
    parent, leaf = dotted.split("__")
    c[parent][leaf] = value
  return tokenizer_config.validate_training(c)


def _restore(folder, config, step):
  run = tt.TokenizerRun(config)
  ckpt = checkpointing.Checkpointer(folder, async_save=False)
  state, _ = ckpt.restore(step, run.abstract_state)
  ckpt.close()
  return state


def _assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(workdir, checkpoint folder, config) of a run of 2 steps, then resumed to 3."""
  workdir = str(tmp_path_factory.mktemp("tok"))
  config = _micro()
  config.train.steps = 2
  tt.train_tokenizer(config, workdir)
  config = _micro()
  folder = tt.train_tokenizer(config, workdir)
  return workdir, folder, config


def test_resume_is_bit_exact(trained, tmp_path):
  workdir, folder, config = trained
  ckpt = checkpointing.Checkpointer(folder)
  assert ckpt.all_steps() == [2, 3]
  ckpt.close()
  straight = tt.train_tokenizer(_micro(), str(tmp_path))
  a, b = _restore(folder, config, 3), _restore(straight, config, 3)
  assert int(a.step) == 3
  _assert_trees_equal(a, b)  # params, optimizer state and EMA, bit for bit
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3]
  for key in ("loss", "l1", "l2", "quantizer_loss", "entropy_loss", "psnr", "code_entropy_bits", "grad_norm", "lr"):
    assert np.isfinite(train_rows[-1][key]), key
  evaluation = json.load(open(os.path.join(workdir, tt.EVAL_FILE)))
  assert evaluation["step"] == 3 and evaluation["num_images"] == 16 and 0 < evaluation["codebook_usage"] <= 1
  assert sorted(os.listdir(os.path.join(workdir, "samples"))) == ["step_000002.png", "step_000003.png"]  # run ends
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  # Finished: a second call returns at once.
  assert tt.train_tokenizer(_micro(), workdir) == folder


def test_load_tokenizer_prefers_ema(trained):
  workdir, folder, config = trained
  state = _restore(folder, config, 3)
  for path in (workdir, folder):
    params, loaded_config = tt.load_tokenizer(path)
    _assert_trees_equal(params, state.ema_params)
    assert loaded_config.codebook_bits == 4 and loaded_config.encoder.ch_mult == [1, 2]
  with pytest.raises(FileNotFoundError, match=r"nowhere: no such tokenizer checkpoint"):
    tt.load_tokenizer(os.path.join(workdir, "nowhere"))


def test_incompatible_resume_names_the_field(trained):
  workdir, _, _ = trained
  config = _micro()
  config.codebook_bits = 5
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"config\.codebook_bits=4.*codebook_bits=5"):
    tt.train_tokenizer(config, workdir)


def _feature_net(path):
  rng = np.random.default_rng(0)
  np.savez(path, conv0_kernel=rng.normal(size=(3, 3, 3, 4)).astype(np.float32), conv0_bias=np.zeros(4, np.float32),
           conv1_kernel=rng.normal(size=(3, 3, 4, 4)).astype(np.float32), conv1_bias=np.zeros(4, np.float32),
           pool_after=np.array([0]), feature_layers=np.array([0, 1]), lin1=np.ones(4, np.float32))
  return str(path)


def test_discriminator_lecam_and_adaptive_weight(tmp_path):
  config = _micro(disc__enabled=True, disc__start_step=1, disc__loss="non_saturating", train__ema_decay=0.9,
                  optimizer__warmup_steps=0,  # no warmup: the discriminator's first update has a non-zero lr
                  loss__perceptual_weight=0.1, loss__perceptual_weights=_feature_net(tmp_path / "vgg.npz"))
  run = tt.TokenizerRun(config)
  data = images.StepBatches(images.open_collection("embedded:train", 32), 8, seed=0)
  state = run.init_state(0)
  copy = lambda s: jax.tree.map(jnp.copy, s)  # pylint: disable=unnecessary-lambda-assignment
  s0 = copy(state)
  state, m0 = run.step(state, data.batch(0), jax.random.key(0))
  assert float(m0["adaptive_weight"]) == 0.0  # before start_step: no adversarial term, D untouched
  _assert_trees_equal(state.disc_params, s0.disc_params)
  # EMA formula: ema_1 = d·ema_0 + (1 − d)·params_1, with ema_0 = params_0.
  expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, s0.params, state.params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), state.ema_params, expected)
  s1 = copy(state)
  state, m1 = run.step(state, data.batch(1), jax.random.key(0))
  for key in ("loss", "g_adv", "d_loss", "lecam", "adaptive_weight", "logits_real", "logits_fake", "perceptual"):
    assert np.isfinite(float(m1[key])), key
  assert float(m1["adaptive_weight"]) > 0
  assert not np.array_equal(np.asarray(state.disc_params["conv_out"]["kernel"]),
                            np.asarray(s1.disc_params["conv_out"]["kernel"]))
  # The adaptive weight against a direct recomputation from full gradients.
  x = images.to_float(jnp.asarray(data.batch(1)))

  def full(params):
    recon = run.forward(params, x)[0]
    return run.rec_loss(x, recon)[0], run.adv_loss(s1.disc_params, recon)

  # Compiled like the train step (the same XLA:CPU options): the ratio of two gradient norms is sensitive to
  # the summation order of the convolutions.
  grads = jax.jit(lambda p: (jax.grad(lambda q: full(q)[0])(p), jax.grad(lambda q: full(q)[1])(p)),
                  compiler_options=xla_options.conv_net())(s1.params)
  g_rec, g_adv = (g["decoder"]["conv_out"]["kernel"] for g in grads)
  direct = np.linalg.norm(np.asarray(g_rec)) / (np.linalg.norm(np.asarray(g_adv)) + 1e-4)
  np.testing.assert_allclose(float(m1["adaptive_weight"]), config.disc.weight * direct, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(s1.lecam_ema), 0.0)  # the LeCAM anchors move only once D trains
  assert np.all(np.asarray(state.lecam_ema) != 0.0)


def test_gan_losses_on_literals():
  real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 1.0])
  np.testing.assert_allclose(tl.discriminator_loss(real, fake, "hinge"), 0.5 * ((0 + 0.5 + 2) / 3 + (0 + 1 + 2) / 3))
  np.testing.assert_allclose(tl.generator_loss(fake, "hinge"), 1.0 / 3, rtol=1e-6)
  sp = lambda v: np.log1p(np.exp(v))  # pylint: disable=unnecessary-lambda-assignment
  np.testing.assert_allclose(tl.discriminator_loss(real, fake, "non_saturating"),
                             np.mean(sp(-np.asarray(real))) + np.mean(sp(np.asarray(fake))), rtol=1e-6)
  np.testing.assert_allclose(tl.lecam_regularizer(real, fake, 0.5, 0.25),
                             np.mean(np.maximum(np.asarray(real) - 0.25, 0) ** 2)
                             + np.mean(np.maximum(0.5 - np.asarray(fake), 0) ** 2), rtol=1e-6)
  np.testing.assert_allclose(tl.adaptive_weight(jnp.array([3.0, 4.0]), jnp.array([0.0, 1.0]), 1e4), 5 / 1.0001,
                             rtol=1e-6)
  assert float(tl.adaptive_weight(jnp.ones(3), jnp.zeros(3), 10.0)) == 10.0  # clipped
  with pytest.raises(ValueError, match="not one of"):
    tl.generator_loss(fake, "wasserstein")


def test_ema_psnr_usage_entropy_on_literals():
  ema = tl.ema_update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 0.0])}, 0.75)
  np.testing.assert_allclose(ema["w"], [1.5, 1.5])
  x = jnp.zeros((2, 2, 2, 1))  # gray 0.5 on [0, 1]
  y = jnp.stack([jnp.full((2, 2, 1), 0.2), jnp.zeros((2, 2, 1))])  # 0.6 → mse 0.01 → 20 dB; identical → cap
  np.testing.assert_allclose(tl.psnr(x, y), [20.0, 100.0], rtol=1e-5)
  np.testing.assert_allclose(tl.psnr(jnp.ones((1, 1, 1, 1)), jnp.full((1, 1, 1, 1), 5.0)), [100.0])  # clamped
  assert tl.codebook_usage(np.array([[0, 3], [3, 3]]), 8) == 0.25
  np.testing.assert_allclose(tl.code_entropy_bits(jnp.array([0, 1, 2, 3]), 16), 2.0, rtol=1e-6)
  np.testing.assert_allclose(tl.code_entropy_bits(jnp.array([5, 5, 5]), 16), 0.0, atol=1e-7)


def test_perceptual_loss_weights(tmp_path):
  rng = np.random.default_rng(0)
  net = tl.load_feature_net(_feature_net(tmp_path / "vgg.npz"))
  x = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  assert float(tl.perceptual_loss(net, x, x)) == 0.0
  assert float(tl.perceptual_loss(net, x, -x)) > 0.0
  missing = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match=r"missing\.npz: perceptual feature-network weights not found"):
    tt.TokenizerRun(_micro(loss__perceptual_weight=0.1, loss__perceptual_weights=missing))
  with pytest.raises(config_base.ConfigError, match=r"config\.loss\.perceptual_weights"):
    _micro(loss__perceptual_weight=0.1)
  np.savez(tmp_path / "bad.npz", w=np.zeros(3))
  with pytest.raises(ValueError, match=r"bad\.npz: expected conv0_kernel"):
    tl.load_feature_net(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("field, value, needle", [
    ("train__ema_decay", 1.0, "config.train.ema_decay"),
    ("disc__loss", "wgan", "config.disc.loss"),
    ("data__resolution", 31, "config.data.resolution"),
    ("data__source", "", "config.data.source"),
    ("train__batch_size", 0, "config.train.batch_size"),
])
def test_training_config_errors(field, value, needle):
  with pytest.raises(config_base.ConfigError, match=needle.replace(".", r"\.")):
    _micro(**{field: value})


def _write_folder(folder):
  """5 images of different sizes/modes, captions from captions.jsonl and a .txt, plus one corrupt file."""
  rng = np.random.default_rng(1)
  os.makedirs(folder)
  specs = [("a.png", "RGB", (40, 32)), ("b.png", "L", (32, 32)), ("c.png", "RGBA", (32, 48)),
           ("d.jpg", "RGB", (64, 64)), ("e.png", "RGB", (33, 35))]
  for name, mode, (w, h) in specs:
    shape = (h, w) if mode == "L" else (h, w, len(mode))
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(os.path.join(folder, name))
  with open(os.path.join(folder, "broken.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n garbage")
  with open(os.path.join(folder, images.CAPTIONS_FILE), "w") as f:
    f.write(json.dumps({"file": "a.png", "caption": "first", "label": 1}) + "\n")
    f.write(json.dumps({"file": "c.png", "caption": "third"}) + "\n")
  with open(os.path.join(folder, "d.txt"), "w") as f:
    f.write("fourth\n")
  return ["a.png", "b.png", "c.png", "d.jpg", "e.png"]


def test_pretokenize_round_trip(trained, tmp_path):
  workdir, _, _ = trained
  params, config = tt.load_tokenizer(workdir)
  folder, out = str(tmp_path / "imgs"), str(tmp_path / "tokens")
  names = _write_folder(folder)
  stats = pretokenize.pretokenize(workdir, folder, out, batch_size=3, records_per_shard=2)
  assert stats["num_records"] == 5 and stats["corrupt"] == 1 and stats["num_shards"] == 3
  assert "broken.png" in stats["corrupt_examples"][0]
  source = records.open_source(out)
  rows = [source[i] for i in range(len(source))]
  model = tokenizer_config.magvit_from_config(config)
  pixels = np.stack([images.load_image(os.path.join(folder, n), 32) for n in names])
  encode = jax.jit(lambda p, x: model.apply({"params": p}, images.to_float(x), method=magvit.MagvitV2.encode)[2])
  want = encode(params, jnp.asarray(pixels))
  got = np.stack([r["image_tokens"] for r in rows])
  assert got.dtype == np.int16 and got.shape == (5, 16 * 16)
  np.testing.assert_array_equal(got, np.asarray(want).reshape(5, -1))
  assert [r.get("caption") for r in rows] == ["first", None, "third", "fourth", None]
  assert rows[0]["label"] == 1
  meta = records.read_meta(out)
  assert meta["token_grid"] == [16, 16] and meta["corrupt"] == 1 and meta["codebook_bits"] == 4
  # A rerun skips the finished shards; a different input refuses to mix into the folder.
  again = pretokenize.pretokenize(workdir, folder, out, batch_size=3, records_per_shard=2)
  assert again["shards_skipped"] == 3 and again["num_records"] == 5 and again["corrupt"] == 1
  with pytest.raises(ValueError, match=r"holds a pre-tokenization with input="):
    pretokenize.pretokenize(workdir, "embedded:test", out)


def test_pretokenize_embedded_and_corrupt_records(trained, tmp_path):
  workdir, _, _ = trained
  loaded = tt.load_tokenizer(workdir)
  out = str(tmp_path / "mnist")
  stats = pretokenize.pretokenize(loaded, "embedded:test", out, batch_size=100)
  assert stats["num_records"] == 500 and stats["corrupt"] == 0
  row = records.open_source(out)[7]
  assert set(row) == {"image_tokens", "caption", "label", "question", "answer"}
  assert row["question"] == "What digit is this?" and row["caption"].endswith(row["answer"])
  # A record source with one undecodable record and one record holding a corrupt image.
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  from flax import serialization  # pylint: disable=g-import-not-at-top
  src = tmp_path / "src"
  src.mkdir()
  writer = ArrayRecordWriter(str(src / "data-00000-of-00001.array_record"), "group_size:1")
  good = np.zeros((32, 32, 3), np.uint8)
  for example in ({"image": good, "caption": "ok"}, None, {"image": b"not an image", "caption": "bad"},
                  {"image": good, "caption": "ok2"}):
    writer.write(b"\xc1garbage" if example is None else serialization.msgpack_serialize(example))
  writer.close()
  (src / records.META).write_text(json.dumps({"num_records": 4, "name": "data", "num_shards": 1}))
  stats = pretokenize.pretokenize(loaded, f"records:{src}", str(tmp_path / "out"))
  assert stats["num_records"] == 2 and stats["corrupt"] == 2
  rows = records.open_source(str(tmp_path / "out"))
  assert [rows[i]["caption"] for i in range(2)] == ["ok", "ok2"]


def test_pretokenize_no_resize(trained, tmp_path):
  workdir, _, _ = trained
  folder = tmp_path / "odd"
  folder.mkdir()
  Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(folder / "wide.png")
  Image.fromarray(np.zeros((33, 32, 3), np.uint8)).save(folder / "odd.png")
  stats = pretokenize.pretokenize(workdir, str(folder), str(tmp_path / "out"), resize=False)
  assert stats["num_records"] == 1 and stats["corrupt"] == 1
  assert "odd.png: size 32x33 (WxH) is not divisible by the tokenizer's downsampling factor 2" in \
      stats["corrupt_examples"][0]
  row = records.open_source(str(tmp_path / "out"))[0]
  assert row["token_grid"].tolist() == [16, 24] and row["image_tokens"].shape == (16 * 24,)
