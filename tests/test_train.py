"""The training loop on a tiny BraTS demo: exact resume, SIGTERM, NaN handling and logs (a
multi-process run: tests/test_parallel.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _toys  # noqa: E402,F401  (registers toy_conv)
from _train_run import losses, tiny_config, toy_config  # noqa: E402

from jaxbrain.training.loop import NonFiniteLossError, train_and_evaluate  # noqa: E402
from test_metrics_log import read_tensorboard_scalars  # noqa: E402

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


@pytest.mark.xdist_group(name="reference_run")
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


@pytest.mark.xdist_group(name="reference_run")
def test_logs_config_and_tensorboard(reference):
    config = json.load(open(os.path.join(reference, "config.json")))
    assert config["model"]["feature_size"] == 12 and config["total_steps"] == 4
    events = [f for f in os.listdir(os.path.join(reference, "tensorboard"))]
    assert len(events) == 1
    logged = read_tensorboard_scalars(os.path.join(reference, "tensorboard", events[0]))
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    np.testing.assert_allclose([s["train/loss"] for _, s in logged], losses(reference), rtol=1e-6)


def _train_cmd(workdir):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [sys.executable, os.path.join(root, "train.py"),
            "--config", os.path.join(root, "tests", "toy_config.py"), "--workdir", workdir,
            "--config.total_steps=100000", "--config.ckpt_every=100000", "--config.log_every=1",
            "--config.batch_size=1", "--config.data.synthetic.n=3",
            "--config.data.synthetic.shape=(40,40,32)"]


def _run_until_logged(workdir, lines):
    """Starts train.py, sends SIGTERM once metrics.jsonl has ``lines`` lines, returns stdout."""
    proc = subprocess.Popen(_train_cmd(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (
            os.path.exists(metrics) and len(open(metrics).readlines()) >= lines):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def _saved(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
    workdir = str(tmp_path)
    out = _run_until_logged(workdir, 2)
    first = _saved(workdir)
    assert len(first) == 1 and first[0] >= 2 and "rerun to resume" in out
    out = _run_until_logged(workdir, first[0] + 1)
    assert f"resumed from {os.path.join(workdir, 'checkpoints')}/{first[0]}" in out
    assert _saved(workdir)[-1] > first[0]
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert steps == list(range(1, len(steps) + 1))  # no step lost or repeated across the restart


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # The toy model: the loop's behaviour is the point, not SwinUNETR.
    config = toy_config(**{"total_steps": 20, "ckpt_every": 1, "batch_size": 2})
    config.optim.update(name="sgd", lr=1e30, momentum=0.0, schedule="constant")  # step 2 is NaN
    with pytest.raises(NonFiniteLossError, match=r"step \d+: loss is .*last good checkpoint: step"):
        train_and_evaluate(config, str(tmp_path))
    steps = sorted(int(s) for s in os.listdir(os.path.join(tmp_path, "checkpoints")))
    assert steps and steps[-1] < 20
    assert all(np.isfinite(a).all() for a in _leaves(_final_state(str(tmp_path), steps[-1])["params"]))


def test_demo_loss_falls_and_validation_dice_rises(tmp_path):
    """The BraTS demo recipe at test size (48x48x40 synthetic volumes, 32^3 crops): after 30
    steps the training loss has fallen and the whole-tumour validation Dice (sliding window
    over the held-out case) is above 0.3. The train step is the reference run's program
    (same model, batch and optimizer), compiled once for both."""
    config = tiny_config(**{"total_steps": 30, "log_every": 10, "eval_every": 30})
    config.data.synthetic.update(n=6)
    trained = train_and_evaluate(config, str(tmp_path))
    curve = losses(str(tmp_path))
    assert curve[-1] < curve[0] - 0.02, curve
    assert trained["val_dice_WT"] > 0.3, trained


@pytest.mark.xdist_group(name="reference_run")
def test_eval_writes_predictions_in_the_source_space(reference, tmp_path):
    import nibabel as nib
    from jaxbrain import runs
    from jaxbrain.evaluation.evaluate import evaluate
    config = runs.load_config(reference)
    rows = evaluate(config, reference, str(tmp_path / "val"))
    assert len(rows) == 1 and {"dice_TC", "dice_WT", "dice_ET", "hd95_WT"} <= rows[0].keys()
    case = rows[0]["case"]
    flair = os.path.join(reference, "data", "brats", case, f"{case}_flair.nii.gz")
    written = nib.load(str(tmp_path / "val" / f"{case}_seg.nii.gz"))
    source = nib.load(flair)
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.shape == source.shape and set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}
    assert os.path.exists(tmp_path / "val" / "metrics.csv") and os.path.exists(tmp_path / "val" / f"{case}_overlay.png")
    # Arbitrary files given on the command line (one per channel, in the config's order).
    images = [os.path.join(reference, "data", "brats", case, f"{case}_{m}.nii.gz") for m in ("flair", "t1ce", "t1", "t2")]
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(SCRIPT), "..", "eval.py"), "--workdir", reference,
                          "--output", str(tmp_path / "files"), "--images", *images],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    written = nib.load(str(tmp_path / "files" / f"{case}_flair_seg.nii.gz"))
    np.testing.assert_allclose(written.affine, source.affine)
