"""Whole-scan objectives and metrics: each metric against scikit-learn / SciPy on random data
with ties and on edge cases, the classification loss against PyTorch's cross_entropy, the
regression loss by hand, and both objectives' compute jitted on a tiny Dense model."""

import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from jaxbrain import metrics as M
from jaxbrain import objectives
from jaxbrain.objectives.supervised import Classification, Regression

SEEDS = range(5)


def _binary_data(seed, n=60, decimals=1):
    """Labels with both classes and scores that depend on them, rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    scores = rng.normal(size=n) * 0.6 + 0.5 * y
    return y, np.round(scores, decimals) if decimals is not None else scores


def _multiclass_data(seed, n=80, k=4):
    """Labels of every class and probabilities from small integer counts (many tied values)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)
    counts = rng.integers(1, 5, (n, k)) + 2 * np.eye(k, dtype=int)[y] * rng.integers(0, 2, (n, 1))
    return y, counts / counts.sum(1, keepdims=True)


# -- metrics against scikit-learn --------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [1, None])
def test_roc_auc_matches_sklearn(seed, decimals):
    y, s = _binary_data(seed, decimals=decimals)
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["macro", "weighted"])
def test_roc_auc_ovr_matches_sklearn(seed, average):
    y, p = _multiclass_data(seed)
    expected = skm.roc_auc_score(y, p, multi_class="ovr", average=average)
    assert M.roc_auc_ovr(y, p, average=average) == pytest.approx(expected, abs=1e-12)
    per_class = [skm.roc_auc_score(y == c, p[:, c]) for c in range(p.shape[1])]
    np.testing.assert_allclose(M.roc_auc_ovr(y, p, average=None), per_class, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("drop", [True, False])
def test_roc_curve_matches_sklearn(seed, drop):
    y, s = _binary_data(seed, decimals=1 if seed % 2 else 2)
    for ours, theirs in zip(M.roc_curve(y, s, drop_intermediate=drop),
                            skm.roc_curve(y, s, drop_intermediate=drop)):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_label_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = 3 + seed % 2
    y = rng.integers(0, k - seed % 2, 50)  # odd seeds: a class only ever predicted
    pred = np.where(rng.random(50) < 0.6, y, rng.integers(0, k, 50))
    assert M.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn: "y_pred contains classes not in y_true"
        expected = skm.balanced_accuracy_score(y, pred)
    assert M.balanced_accuracy(y, pred) == pytest.approx(expected, abs=1e-12)
    np.testing.assert_array_equal(M.confusion_matrix(y, pred, num_classes=k),
                                  skm.confusion_matrix(y, pred, labels=range(k)))
    yb, pb = y % 2, pred % 2
    assert M.sensitivity(yb, pb) == pytest.approx(skm.recall_score(yb, pb, pos_label=1))
    assert M.specificity(yb, pb) == pytest.approx(skm.recall_score(yb, pb, pos_label=0))


@pytest.mark.parametrize("seed", SEEDS)
def test_regression_metrics_match_sklearn_and_scipy(seed):
    rng = np.random.default_rng(seed)
    true = rng.uniform(20, 80, 40)
    pred = true + rng.normal(0, 5, 40)
    assert M.mae(true, pred) == pytest.approx(skm.mean_absolute_error(true, pred), rel=1e-12)
    assert M.rmse(true, pred) == pytest.approx(skm.root_mean_squared_error(true, pred), rel=1e-12)
    assert M.pearson_r(pred, true) == pytest.approx(stats.pearsonr(pred, true)[0], rel=1e-12)


# -- edge cases --------------------------------------------------------------------------------

def test_auc_perfect_inverted_tied_and_one_class():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert M.roc_auc(y, s) == 1.0 == skm.roc_auc_score(y, s)
    assert M.roc_auc(y, -s) == 0.0 == skm.roc_auc_score(y, -s)
    assert M.roc_auc(y, np.ones(6)) == 0.5 == skm.roc_auc_score(y, np.ones(6))
    assert math.isnan(M.roc_auc(np.ones(6), s)) and math.isnan(M.roc_auc(np.zeros(6), s))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns (older versions raise)
        assert math.isnan(skm.roc_auc_score(np.ones(6), s))
        theirs = skm.roc_curve(np.ones(6), s)
    for ours, t in zip(M.roc_curve(np.ones(6), s), theirs):
        np.testing.assert_array_equal(ours, t)  # NaN false-positive rate, as sklearn's
    # one-vs-rest: a class absent from y_true is left out; one class present is NaN
    y3 = np.array([0, 0, 1, 1, 0, 1])
    p3 = np.stack([1 - s, s * 0.5, s * 0.5], 1)
    assert M.roc_auc_ovr(y3, p3) == pytest.approx(1.0)
    assert math.isnan(M.roc_auc_ovr(y3, p3, average=None)[2])
    assert math.isnan(M.roc_auc_ovr(np.zeros(6), p3))
    assert math.isnan(M.sensitivity(np.zeros(3), [0, 1, 0]))
    assert math.isnan(M.specificity(np.ones(3), [0, 1, 0]))
    assert math.isnan(M.pearson_r([1, 2, 3], [5, 5, 5]))


def test_bad_metric_input_raises_naming_it():
    with pytest.raises(ValueError, match="y_true is empty"):
        M.roc_auc([], [])
    with pytest.raises(ValueError, match="pred is empty"):
        M.fit_age_bias([], [])
    with pytest.raises(ValueError, match="y_true must be binary"):
        M.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="differ in length"):
        M.mae([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="scores holds NaN"):
        M.roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="probs has only 3 columns"):
        M.roc_auc_ovr([0, 3], np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="class indices"):
        M.confusion_matrix([0, 1.5], [0, 1])
    with pytest.raises(ValueError, match="several ages"):
        M.fit_age_bias([30, 40], [50, 50])


