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


def test_a_run_with_an_ema_teacher_is_read_as_its_teacher(tmp_path):
    """DINO-style runs keep an EMA teacher in the objective state: load_run (and so init.orbax,
    the probes and convert to-torch) reads it by default, the student on request; the
    teacher's centre vectors and the optimizer state are not read."""
    import pytest
    with open(os.path.join(tmp_path, runs.CONFIG), "w") as f:
        json.dump({"model": {"name": "vit"}, "objective": {"name": "dino"}}, f)
    ckpt = Checkpoints(str(tmp_path), keep=1, asynchronous=False)
    student, teacher = {"w": np.ones((2,), np.float32)}, {"w": np.full((2,), 7.0, np.float32)}
    ckpt.save(3, {"params": student, "opt_state": {"mu": np.zeros((2,), np.float32)},
                  "objective": {"teacher": teacher, "center": np.zeros((4,), np.float32)}}, None)
    ckpt.close()
    run = runs.load_run(str(tmp_path))
    assert run.weights == "teacher" and run.step == 3
    np.testing.assert_array_equal(run.variables["params"]["w"], teacher["w"])
    run = runs.load_run(str(tmp_path), weights="student")
    assert run.weights == "params"
    np.testing.assert_array_equal(run.variables["params"]["w"], student["w"])
    with pytest.raises(ValueError, match="weights='ema'"):
        runs.load_run(str(tmp_path), weights="ema")

    plain = tmp_path / "plain"
    plain.mkdir()
    _run(plain, {"model": {"name": "vit"}, "objective": {"name": "regression"}}, "val_mae", [5.0])
    assert runs.load_run(str(plain)).weights == "params"
    with pytest.raises(runs.RunError, match="no EMA teacher"):
        runs.load_run(str(plain), weights="teacher")
