"""The loop's interface for new families: an objective with state (an EMA copy of the
parameters) resumes bitwise, a 2D model trains through the same loop, validation reports
eval.py's numbers, the ROI is given once, and a plain BraTS tree trains on a split the run
makes itself. Toy model and objective (tests/_toys.py) keep compilation short."""

import glob
import json
import os
import sys

import jax
import ml_collections
import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _toys  # noqa: E402,F401  (registers toy_conv and ema_segmentation)
from _train_run import losses, toy_config  # noqa: E402

from jaxbrain import metrics, runs  # noqa: E402
from jaxbrain.training import loop  # noqa: E402


_toy = toy_config


def _state(workdir, step):
    return runs.restore_tree(os.path.join(workdir, "checkpoints", str(step), "state"))


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_objective_state_is_checkpointed_and_resumes_bitwise(tmp_path):
    c = _toy(total_steps=4, batch_size=2)
    c.objective = ml_collections.ConfigDict(dict(
        name="ema_segmentation", kind="sigmoid", channels=("TC", "WT", "ET"), regions="brats",
        momentum=0.5, momentum_steps=4))
    c.model.norm = True  # running statistics (model_state) resume with the rest
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    loop.train_and_evaluate(c, straight)
    loop.train_and_evaluate(c, resumed, stop_after=2)
    loop.train_and_evaluate(c, resumed)
    a, b = _state(straight, 4), _state(resumed, 4)
    assert int(a["objective"]["updates"]) == 4
    assert set(a["model_state"]["batch_stats"]["norm"]) == {"mean", "var"}
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert losses(straight) == losses(resumed)
    ema, params = (jax.tree_util.tree_leaves(a["objective"]["ema"]),
                   jax.tree_util.tree_leaves(a["params"]))
    assert not any(np.array_equal(e, p) for e, p in zip(ema, params))
    assert all("train/ema_loss" in r for r in _rows(straight) if "train/loss" in r)


def _plain_brats(root, n=10):
    """A BraTS 2021 download as distributed: case folders, no datalist; ET removed from every
    other case (an empty region in validation)."""
    from jaxbrain.data import synthetic
    synthetic.write_brats(str(root), n, shape=(40, 40, 32), seed=0, anatomy="procedural")
    for extra in glob.glob(os.path.join(root, "*.json")):
        os.remove(extra)
    for i, seg in enumerate(sorted(glob.glob(os.path.join(root, "*", "*_seg.nii.gz")))):
        if i % 2:
            img = nib.load(seg)
            label = np.asarray(img.dataobj)
            label[label == 4] = 1
            nib.save(nib.Nifti1Image(label, img.affine, img.header), seg)


def test_validation_equals_eval_on_a_plain_brats_tree(tmp_path):
    root, workdir = tmp_path / "BraTS2021_Training_Data", str(tmp_path / "run")
    _plain_brats(root)
    roi = (24, 24, 24)
    c = _toy(total_steps=2, batch_size=2, eval_every=2, ckpt_every=2, **{"data.roi": roi})
    c.data.root, c.data.synthetic = str(root), None
    c.data.augment = "rand_crop(pos_fraction=0.7), brats_regions, rand_flip(prob=0.5)"
    c.eval.max_cases = None
    loop.train_and_evaluate(c, workdir, stop_after=1)
    split = open(os.path.join(workdir, "folds.json")).read()
    loop.train_and_evaluate(c, workdir)  # resumes on the split it saved
    assert open(os.path.join(workdir, "folds.json")).read() == split

    val = {k[4:]: v for k, v in _rows(workdir)[-1].items() if k.startswith("val/")}
    assert {"dice_TC", "dice_WT", "dice_ET", "dice_mean", "hd95_WT"} <= set(val)

    from jaxbrain.evaluation.evaluate import evaluate
    rows = evaluate(runs.load_config(workdir), workdir, str(tmp_path / "eval"))
    assert len(rows) == 2 and all(r["step"] == 2 for r in rows)
    assert any(np.isnan(r["dice_ET"]) for r in rows)  # the case without enhancing tumour
    summary = metrics.summarize(rows)
    for key, value in val.items():
        reported = float(summary[key]["mean"])
        assert (np.isnan(value) and np.isnan(reported)) or np.isclose(value, reported,
                                                                      rtol=1e-6), key

    # The ROI is given once: it shapes the training batches and the evaluation window.
    from jaxbrain.inference import Predictor
    from jaxbrain import models, objectives
    train_ds, _ = loop.datasets(c, workdir)
    assert loop.element_spec(train_ds)["image"].shape == (2, *roi, 4)
    predictor = Predictor.from_config(c, models.from_config(c.model),
                                      objectives.create(**c.objective))
    assert predictor.roi == roi


