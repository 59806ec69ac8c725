"""python -m showo_jax.train --config configs/tiny.py --workdir DIR [--config.FIELD=VALUE ...]

Trains Show-o. With the embedded default (configs/tiny.py) it first trains the text BPE and the tiny MAGVIT-v2
and pre-tokenizes the bundled digits, all inside DIR. Rerunning the same command resumes where it stopped, after
Ctrl-C (exit 130), SIGTERM (exit 0) or a crash. The terminal shows one line per phase, the progress bars,
warnings and a summary; every library record goes to DIR/train.log. Exit status: 0 done, 1 failure while
running, 2 bad input (one line naming it), 130 Ctrl-C.
"""

import sys
import time

from absl import flags

from showo_jax.common import cli
from showo_jax.common import console
from showo_jax.common import paths
from showo_jax.common import sharding
from showo_jax.config import base as config_base
from showo_jax.config import showo as showo_config

_CONFIG = config_base.define_config_flag(
    help_string="config file[:arg], e.g. configs/tiny.py or configs/showo.py:size=phi-1.5")
flags.mark_flag_as_required("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for checkpoints, metrics, samples, train.log (resumed "
                               "when it holds a checkpoint)", required=True)
_VERBOSE = flags.DEFINE_bool("verbose", False, "also print library INFO records (always in WORKDIR/train.log)")

FIELDS = (
    ("train.steps", "optimizer steps in all"),
    ("train.batch_t2i", "global rows per step of text-to-image (also train.batch_mmu, train.batch_lm)"),
    ("optimizer.lr", "peak learning rate (linear warmup over optimizer.warmup_steps, then cosine)"),
    ("train.checkpoint_every", "steps between checkpoints (train.keep_checkpoints are kept)"),
    ("train.log_every", "steps between metric rows (metrics.jsonl, TensorBoard)"),
    ("train.sample_every", "steps between sample grids and MMU answers in WORKDIR/samples (0 = none)"),
    ("mesh.data", "device mesh: data, fsdp, tensor (mesh.fsdp, mesh.tensor; -1 = the remaining devices)"),
    ("train.init_from", "start from these params: one of our checkpoints or an official Show-o state dict"),
    ("train.seed", "seed of the init, the data order and the masks"),
)


def _config_help() -> str:
  spec = config_base.config_spec(sys.argv) or "configs/tiny.py"
  try:
    config = config_base.load_config_file(spec)
  except config_base.ConfigError:
    config = None
  lines = [f"config fields people change most, as --config.FIELD=VALUE (values of {spec}):"]
  for field, text in FIELDS:
    value = config
    for part in field.split("."):
      value = value.get(part) if value is not None else None
    lines.append(f"  {field:<22} {text}" + (f" [{value!r}]" if config is not None else ""))
  lines.append("Every field and its meaning: showo_jax/config/showo.py (docs/configs.md).")
  return "\n".join(lines)


def _summary(config, workdir: str, final: dict, seconds: float) -> str:
  losses = ", ".join(f"{k[5:]} {final[k]:.3f}" for k in ("loss_t2i", "loss_mmu", "loss_lm") if final and k in final)
  step = int(final["step"]) if final and "step" in final else config.train.steps
  prompt = "a handwritten digit three" if config.data.source == "embedded" else "a photo of a cat"
  return "\n".join([
      f"done: Show-o at step {step} of {config.train.steps} ({seconds / 60:.1f} min this run"
      + (f"; last losses {losses})" if losses else ")"),
      f"  checkpoints  {paths.join(workdir, 'checkpoints')}",
      f"  metrics      {paths.join(workdir, 'metrics.jsonl')} and {paths.join(workdir, 'tensorboard')}",
      *([f"  samples      {paths.join(workdir, 'samples')}"] if paths.isdir(paths.join(workdir, "samples")) else []),
      f"  log          {paths.join(workdir, 'train.log')}",
      "next:",
      *([f"  python -m showo_jax.evaluate embedded --workdir {workdir}"] if config.data.source == "embedded" else []),
      f"  python -m showo_jax.sample t2i --checkpoint {workdir} --prompt \"{prompt}\" --num 8 --out sample.png",
  ])


def main(argv):
  del argv  # cli.absl_main refuses positional arguments
  config, workdir = _CONFIG.value, paths.resolve(_WORKDIR.value)

  def work():
    console.setup(verbose=_VERBOSE.value)  # the checks below already load libraries that log at INFO
    showo_config.validate(config)
    sharding.maybe_initialize_distributed(config.train.distributed)
    from showo_jax.training import trainer  # pylint: disable=g-import-not-at-top  # jax after distributed init
    run = trainer.check_before_work(config)  # a bad mesh, batch, path or records: one line, and no workdir made
    paths.makedirs(workdir)
    console.setup(paths.Staging(workdir).path("train.log"), verbose=_VERBOSE.value)  # synced up with metrics
    t0 = time.perf_counter()
    final = trainer.train_and_evaluate(config, workdir, run)
    print(_summary(config, workdir, final or {}, time.perf_counter() - t0))

  from showo_jax.common import checkpointing  # pylint: disable=g-import-not-at-top
  from showo_jax.common import metrics  # pylint: disable=g-import-not-at-top
  from showo_jax.common import workdir_lock  # pylint: disable=g-import-not-at-top
  return cli.run(work, bad_input=(config_base.ConfigError,),
                 failures=(metrics.NonFiniteLossError, checkpointing.NonFiniteStateError,
                           workdir_lock.WorkdirInUseError), output=workdir)


if __name__ == "__main__":
  cli.absl_main(main, __doc__, [_CONFIG, _WORKDIR, _VERBOSE], required=("config", "workdir"),
                extra_help=_config_help(), precheck=config_base.config_flag_problem)