def test_age_bias_recovers_a_linear_distortion():
    true = np.random.default_rng(0).uniform(20, 85, 200)
    pred = 0.6 * true + 21.0  # regression to the mean: slope < 1
    slope, intercept = M.fit_age_bias(pred, true)
    assert (slope, intercept) == pytest.approx((0.6, 21.0), rel=1e-10)
    np.testing.assert_allclose(M.apply_age_bias(pred, slope, intercept), true, rtol=1e-10)
    noisy = pred + np.random.default_rng(1).normal(0, 1, 200)
    assert np.polyfit(true, noisy, 1) == pytest.approx(M.fit_age_bias(noisy, true), rel=1e-9)


def test_age_bias_correction_is_refused_where_it_cannot_be_fitted(capsys):
    from types import SimpleNamespace

    from jaxbrain.evaluation.evaluate import _age_bias
    # 4 validation scans whose predictions barely move with age (slope -0.0007): dividing by
    # the slope sends predictions 0.11 years apart to impossible ages.
    val_true = np.array([31.0, 47.0, 62.0, 78.0])
    val_pred = 52.0 - 0.0007 * val_true + np.array([0.002, -0.001, 0.001, -0.002])
    slope, intercept = np.polyfit(val_true, val_pred, 1)
    assert slope == pytest.approx(-0.0007, abs=1e-4)
    pred, true = intercept + slope * np.array([-3.5, 141.0]), np.array([40.0, 70.0])
    naive = (pred - intercept) / slope  # the fit taken at its word: -3.5 and 141 years
    assert abs(pred[1] - pred[0]) < 0.12 and naive == pytest.approx([-3.5, 141.0])
    parts = SimpleNamespace(train=[SimpleNamespace(target=a) for a in (20.0, 85.0)], val=[0] * 4)
    summary = {"metrics": {}}
    assert _age_bias(summary, pred, true, "test", parts, lambda _: (None, val_pred, val_true)) \
        is None
    info = summary["age_bias"]
    assert not info["applied"] and "4 validation scans" in info["reason"]
    assert info["convention"].startswith("Cole et al. 2018") and "mae_bias_corrected" not in \
        summary["metrics"]
    assert "no bias correction: fitted on 4 validation scans" in capsys.readouterr().out

    rng = np.random.default_rng(0)
    many = rng.uniform(20, 85, 40)
    flat = M.age_bias_correction(52.0 - 0.0007 * many + rng.normal(0, 0.01, 40), many, pred,
                                 (20.0, 85.0))
    assert not flat["applied"] and "below 0.1" in flat["reason"]
    assert flat["slope"] == pytest.approx(-0.0007, abs=1e-3)
    assert "corrected" not in flat
    # A healthy fit equals the numpy reference; one prediction far off the line is refused.
    noisy = 0.6 * many + 21.0 + rng.normal(0, 2, 40)
    test_pred = 0.6 * rng.uniform(20, 85, 30) + 21.0 + rng.normal(0, 2, 30)
    ok = M.age_bias_correction(noisy, many, test_pred, (20.0, 85.0))
    a, b = np.polyfit(many, noisy, 1)
    assert ok["applied"] and (ok["slope"], ok["intercept"]) == pytest.approx((a, b), rel=1e-9)
    np.testing.assert_allclose(ok["corrected"], (test_pred - b) / a, rtol=1e-12)
    far = M.age_bias_correction(noisy, many, np.append(test_pred, 150.0), (20.0, 85.0))
    assert not far["applied"] and "outside the training range [20, 85]" in far["reason"]


