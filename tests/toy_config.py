"""A train.py config for the tests' subprocess runs: the tiny BraTS demo of _train_run.py with
the toy model (tests/_toys.py, registered when this file is loaded, as a user's own family
would be), so that a run compiles in seconds.

    python train.py --config tests/toy_config.py --workdir /tmp/toy
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _toys  # noqa: E402,F401  (registers toy_conv)
from _train_run import toy_config  # noqa: E402


def get_config(arg: str = ""):
    return toy_config()
