"""The training loop on a tiny BraTS demo: exact resume, 1 device = 8 devices = 2 processes,
SIGTERM, NaN handling and logs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _train_run import losses, tiny_config  # noqa: E402

from jaxbrain.training.loop import NonFiniteLossError, train_and_evaluate  # noqa: E402
from jaxbrain.training.metrics_log import read_events  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "_train_run.py")


def _final_state(workdir, step):
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def _leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """4 uninterrupted steps on one device."""
    workdir = str(tmp_path_factory.mktemp("ref"))
    train_and_evaluate(tiny_config(), workdir)
    return workdir


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(reference, tmp_path):
    workdir = str(tmp_path)
    train_and_evaluate(tiny_config(), workdir, stop_after=2)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    train_and_evaluate(tiny_config(), workdir)
    assert losses(workdir) == losses(reference)
    ref, got = _final_state(reference, 4), _final_state(workdir, 4)
    assert int(got["step"]) == 4
    for a, b in zip(_leaves(ref), _leaves(got)):
        np.testing.assert_array_equal(a, b)


def test_logs_config_and_tensorboard(reference):
    config = json.load(open(os.path.join(reference, "config.json")))
    assert config["model"]["feature_size"] == 12 and config["total_steps"] == 4
    events = [f for f in os.listdir(os.path.join(reference, "tensorboard"))]
    assert len(events) == 1
    logged = read_events(os.path.join(reference, "tensorboard", events[0]))
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    np.testing.assert_allclose([s["train/loss"] for _, s in logged], losses(reference), rtol=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(args, **kw):
    out = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True,
                         timeout=900, **kw)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_devices_and_two_processes_match_one_device(reference, tmp_path):
    ref = losses(reference)
    eight = _run([tmp_path / "eight", 8])
    assert eight["devices"] == 8
    np.testing.assert_allclose(eight["losses"], ref, rtol=2e-5)
    port = _free_port()
    workdir = tmp_path / "two"
    procs = [subprocess.Popen([sys.executable, SCRIPT, str(workdir), "4", f"localhost:{port}", "2", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    two = json.loads(outs[0][0].strip().splitlines()[-1])
    assert two["devices"] == 8
    np.testing.assert_allclose(two["losses"], ref, rtol=2e-5)


def _train_cmd(workdir, total_steps):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [sys.executable, os.path.join(root, "train.py"),
            "--config", os.path.join(root, "configs", "brats_swinunetr.py:demo"), "--workdir", workdir,
            f"--config.total_steps={total_steps}", "--config.ckpt_every=1000", "--config.log_every=1",
            "--config.eval_every=0", "--config.batch_size=1", "--config.data.roi=(32,32,32)",
            "--config.data.synthetic.n=3", "--config.data.synthetic.shape=(40,40,32)",
            "--config.data.synthetic.anatomy=procedural", "--config.data.fold=1",
            "--config.data.augment=rand_crop(roi=(32,32,32)), brats_regions"]


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
    workdir = str(tmp_path)
    proc = subprocess.Popen(_train_cmd(workdir, 1000), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
    assert len(saved) == 1 and saved[0] >= 2 and "rerun to resume" in out
    resumed = subprocess.run(_train_cmd(workdir, saved[0] + 1), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {os.path.join(workdir, 'checkpoints')}/{saved[0]}" in resumed.stdout
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))[-1] == saved[0] + 1


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(**{"total_steps": 20, "ckpt_every": 1, "batch_size": 2})
    config.optim.update(name="sgd", lr=1e6, momentum=0.0, schedule="constant")
    with pytest.raises(NonFiniteLossError, match="loss is (nan|inf).*last good checkpoint: step"):
        train_and_evaluate(config, str(tmp_path))
    steps = sorted(int(s) for s in os.listdir(os.path.join(tmp_path, "checkpoints")))
    assert steps and steps[-1] < 20
    assert all(np.isfinite(a).all() for a in _leaves(_final_state(str(tmp_path), steps[-1])["params"]))