# -- objectives ---------------------------------------------------------------------------------

@pytest.mark.parametrize("weights,eps", [(None, 0.0), ((0.5, 2.0, 1.0), 0.0), (None, 0.1),
                                         ((0.5, 2.0, 1.0), 0.2)])
def test_classification_loss_matches_torch(weights, eps):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(7, 3)).astype(np.float32) * 2
    target = np.array([0, 1, 2, 2, 1, 1, 0], np.float32)
    loss, metrics = Classification(3, weights, eps).loss_and_metrics(jnp.asarray(logits),
                                                                     jnp.asarray(target))
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(target).long(),
        weight=None if weights is None else torch.tensor(weights), label_smoothing=eps)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean(logits.argmax(1) == target))


def test_classification_bad_targets_and_shapes():
    obj = Classification(3)
    logits = jnp.zeros((2, 3))
    assert np.isnan(obj.loss_and_metrics(logits, jnp.array([0.0, 3.0]))[0])
    assert np.isnan(obj.loss_and_metrics(logits, jnp.array([0.0, 0.5]))[0])
    with pytest.raises(ValueError, match="num_classes=3"):
        obj.loss_and_metrics(jnp.zeros((2, 4)), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"batch\['target'\]"):
        obj.loss_and_metrics(logits, jnp.zeros((3,)))
    with pytest.raises(ValueError, match="class_weights"):
        Classification(3, (1.0, 2.0))
    with pytest.raises(ValueError, match="label_smoothing"):
        Classification(3, label_smoothing=1.0)


def test_regression_loss_by_hand():
    out = jnp.array([[0.5], [-1.0], [0.0]])
    target = jnp.array([70.0, 40.0, 62.0])
    z = (np.array([70.0, 40.0, 62.0]) - 60.0) / 10.0  # 1, -2, 0.2
    err = np.array([0.5, -1.0, 0.0]) - z  # -0.5, 1, -0.2
    mse, m = Regression("mse", 60.0, 10.0).loss_and_metrics(out, target)
    assert float(mse) == pytest.approx(np.mean(err ** 2)) == pytest.approx(0.43)
    assert float(m["mae"]) == pytest.approx(np.mean(np.abs(err)) * 10.0)  # years
    l1, _ = Regression("l1", 60.0, 10.0).loss_and_metrics(out[:, 0], target)
    assert float(l1) == pytest.approx(np.mean(np.abs(err)))
    plain, _ = Regression().loss_and_metrics(out, jnp.array([1.0, 2.0, 3.0]))
    assert float(plain) == pytest.approx(np.mean((np.array([0.5, -1, 0]) - [1, 2, 3]) ** 2))
    np.testing.assert_allclose(Regression("mse", 60.0, 10.0).predict(out), [65.0, 50.0, 60.0])
    with pytest.raises(ValueError, match="target_std"):
        Regression(target_std=0.0)
    with pytest.raises(ValueError, match="objective.loss"):
        Regression(loss="hubert")
    with pytest.raises(ValueError, match="model output"):
        Regression().loss_and_metrics(jnp.zeros((3, 2)), target)


