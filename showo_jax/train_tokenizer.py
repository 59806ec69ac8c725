"""python -m showo_jax.train_tokenizer --config configs/magvit2.py:size=tiny --workdir DIR [--config.FIELD=VALUE ...]

Trains the MAGVIT-v2 image tokenizer (the work is showo_jax.tokenizer.trainer.train_tokenizer, which the Show-o
data preparation also calls). The trained tokenizer is DIR/checkpoints (EMA weights): `--checkpoint DIR` of
tokenize_images and build_dataset, `config.tokenizer.checkpoint` of train. Rerunning resumes; Ctrl-C (exit 130)
and SIGTERM (exit 0) save first. Library records go to DIR/train.log. Exit status: 0 done, 1 failure while
running, 2 bad input, 130 Ctrl-C.
"""


from absl import flags

from showo_jax.common import cli
from showo_jax.common import console
from showo_jax.common import paths
from showo_jax.config import base as config_base
from showo_jax.tokenizer import config as tokenizer_config

_CONFIG = config_base.define_config_flag(help_string="config file[:arg], e.g. configs/magvit2.py:size=tiny")
flags.mark_flag_as_required("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for checkpoints, metrics, sample grids, train.log",
                               required=True)
_VERBOSE = flags.DEFINE_bool("verbose", False, "also print library INFO records (always in WORKDIR/train.log)")

_FIELDS_HELP = """config fields people change most, as --config.FIELD=VALUE (configs/magvit2.py):
  train.steps, train.batch_size, optimizer.lr, train.checkpoint_every, train.log_every, train.sample_every,
  data.source (image folder | records:FOLDER | tfds:NAME[:SPLIT]@DIR | embedded:train), data.resolution,
  disc.enabled, disc.start_step, mesh.data / mesh.fsdp (every field: showo_jax/tokenizer/config.py)"""


def main(argv):
  del argv  # cli.absl_main refuses positional arguments
  config, workdir = _CONFIG.value, paths.resolve(_WORKDIR.value)

  def work():
    tokenizer_config.validate_training(config)
    from showo_jax.tokenizer import trainer as tokenizer_trainer  # pylint: disable=g-import-not-at-top
    checked = tokenizer_trainer.check_before_work(config, workdir)  # a bad mesh, batch or source: no workdir
    paths.makedirs(workdir)
    console.setup(paths.Staging(workdir).path("train.log"), verbose=_VERBOSE.value)  # synced up with metrics
    console.phase(f"image tokenizer: training MAGVIT-v2 ({config.train.steps} steps) -> {workdir}")
    folder = tokenizer_trainer.train_tokenizer(config, workdir, checked)
    print(f"tokenizer checkpoint: {folder}")

  from showo_jax.common import checkpointing  # pylint: disable=g-import-not-at-top
  from showo_jax.common import metrics  # pylint: disable=g-import-not-at-top
  from showo_jax.common import workdir_lock  # pylint: disable=g-import-not-at-top
  return cli.run(work, bad_input=(config_base.ConfigError, checkpointing.CheckpointMismatchError),
                 failures=(metrics.NonFiniteLossError, checkpointing.NonFiniteStateError,
                           workdir_lock.WorkdirInUseError), output=workdir)


if __name__ == "__main__":
  cli.absl_main(main, __doc__, [_CONFIG, _WORKDIR, _VERBOSE], required=("config", "workdir"),
                extra_help=_FIELDS_HELP, precheck=config_base.config_flag_problem)