def test_a_model_built_for_one_size_refuses_other_crops():
    from jaxbrain.models import PCTNet
    model = PCTNet(in_channels=1, out_channels=2, input_size=(16, 32, 32))
    with pytest.raises(ValueError, match=r"input_size \(16, 32, 32\).*crops of \(24, 24, 24\)"):
        loop.check_input_size(model, jax.ShapeDtypeStruct((1, 24, 24, 24, 1), np.float32))
    loop.check_input_size(model, jax.ShapeDtypeStruct((1, 16, 32, 32, 1), np.float32))


def test_a_pretraining_objective_validates_with_its_own_loss(tmp_path):
    """Volume Fusion (no whole-volume predictions) is validated with its loss on fixed crops of
    the held-out cases: the same parameters give the same numbers every time."""
    c = _toy(total_steps=2, batch_size=4, eval_every=1, ckpt_every=2)
    c.model.out_channels = 5
    c.objective = ml_collections.ConfigDict(dict(
        name="volume_fusion", variant="blocks", block_min=(4, 4, 4), block_max=(8, 8, 8)))
    c.data.update(crops_per_volume=2, val_every=2, augment="rand_crop, rand_flip(prob=0.5)")
    c.data.synthetic.update(n=4)
    workdir = str(tmp_path)
    loop.train_and_evaluate(c, workdir)
    val = [{k: v for k, v in r.items() if k.startswith("val/")} for r in _rows(workdir)]
    val = [v for v in val if v]
    assert len(val) == 2 and {"val/loss", "val/dice_loss", "val/ce_loss"} <= set(val[0])
    assert val[0] != val[1]  # the parameters changed between the two validations

    from jaxbrain import models, objectives, parallel
    from jaxbrain.training.validation import make_validator
    run = runs.load_run(workdir)
    model, objective = models.from_config(c.model), objectives.create(**c.objective)
    _, val_cases = loop.datasets(c, workdir)
    validate = make_validator(c, model, objective, val_cases,
                              parallel.make_mesh({"data": -1}), np.float32)
    again = validate(run.variables)
    assert {f"val/{k}": v for k, v in again.items()} == pytest.approx(val[1], rel=1e-6)


def test_a_2d_model_trains_on_slices_through_the_same_loop(tmp_path):
    """Axial slices of the synthetic volumes (rand_slice) feed a 2D toy model; the model is
    initialised from the 2D batches the data produces and the loss falls."""
    c = _toy(total_steps=30, batch_size=4, log_every=10, ckpt_every=30, **{"data.roi": None})
    c.data.augment = "brats_regions, rand_slice(axis=2, pos_fraction=0.8), rand_flip(prob=0.5, axes=(0, 1))"
    c.optim.update(lr=3e-2)
    workdir = str(tmp_path)
    train_ds, _ = loop.datasets(c, workdir)
    assert loop.element_spec(train_ds)["image"].shape == (4, 48, 48, 4)
    loop.train_and_evaluate(c, workdir)
    kernel = runs.load_run(workdir).variables["params"]["stem"]["kernel"]
    assert kernel.shape == (3, 3, 4, 8)  # a 2D convolution
    curve = losses(workdir)
    assert len(curve) == 3 and curve[-1] < curve[0], curve


def test_volume_level_targets_reach_the_batch(tmp_path):
    import dataclasses
    from jaxbrain.data import layouts, pipeline, synthetic
    synthetic.write_brats(str(tmp_path), 2, shape=(24, 24, 16), seed=0, anatomy="procedural")
    cases = layouts.find_cases("brats", str(tmp_path))
    cases = [dataclasses.replace(case, target=float(60 + 10 * i)) for i, case in enumerate(cases)]
    ds = pipeline.training_dataset(cases, preprocess="zscore", augment="rand_crop",
                                   global_batch_size=4, seed=0, crops_per_volume=2,
                                   roi=(16, 16, 16), shard=(0, 1))
    batch = ds[0]
    assert batch["target"].shape == (4,) and batch["target"].dtype == np.float32
    assert sorted(set(batch["target"].tolist())) == [60.0, 70.0]  # one value per case, per crop
    assert batch["target"][0] == batch["target"][1]  # crops of one volume sit together
