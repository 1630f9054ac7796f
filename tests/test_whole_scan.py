"""Whole-scan prediction end to end on the synthetic cohort (configs/brain_age.py:demo and
configs/brain_classification.py:demo at 6 mm): short in-process runs learn brain age (MAE well below predicting the training mean) and AD vs
CN (AUC well above chance); eval.py's whole-scan evaluation writes its CSV, JSON and figure
with the numbers validation logged; splits are by subject, the held-out site is the
validation set, and a run reads its saved folds back; the sex task reads the sex column."""

import csv
import json
import os

import numpy as np
import pytest
from matplotlib import image as mpimg

from jaxbrain import metrics, objectives
from jaxbrain.data import splits, tables
from jaxbrain.evaluation.evaluate import evaluate_scans, makes_scan_predictions
from jaxbrain.training import data as data_lib
from jaxbrain.training import loop
from jaxbrain.training.config import load_config_file

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CLASSIFICATION = os.path.join(CONFIGS, "brain_classification.py")
AGE = os.path.join(CONFIGS, "brain_age.py")
SHAPE = (30, 36, 30)  # the cohort at 6 mm


def _config(path: str, preset: str, n: int, steps: int, **synthetic):
    c = load_config_file(path, preset)
    c.data.synthetic.update(n=n, shape=SHAPE, workers=0, **synthetic)
    c.data.roi = SHAPE
    c.data.num_folds = 3
    c.total_steps, c.log_every, c.eval_every, c.ckpt_every = steps, steps // 2, steps, steps
    c.optim.update(warmup_steps=5)
    c.progress = False
    return c


def _train(tmp_path_factory, name, c):
    workdir = str(tmp_path_factory.mktemp(name))
    last = loop.train_and_evaluate(c, workdir)
    return c, workdir, last


@pytest.fixture(scope="module")
def age_run(tmp_path_factory):
    return _train(tmp_path_factory, "age", _config(AGE, "demo", n=60, steps=60))


@pytest.fixture(scope="module")
def ad_run(tmp_path_factory):
    c = _config(CLASSIFICATION, "ad,demo", n=100, steps=100)
    return _train(tmp_path_factory, "ad", c)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_brain_age_run_learns_and_eval_reports_what_validation_logged(age_run, tmp_path):
    c, workdir, last = age_run
    parts = data_lib.split(c.data, workdir)
    train_mean = np.mean([x.target for x in parts.train])
    val_targets = np.array([x.target for x in parts.val])
    baseline = metrics.mae(val_targets, np.full(val_targets.shape, train_mean))
    print(f"brain age: validation MAE {last['val_mae']:.2f}, training mean {baseline:.2f}")
    assert last["val_mae"] < 0.75 * baseline, (last["val_mae"], baseline)

    assert makes_scan_predictions(c)
    summary = evaluate_scans(c, workdir, str(tmp_path))
    assert summary["metrics"]["mae"] == pytest.approx(last["val_mae"], rel=1e-5)
    assert summary["metrics"]["mae_of_training_mean"] == pytest.approx(baseline)
    assert summary["objective"]["target_mean"] == pytest.approx(train_mean)
    assert summary["scans"] == len(parts.val)

    rows = _csv(tmp_path / "predictions.csv")
    assert [r["id"] for r in rows] == [x.id for x in parts.val]
    assert {"subject", "session", "site", "target", "prediction",
            "prediction_corrected"} <= set(rows[0])
    pred = np.array([float(r["prediction"]) for r in rows])
    assert metrics.mae(val_targets, pred) == pytest.approx(last["val_mae"], rel=1e-5)
    # eval.age_bias (on for the age task): fitted on the validation predictions.
    slope, intercept = metrics.fit_age_bias(pred, val_targets)
    corrected = (pred - intercept) / slope
    with open(tmp_path / "metrics.json") as f:
        saved = json.load(f)
    assert saved["age_bias"]["slope"] == pytest.approx(slope, rel=1e-4)
    assert saved["age_bias"]["applied"] and saved["age_bias"]["convention"].startswith("Cole")
    assert saved["metrics"]["mae_bias_corrected"] == pytest.approx(
        metrics.mae(val_targets, corrected), rel=1e-4)
    picture = mpimg.imread(tmp_path / "scatter.png")
    assert picture.ndim == 3 and picture.shape[0] > 300 and picture.std() > 0.05

    with pytest.raises(ValueError, match="no test scans; set data.test_fold"):
        evaluate_scans(c, workdir, str(tmp_path / "test"), split="test")


