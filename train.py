r"""Train a model from an ml-collections config.

  python train.py --config configs/brats_swinunetr.py:demo --workdir runs/demo
  python train.py --config configs/brats_swinunetr.py --workdir runs/brats \
      --config.data.root=/data/BraTS2021 --config.batch_size=8

Running the same command again on the same workdir resumes where it stopped. Compiled
programs are kept in a persistent cache (--compilation_cache, default
$JAXBRAIN_COMPILATION_CACHE or ~/.cache/jaxbrain/xla; "" turns it off), so a rerun or a
resumed run compiles nothing it compiled before.
"""

import os

# XLA's own log lines (e.g. its slow-compile banner) stay out of a normal run.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "config file, optionally file.py:preset",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, config)")
flags.DEFINE_string("compilation_cache", None, "persistent compilation cache folder ('' = off)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # keep Orbax's INFO lines out unless asked for
        logging.set_verbosity(logging.WARNING)
    from jaxbrain.parallel import enable_compilation_cache
    from jaxbrain.training.loop import train_and_evaluate
    enable_compilation_cache(flags.FLAGS.compilation_cache)
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