def test_log1p_huber_regression_matches_torch():
    """BrainDINO's days-post-stroke regression: log(1 + days), torch.nn.HuberLoss(delta=1)."""
    import torch
    days = np.array([3.0, 40.0, 400.0, 2000.0, 0.0, 90.0])
    out = np.array([1.0, 2.0, 8.0, 7.0, 0.5, 4.5], np.float32)
    obj = Regression("huber", 0.0, 1.0, transform="log1p", huber_delta=1.0)
    loss, m = obj.loss_and_metrics(jnp.asarray(out), jnp.asarray(days, jnp.float32))
    ref = torch.nn.HuberLoss(delta=1.0)(torch.from_numpy(out), torch.log1p(torch.from_numpy(days).float()))
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    assert float(m["mae"]) == pytest.approx(np.mean(np.abs(np.expm1(out) - days)), rel=1e-5)
    np.testing.assert_allclose(obj.predict(jnp.asarray(out)), np.expm1(out), rtol=1e-6)
    fitted = Regression("huber", transform="log1p").fit(days)  # standardised in log units
    assert fitted.target_mean == pytest.approx(np.log1p(days).mean())
    with pytest.raises(ValueError, match="needs targets > -1"):
        Regression(transform="log1p").fit([-2.0, 3.0])
    with pytest.raises(ValueError, match="objective.transform"):
        Regression(transform="log")


@pytest.mark.parametrize("obj", [Classification(3, (1.0, 2.0, 0.5), 0.1),
                                 Regression("l1", 50.0, 15.0), Regression("mse")])
def test_gradients_are_finite(obj):
    width = 3 if isinstance(obj, Classification) else 1
    out = jnp.asarray(np.random.default_rng(0).normal(size=(5, width)), jnp.float32)
    target = jnp.array([0.0, 1.0, 2.0, 1.0, 0.0]) * 20
    target = target / 20 if isinstance(obj, Classification) else target
    grad = jax.grad(lambda o: obj.loss_and_metrics(o, target)[0])(out)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


class _TinyDense(nn.Module):
    outputs: int

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(self.outputs)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("name,kwargs,target", [
    ("classification", {"num_classes": 3, "class_weights": [1.0, 2.0, 1.0],
                        "label_smoothing": 0.1}, [0, 1, 2, 1, 0, 2, 1, 0]),
    ("regression", {"loss": "mse", "target_mean": 55.0, "target_std": 12.0},
     [41, 73, 60, 52, 38, 66, 70, 47])])
def test_compute_under_jit_trains_a_dense_model(name, kwargs, target):
    obj = objectives.create(name, **kwargs)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(8, 4, 4, 4, 1)), jnp.float32),
             "target": jnp.asarray(target, jnp.float32)}
    model = _TinyDense(3 if name == "classification" else 1)
    params = model.init(jax.random.key(0), batch["image"])["params"]

    @jax.jit
    def step(params):
        def loss_fn(p):
            loss, metrics = obj.compute(lambda x: model.apply({"params": p}, x, train=True),
                                        batch, jax.random.key(1))
            return loss, metrics
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return jax.tree_util.tree_map(lambda p, g: p - 0.02 * g, params, grads), loss, metrics

    losses = []
    for _ in range(5):
        params, loss, metrics = step(params)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert set(metrics) == {"loss", "accuracy" if name == "classification" else "mae"}
    preds = np.asarray(jax.jit(obj.predict)(model.apply({"params": params}, batch["image"])))
    scan = obj.scan_metrics(preds, target)
    assert obj.best_metric in scan and obj.best_mode in ("max", "min")


def test_scan_metrics():
    y, p1 = _binary_data(0, decimals=2)
    p1 = 1 / (1 + np.exp(-p1))
    probs = np.stack([1 - p1, p1], 1)
    got = Classification(2).scan_metrics(probs, y.astype(np.float32))
    pred = probs.argmax(1)
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y, p1), abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    y3, p3 = _multiclass_data(1, k=3)
    got3 = Classification(3).scan_metrics(p3, y3)
    assert got3["auc"] == pytest.approx(skm.roc_auc_score(y3, p3, multi_class="ovr"), abs=1e-12)
    assert got3["accuracy"] == pytest.approx(skm.accuracy_score(y3, p3.argmax(1)))
    assert "sensitivity" not in got3 and Classification.best_mode == "max"
    with pytest.raises(ValueError, match="num_classes=3"):
        Classification(3).scan_metrics(probs, y)
    true = np.array([30.0, 50.0, 70.0, 45.0])
    reg = Regression().scan_metrics(true + [2, -4, 1, 1], true)
    assert reg["mae"] == pytest.approx(2.0) and reg["mean_error"] == pytest.approx(0.0)
    assert reg["rmse"] == pytest.approx(math.sqrt(22 / 4))
    assert Regression.best_metric == "mae" and Regression.best_mode == "min"