def test_ad_vs_cn_run_learns_and_eval_writes_the_roc(ad_run, tmp_path):
    c, workdir, last = ad_run
    print(f"AD vs CN: validation AUC {last['val_auc']:.3f}")
    assert last["val_auc"] > 0.65, last
    summary = evaluate_scans(c, workdir, str(tmp_path))
    assert summary["metrics"]["auc"] == pytest.approx(last["val_auc"], abs=1e-6)
    assert summary["classes"] == ["CN", "AD"]
    weights = summary["objective"]["class_weights"]  # "balanced", from the training scans
    train = data_lib.split(c.data, workdir).train
    n_ad = sum(x.target == 1 for x in train)
    assert weights == pytest.approx([len(train) / (2 * (len(train) - n_ad)),
                                     len(train) / (2 * n_ad)])

    rows = _csv(tmp_path / "predictions.csv")
    assert {"id", "subject", "session", "site", "target", "target_class", "prob_CN",
            "prob_AD", "predicted_class"} <= set(rows[0])
    y = np.array([float(r["target"]) for r in rows])
    p_ad = np.array([float(r["prob_AD"]) for r in rows])
    assert metrics.roc_auc(y, p_ad) == pytest.approx(summary["metrics"]["auc"], abs=1e-6)
    assert {r["target_class"] for r in rows} == {"CN", "AD"}
    picture = mpimg.imread(tmp_path / "roc.png")
    assert picture.ndim == 3 and picture.shape[0] > 300 and picture.std() > 0.05


def test_folds_are_by_subject_stratified_and_read_back(ad_run, tmp_path):
    c, workdir, _ = ad_run
    data = c.data.copy_and_resolve_references()
    data.root = os.path.join(workdir, "data", "cohort")
    data.synthetic = None
    everything = tables.load_table(data.root, task="diagnosis", classes=("CN", "AD")).cases
    assert len({splits.subject(x) for x in everything}) < len(everything)  # follow-up sessions
    seen = {}
    for fold in range(3):
        data.fold = fold
        parts = data_lib.split(data, workdir)
        train_subjects = {splits.subject(x) for x in parts.train}
        val_subjects = {splits.subject(x) for x in parts.val}
        assert not train_subjects & val_subjects
        assert len(parts.train) + len(parts.val) == len(everything)
        for x in parts.val:
            assert seen.setdefault(x.id, fold) == fold  # each scan validated in one fold only
        ad_share = np.mean([x.target for x in parts.val])
        assert 0.35 < ad_share < 0.65  # stratified by class
    assert len(seen) == len(everything)

    # The split is the saved file's: move one subject to another fold there and it moves.
    path = os.path.join(workdir, data_lib.FOLDS_FILE)
    with open(path) as f:
        saved = json.load(f)
    moved = saved["training"][0]["subject"]
    fold = next(e["fold"] for e in saved["training"] if e["subject"] == moved)
    copy = tmp_path / "run"
    copy.mkdir()
    for e in saved["training"]:
        if e["subject"] == moved:
            e["fold"] = (fold + 1) % 3
    with open(copy / data_lib.FOLDS_FILE, "w") as f:
        json.dump(saved, f)
    data.fold = (fold + 1) % 3
    assert moved in {splits.subject(x) for x in data_lib.split(data, str(copy)).val}
    data.split_seed = 1
    with pytest.raises(ValueError, match=r"folds.json: the run's split was made with .*"
                                         r"'split_seed': 0.*but the config asks for"):
        data_lib.split(data, str(copy))


def test_held_out_site_is_the_validation_set(ad_run, tmp_path):
    c, workdir, _ = ad_run
    data = c.data.copy_and_resolve_references()
    data.root = os.path.join(workdir, "data", "cohort")
    data.synthetic = None
    data.held_out_site = "site2"
    parts = data_lib.split(data, str(tmp_path))
    assert parts.val and {x.meta["site"] for x in parts.val} == {"site2"}
    assert "site2" not in {x.meta["site"] for x in parts.train}
    assert not {splits.subject(x) for x in parts.train} & {splits.subject(x) for x in parts.val}
    with open(tmp_path / data_lib.FOLDS_FILE) as f:
        assert json.load(f)["held_out_site"] == ["site2"]

    data.held_out_site = "site9"
    with pytest.raises(Exception, match=r"held-out sites \['site9'\] not in the data"):
        data_lib.split(data, str(tmp_path / "other"))


