r"""Train a model from an ml-collections config.

  python train.py --config configs/brats_swinunetr.py:demo --workdir runs/demo
  python train.py --config configs/brats_swinunetr.py --workdir runs/brats \
      --config.data.root=/data/BraTS2021 --config.batch_size=8

Running the same command again on the same workdir resumes where it stopped.
"""

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "config file, optionally file.py:preset",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, config)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # keep Orbax's INFO lines out unless asked for
        logging.set_verbosity(logging.WARNING)
    from jaxbrain.training.loop import train_and_evaluate
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
