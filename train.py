r"""Train a model from an ml-collections config.

  python train.py --config configs/brats_swinunetr.py:demo --workdir runs/demo
  python train.py --config configs/brats_swinunetr.py --workdir runs/brats \
      --config.data.root=/data/BraTS2021 --config.batch_size=8

Running the same command again on the same workdir resumes where it stopped. Compiled
programs are kept in a persistent cache (--compilation_cache, default
$JAXBRAIN_COMPILATION_CACHE or ~/.cache/jaxbrain/xla; "" turns it off), so a rerun or a
resumed run compiles nothing it compiled before.

  python train.py --config configs/brain_age.py:demo --print_config    # every field, then exit
  python train.py --config configs/brain_age.py:demo --workdir runs/x --check

--print_config prints the resolved config (presets and overrides applied; one
``path = value`` line per field, the names --config.path=value overrides) and the model's and
objective's arguments left to their defaults, and exits. --check resolves the config, builds
the data and the first batch's shapes, initialises the model and loads its pretrained weights
(init.*), prints what it found and exits before compiling the training step. List fields take
Python or JSON lists (--config.data.collections='[{"root": "/data/ukb"}]'); a key the config
does not have is refused with the keys of its section.
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
flags.DEFINE_bool("print_config", False, "print the resolved config and exit")
flags.DEFINE_bool("check", False, "check config, data and initialisation, then exit")
flags.mark_flags_as_required(["config"])


def _data_errors_in_one_line(main):
    """``main`` with bad input data (a DataError, also one raised in a data-loading worker)
    ending the program with its message alone, no traceback."""
    def run(argv):
        try:
            return main(argv)
        except Exception as e:
            from jaxbrain.data.nifti import DataError
            cause = e
            while cause is not None and not isinstance(cause, DataError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise SystemExit(f"data error: {cause}") from None
    return run


@_data_errors_in_one_line
def main(argv):
    del argv
    if flags.FLAGS.print_config:
        from jaxbrain.training.config import describe
        overridden = [name.split(".", 1)[1] for name in flags.FLAGS
                      if name.startswith("config.") and flags.FLAGS[name].present]
        print(describe(flags.FLAGS.config, overridden))
        return
    if not flags.FLAGS.workdir:
        raise app.UsageError("--workdir is required (the run directory)")
    if not flags.FLAGS["verbosity"].present:  # keep Orbax's INFO lines out unless asked for
        logging.set_verbosity(logging.WARNING)
    from jaxbrain.parallel import enable_compilation_cache
    from jaxbrain.training.loop import train_and_evaluate
    enable_compilation_cache(flags.FLAGS.compilation_cache)
    if flags.FLAGS.check:
        from jaxbrain.training.check import check_run
        print(check_run(flags.FLAGS.config, flags.FLAGS.workdir))
        return
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from jaxbrain.training.config import parse_flags
    app.run(main, flags_parser=parse_flags)