def test_test_fold_and_label_budget_stay_subject_level(ad_run, tmp_path):
    c, workdir, _ = ad_run
    data = c.data.copy_and_resolve_references()
    data.root = os.path.join(workdir, "data", "cohort")
    data.synthetic = None
    data.test_fold = 2
    parts = data_lib.split(data, str(tmp_path / "a"))
    sides = [{splits.subject(x) for x in side} for side in (parts.train, parts.val, parts.test)]
    assert all(sides) and not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    data.train_fraction = 0.5
    half = data_lib.split(data, str(tmp_path / "a"))
    kept = {splits.subject(x) for x in half.train}
    assert kept < sides[0] and abs(len(kept) - len(sides[0]) / 2) <= 2
    assert [x.id for x in half.val] == [x.id for x in parts.val]
    data.test_fold = 0
    with pytest.raises(ValueError, match="test_fold equals data.fold"):
        data_lib.split(data, str(tmp_path / "b"))


def test_task_presets_of_the_two_configs():
    tasks = {}
    for path, preset in [(CLASSIFICATION, ""), (CLASSIFICATION, "pd"), (CLASSIFICATION, "sex"),
                         (AGE, "")]:
        c = load_config_file(path, preset)
        tasks[preset or os.path.basename(path)] = (c.data.task, c.data.classes,
                                                   c.objective.name, c.model.num_classes)
        assert c.model.name == "vit" and c.data.layout == "table"
        assert ("scale=0.0," in c.data.augment) == (preset == "sex")  # head size is a cue
    assert tasks == {"brain_classification.py": ("diagnosis", ("CN", "AD"), "classification", 2),
                     "pd": ("diagnosis", ("CN", "PD"), "classification", 2),
                     "sex": ("sex", ("F", "M"), "classification", 2),
                     "brain_age.py": ("age", None, "regression", 1)}
    demo = load_config_file(CLASSIFICATION, "sex,demo").data.synthetic
    assert demo.groups.to_dict() == {"CN": 1.0} and "pd" not in demo  # UK Biobank-like
    assert load_config_file(AGE, "demo").data.synthetic.ages == (40.0, 85.0)
    with pytest.raises(ValueError, match=r"configs/brain_classification.py: unknown preset "
                                         r"'age'; known: ad, pd, sex, vit"):
        load_config_file(CLASSIFICATION, "age")
    with pytest.raises(ValueError, match=r"configs/brain_age.py: unknown preset 'sex'"):
        load_config_file(AGE, "sex,demo")
    with pytest.raises(ValueError, match=r"presets ad, sex exclude each other"):
        load_config_file(CLASSIFICATION, "ad,sex")


def test_sex_task_targets_are_the_sex_column(ad_run, tmp_path):
    """The sex preset's data on a written cohort (the AD run's): every scan, whatever its
    diagnosis, with target 0 for F and 1 for M as the label table's sex column says."""
    _, workdir, _ = ad_run
    data = load_config_file(CLASSIFICATION, "sex,demo").data.copy_and_resolve_references()
    data.root = os.path.join(workdir, "data", "cohort")
    data.synthetic = None
    data.num_folds = 3
    parts = data_lib.split(data, str(tmp_path))
    assert parts.classes == ("F", "M")
    sex = {(r["subject"], r["session"]): r["sex"]
           for r in _csv(os.path.join(data.root, "labels.csv"))}
    cases = [*parts.train, *parts.val]
    assert len(cases) == len(sex)
    targets = [x.target for x in cases]
    assert targets == [float(sex[x.meta["subject"], x.meta["session"]] == "M") for x in cases]
    assert set(targets) == {0.0, 1.0}
    assert 0.3 < np.mean([x.target for x in parts.val]) < 0.7  # stratified by sex


def test_objective_fit_hook():
    weighted = objectives.create("classification", num_classes=2, class_weights="balanced")
    fitted = weighted.fit(np.array([0, 0, 0, 1.0]))
    assert fitted.class_weights == pytest.approx((4 / 6, 4 / 2))
    assert fitted.fit(np.array([0, 1.0])) == fitted  # numbers given are kept
    with pytest.raises(ValueError, match=r"class_weights='balanced'.*needs fit|fit\(targets\)"):
        import jax.numpy as jnp
        weighted.loss_and_metrics(jnp.zeros((2, 2)), jnp.zeros((2,)))
    with pytest.raises(ValueError, match="training target 2 is not a class index 0..1"):
        weighted.fit(np.array([0, 2.0]))
    with pytest.raises(ValueError, match="no scan of class 1"):
        weighted.fit(np.array([0, 0.0]))
    reg = objectives.create("regression", target_mean=None, target_std=None).fit([50.0, 70.0])
    assert (reg.target_mean, reg.target_std) == (60.0, 10.0)
    kept = objectives.create("regression", target_mean=1.0).fit([50.0, 70.0])
    assert (kept.target_mean, kept.target_std) == (1.0, 10.0)
    with pytest.raises(ValueError, match="every training target is 5"):
        objectives.create("regression").fit([5.0, 5.0])
