"""Opening a run: the checkpoint eval.py and convert take by default is the best by the run's
own validation rule (its config's best_metric, else its objective's), not the latest."""

import json
import os

import numpy as np

from jaxbrain import runs
from jaxbrain.training.checkpoint import Checkpoints


def _run(workdir, config, metric, values):
    with open(os.path.join(workdir, runs.CONFIG), "w") as f:
        json.dump(config, f)
    ckpt = Checkpoints(str(workdir), keep=1, best_metric=metric,
                       best_mode=runs.best_rule(str(workdir))[1], asynchronous=False)
    for step, value in enumerate(values, 1):
        ckpt.save(step, {"params": {"w": np.full((2,), step, np.float32)}}, None,
                  metrics={metric: value})
    ckpt.close()


def test_best_checkpoint_by_the_config_rule(tmp_path):
    _run(tmp_path, {"best_metric": "val_loss", "best_mode": "min",
                    "objective": {"name": "ssl"}}, "val_loss", [3.0, 1.0, 2.0, 2.5])
    assert runs.best_rule(str(tmp_path)) == ("val_loss", "min")
    assert runs.choose_step(str(tmp_path)) == 2
    assert runs.choose_step(str(tmp_path), 4) == 4


def test_best_checkpoint_by_the_objective_rule(tmp_path):
    _run(tmp_path, {"objective": {"name": "regression"}}, "val_mae", [5.0, 4.0, 4.5])
    assert runs.best_rule(str(tmp_path)) == ("val_mae", "min")
    assert runs.choose_step(str(tmp_path)) == 2
