"""Segmentation metrics on host NumPy arrays, matching MONAI's conventions.

Volumes are channels-last: binary masks are (X, Y, Z) and multi-channel masks (one-hot or
multi-label, e.g. the BraTS regions [TC, WT, ET]) are (X, Y, Z, K). Non-zero voxels are
foreground. ``spacing`` is the voxel size in mm, one number per spatial axis or a single number
for isotropic voxels; ``None`` means 1 mm.

Conventions for empty masks, identical to MONAI's ``DiceMetric(include_background=True,
reduction="none")`` and ``HausdorffDistanceMetric(include_background=True, percentile=95)``:

  target      prediction   Dice   HD95
  ---------   ----------   ----   ----
  empty       empty        NaN    NaN
  empty       not empty    NaN    NaN
  not empty   empty        0.0    NaN

MONAI's Dice is NaN for an empty target whatever the prediction (``ignore_empty=True``). Its
HD95 of an empty side is built from infinite distances, and the 95th percentile of those is
NaN (the plain maximum would be inf), so HD95 is NaN as soon as either mask is empty.
Reductions (:func:`summarize`, the mean Dice of :func:`brats_region_metrics`) skip NaN.

Whole-scan metrics (classification: ROC AUC, ROC curve, accuracy, balanced accuracy,
sensitivity, specificity, confusion matrix; regression: MAE, RMSE, Pearson r, brain-age bias
correction) follow at the end, with their own conventions stated there.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage, stats

from jaxbrain.data.labels import REGIONS

Spacing = float | Sequence[float] | None

HD_PERCENTILE = 95.0

# Neighbourhood size -> scipy.ndimage.generate_binary_structure connectivity rank, in 3-D.
_CONNECTIVITY = {6: 1, 18: 2, 26: 3}


def _binary_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred) != 0, np.asarray(target) != 0
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    return pred, target


def _sampling(spacing: Spacing, ndim: int) -> np.ndarray:
    """Voxel size per axis in mm (1 mm when ``spacing`` is None)."""
    if spacing is None:
        return np.ones(ndim)
    sampling = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,)).copy()
    if np.any(sampling <= 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    return sampling


def _channels(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(f"expected equal channels-last shapes (..., K), got {pred.shape} "
                         f"and {target.shape}")
    return pred, target


def nanmean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN (NaN if none is)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def dice(pred: np.ndarray, target: np.ndarray, *, empty: float = float("nan")) -> float:
    """Dice ``2|P & T| / (|P| + |T|)`` of two binary masks.

    ``empty`` sets the score when the target is empty. With NaN (the default, MONAI's
    ``ignore_empty=True``) every empty-target case is NaN. With a number, that number is the
    score when the prediction is empty as well, and a non-empty prediction scores 0.0
    (``empty=1.0`` is MONAI's ``ignore_empty=False``). An empty prediction against a non-empty
    target scores 0.0.
    """
    pred, target = _binary_pair(pred, target)
    target_size = np.count_nonzero(target)
    if target_size == 0:
        return 0.0 if pred.any() and not math.isnan(empty) else float(empty)
    overlap = np.count_nonzero(pred & target)
    return 2.0 * overlap / (target_size + np.count_nonzero(pred))


def dice_per_channel(pred: np.ndarray, target: np.ndarray, *,
                     empty: float = float("nan")) -> np.ndarray:
    """:func:`dice` of each channel of channels-last masks (..., K) -> float64 array (K,)."""
    pred, target = _channels(pred, target)
    return np.array([dice(pred[..., k], target[..., k], empty=empty)
                     for k in range(pred.shape[-1])])


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background face neighbour; outside the array is background."""
    return mask & ~ndimage.binary_erosion(mask)


def _directed_percentile(source: np.ndarray, destination: np.ndarray,
                         sampling: np.ndarray) -> float:
    """Percentile of the distances from each ``source`` voxel to the nearest ``destination`` one."""
    distance = ndimage.distance_transform_edt(~destination, sampling=sampling)
    return float(np.percentile(distance[source], HD_PERCENTILE))


def hausdorff95(pred: np.ndarray, target: np.ndarray, *, spacing: Spacing = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between two binary masks.

    As MONAI: the surfaces are the voxels removed by a binary erosion with the face-connected
    structuring element (the array border counts as background); the 95th percentiles (linear
    interpolation) of the Euclidean distances from each surface voxel of one mask to the nearest
    surface voxel of the other are taken in both directions, and the larger is returned. NaN
    when either mask is empty.
    """
    pred, target = _binary_pair(pred, target)
    if not (pred.any() and target.any()):
        return float("nan")
    box = ndimage.find_objects((pred | target).astype(np.uint8))[0]
    pred_surface, target_surface = _surface(pred[box]), _surface(target[box])
    sampling = _sampling(spacing, pred.ndim)
    return max(_directed_percentile(pred_surface, target_surface, sampling),
               _directed_percentile(target_surface, pred_surface, sampling))


def hausdorff95_per_channel(pred: np.ndarray, target: np.ndarray, *,
                            spacing: Spacing = None) -> np.ndarray:
    """:func:`hausdorff95` of each channel of channels-last masks (..., K) -> array (K,)."""
    pred, target = _channels(pred, target)
    return np.array([hausdorff95(pred[..., k], target[..., k], spacing=spacing)
                     for k in range(pred.shape[-1])])


def brats_region_metrics(pred_regions: np.ndarray, target_regions: np.ndarray,
                         spacing: Spacing = None) -> dict[str, float]:
    """Dice and HD95 of the BraTS regions, from binary region channels (X, Y, Z, 3).

    Channels are in the order of :data:`jaxbrain.data.labels.REGIONS` ([TC, WT, ET], as
    :func:`jaxbrain.data.labels.brats_to_regions` builds them). Returns ``dice_<R>`` and
    ``hd95_<R>`` for each region R, and ``dice_mean``, the mean of the region Dice scores that
    are not NaN (NaN if all are).
    """
    if np.shape(pred_regions)[-1] != len(REGIONS):
        raise ValueError(f"expected {len(REGIONS)} region channels {list(REGIONS)}, "
                         f"got shape {np.shape(pred_regions)}")
    dices = dice_per_channel(pred_regions, target_regions)
    distances = hausdorff95_per_channel(pred_regions, target_regions, spacing=spacing)
    out = {f"dice_{name}": float(d) for name, d in zip(REGIONS, dices)}
    out["dice_mean"] = nanmean(out.values())
    out.update({f"hd95_{name}": float(h) for name, h in zip(REGIONS, distances)})
    return out


def _components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    if connectivity not in _CONNECTIVITY:
        raise ValueError(f"connectivity must be one of {sorted(_CONNECTIVITY)}, got {connectivity}")
    structure = ndimage.generate_binary_structure(3, _CONNECTIVITY[connectivity])
    return ndimage.label(mask, structure=structure)


def lesion_f1(pred: np.ndarray, target: np.ndarray, *,
              connectivity: int = 26) -> dict[str, float | int]:
    """Lesion-wise detection F1 of two binary 3-D masks.

    Lesions are connected components (``connectivity`` 6, 18 or 26 neighbours; 26 is the full
    3x3x3 neighbourhood). A target lesion that any predicted voxel overlaps is a true positive
    (TP), one that none overlaps a false negative (FN); a predicted component that overlaps no
    target lesion is a false positive (FP). F1 = 2 TP / (2 TP + FP + FN), and 1.0 when both
    masks are empty (nothing to find, nothing falsely found).
    """
    pred, target = _binary_pair(pred, target)
    target_labels, n_target = _components(target, connectivity)
    pred_labels, n_pred = _components(pred, connectivity)
    tp = len(np.unique(target_labels[pred & target]))
    fp = n_pred - len(np.unique(pred_labels[pred & target]))
    fn = n_target - tp
    denominator = 2 * tp + fp + fn
    f1 = 2.0 * tp / denominator if denominator else 1.0
    return {"f1": f1, "tp": tp, "fp": fp, "fn": fn}


def binary_metrics(pred: np.ndarray, target: np.ndarray,
                   spacing: Spacing = None) -> dict[str, float | int]:
    """Dice, HD95, lesion-wise F1 (with its counts) and volumes (mm^3) of two binary masks."""
    pred, target = _binary_pair(pred, target)
    voxel_volume = float(np.prod(_sampling(spacing, pred.ndim)))
    volume_pred = np.count_nonzero(pred) * voxel_volume
    volume_target = np.count_nonzero(target) * voxel_volume
    lesions = lesion_f1(pred, target)
    return {
        "dice": dice(pred, target),
        "hd95": hausdorff95(pred, target, spacing=spacing),
        "lesion_f1": lesions["f1"],
        "lesion_tp": lesions["tp"],
        "lesion_fp": lesions["fp"],
        "lesion_fn": lesions["fn"],
        "volume_pred_mm3": volume_pred,
        "volume_target_mm3": volume_target,
        "abs_volume_diff_mm3": abs(volume_pred - volume_target),
    }


def _metric_names(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """Keys holding a number in any row, in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update((k, None) for k, v in row.items() if isinstance(v, numbers.Real))
    return list(names)


def _as_float(value: object) -> float:
    return float(value) if isinstance(value, numbers.Real) else float("nan")


def _statistics(values: np.ndarray) -> dict[str, float]:
    if not values.size:
        return dict.fromkeys(("mean", "std", "median"), float("nan"))
    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            "median": float(np.median(values))}


def summarize(rows: Iterable[Mapping[str, object]]) -> dict[str, dict[str, float | int]]:
    """Per metric over the rows (one per case): mean, std (population), median, n, nan.

    Metrics are the keys with numeric values (text such as ``case`` is left out). Statistics
    skip NaN; ``n`` counts the values used and ``nan`` the NaN or missing ones. A metric with no
    value has NaN statistics.
    """
    rows = list(rows)
    out = {}
    for name in _metric_names(rows):
        values = np.array([_as_float(row.get(name)) for row in rows])
        kept = values[~np.isnan(values)]
        out[name] = {**_statistics(kept), "n": int(kept.size),
                     "nan": int(values.size - kept.size)}
    return out


# -- Whole-scan metrics: classification and regression, one value per scan ------------------
#
# Inputs are 1-D arrays over scans (``probs`` of :func:`roc_auc_ovr` is (N, K)). Class labels
# are integer indices 0..K-1; binary metrics take class 1 as the positive class. Empty inputs,
# mismatched lengths and non-finite scores raise ValueError naming the argument. A metric that
# is undefined on the data (an AUC with one class present, a sensitivity without positives) is
# NaN, without the warning (or, in older versions, the error) scikit-learn gives.


def _vector(name: str, values, *, finite: bool = True) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be one value per scan (N,), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty: metrics need at least one scan")
    if finite and not np.all(np.isfinite(a.astype(np.float64))):
        raise ValueError(f"{name} holds NaN or Inf values")
    return a


def _pair(names: tuple[str, str], a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(names[0], a), _vector(names[1], b)
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} differ in length: {a.size} vs {b.size}")
    return a, b


def _class_indices(name: str, values) -> np.ndarray:
    a = _vector(name, values)
    indices = a.astype(np.int64)
    if np.any(indices != a) or np.any(indices < 0):
        raise ValueError(f"{name} must hold class indices 0, 1, ..., got values "
                         f"{np.unique(a)[:10].tolist()}")
    return indices


def _binary(name: str, values) -> np.ndarray:
    a = _class_indices(name, values)
    if np.any(a > 1):
        raise ValueError(f"{name} must be binary (0 = negative, 1 = positive), got values "
                         f"{np.unique(a)[:10].tolist()}")
    return a.astype(bool)


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve of binary labels (1 = positive) against scores (higher = more
    positive): the Mann-Whitney statistic ``(R+ - n+ (n+ + 1) / 2) / (n+ n-)`` with R+ the sum
    of the positives' ranks among all scores, tied scores sharing their average rank (a tie
    between a positive and a negative counts one half). Equals scikit-learn's
    ``roc_auc_score``; NaN when only one class is present (recent scikit-learn also gives NaN,
    with a warning; older releases raise)."""
    y_true, scores = _binary("y_true", y_true), _vector("scores", scores)
    if y_true.shape != scores.shape:
        raise ValueError(f"y_true and scores differ in length: {y_true.size} vs {scores.size}")
    n_pos = int(np.count_nonzero(y_true))
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores.astype(np.float64))  # average ranks, 1-based
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(y_true, probs, average: str | None = "macro"):
    """One-vs-rest AUC of K classes: class k's :func:`roc_auc` of ``y_true == k`` against
    ``probs[:, k]``, for labels 0..K-1 and scores (N, K) (probabilities or any per-class score).

    ``average``: "macro" (unweighted mean over classes), "weighted" (mean weighted by each
    class's count in ``y_true``) or None (the per-class array, NaN for a class absent from
    ``y_true``). Absent classes are left out of the means; fewer than two classes present give
    NaN. With every class present this is scikit-learn's ``roc_auc_score(multi_class="ovr")``.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (N, K) scores of K >= 2 classes, got shape {probs.shape}")
    y_true = _class_indices("y_true", y_true)
    if y_true.size != probs.shape[0]:
        raise ValueError(f"y_true and probs differ in length: {y_true.size} vs {probs.shape[0]}")
    if np.any(y_true >= probs.shape[1]):
        raise ValueError(f"y_true holds class {int(y_true.max())} but probs has only "
                         f"{probs.shape[1]} columns")
    if average not in ("macro", "weighted", None):
        raise ValueError(f"average must be 'macro', 'weighted' or None, got {average!r}")
    per_class = np.array([roc_auc(y_true == k, probs[:, k]) for k in range(probs.shape[1])])
    if average is None:
        return per_class
    counts = np.bincount(y_true, minlength=probs.shape[1])
    if np.count_nonzero(counts) < 2:
        return float("nan")
    present = counts > 0
    weights = counts[present] if average == "weighted" else None
    return float(np.average(per_class[present], weights=weights))


def roc_curve(y_true, scores, *, drop_intermediate: bool = True):
    """ROC curve of binary labels (1 = positive) and scores, as scikit-learn's ``roc_curve``:
    arrays ``(fpr, tpr, thresholds)``, one point per distinct score taken as the threshold
    (``score >= threshold`` is positive), in decreasing order of threshold, after a first point
    (0, 0) at threshold +inf. ``drop_intermediate`` leaves out the points inside straight runs
    of equal steps (they change nothing in a plot). With only one class present, the rate whose
    denominator is zero is NaN."""
    y_true, scores = _binary("y_true", y_true), _vector("scores", scores)
    if y_true.shape != scores.shape:
        raise ValueError(f"y_true and scores differ in length: {y_true.size} vs {scores.size}")
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    s, y = scores[order], y_true[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_value].astype(np.float64)
    fps = (last_of_value + 1) - tps
    thresholds = s[last_of_value].astype(np.float64)
    if drop_intermediate and tps.size > 2:
        step_changes = (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0)
        keep = np.r_[True, step_changes, True]
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thresholds


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Counts (K, K): row = true class, column = predicted class, for class indices 0..K-1
    (K = ``num_classes``, or the largest index seen + 1). scikit-learn's ``confusion_matrix``
    with ``labels=range(K)``."""
    y_true, y_pred = _class_indices("y_true", y_true), _class_indices("y_pred", y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
    k = int(max(y_true.max(), y_pred.max())) + 1 if num_classes is None else int(num_classes)
    if max(y_true.max(), y_pred.max()) >= k:
        raise ValueError(f"class index {int(max(y_true.max(), y_pred.max()))} is out of range "
                         f"for num_classes={k}")
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def accuracy(y_true, y_pred) -> float:
    """Fraction of scans whose predicted class is the true one."""
    y_true, y_pred = _pair(("y_true", "y_pred"), y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean over the classes present in ``y_true`` of the fraction of that class predicted as
    itself (recall); predicted classes absent from ``y_true`` only lower the others' recall.
    scikit-learn's ``balanced_accuracy_score``."""
    y_true, y_pred = _pair(("y_true", "y_pred"), y_true, y_pred)
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def sensitivity(y_true, y_pred) -> float:
    """Binary true-positive rate TP / (TP + FN), class 1 positive; NaN without positives."""
    y_true, y_pred = _binary("y_true", y_true), _binary("y_pred", y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
    return float(np.mean(y_pred[y_true])) if y_true.any() else float("nan")


def specificity(y_true, y_pred) -> float:
    """Binary true-negative rate TN / (TN + FP), class 1 positive; NaN without negatives."""
    y_true, y_pred = _binary("y_true", y_true), _binary("y_pred", y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
    return float(np.mean(~y_pred[~y_true])) if not y_true.all() else float("nan")


def mae(y_true, y_pred) -> float:
    """Mean absolute error, in the targets' units."""
    y_true, y_pred = _pair(("y_true", "y_pred"), y_true, y_pred)
    return float(np.mean(np.abs(y_pred.astype(np.float64) - y_true)))


def rmse(y_true, y_pred) -> float:
    """Root mean squared error, in the targets' units."""
    y_true, y_pred = _pair(("y_true", "y_pred"), y_true, y_pred)
    return float(np.sqrt(np.mean(np.square(y_pred.astype(np.float64) - y_true))))


def pearson_r(x, y) -> float:
    """Pearson correlation coefficient; NaN when either side is constant (or N < 2)."""
    x, y = _pair(("x", "y"), x, y)
    x, y = x.astype(np.float64) - np.mean(x), y.astype(np.float64) - np.mean(y)
    norm = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.clip(np.sum(x * y) / norm, -1.0, 1.0)) if norm > 0 else float("nan")


def fit_age_bias(pred, true) -> tuple[float, float]:
    """Brain-age bias of a model: ``(slope, intercept)`` of the least-squares line
    ``pred = slope * true + intercept`` of predicted on chronological age, fitted on held-out
    (validation) scans. Brain-age models regress towards the mean age (old brains predicted
    too young, young ones too old); :func:`apply_age_bias` undoes it as in Cole et al. (2018,
    "Brain age predicts mortality"; the correction compared in de Lange & Cole 2020,
    "Commentary: correction procedures in brain-age prediction"):
    ``corrected = (pred - intercept) / slope``, which needs no true age at test time."""
    pred, true = _pair(("pred", "true"), pred, true)
    pred, true = pred.astype(np.float64), true.astype(np.float64)
    centred = true - true.mean()
    spread = np.sum(centred * centred)
    if spread == 0:
        raise ValueError(f"true ages are all {true[0]}: the age bias needs several ages to fit")
    slope = float(np.sum(centred * (pred - pred.mean())) / spread)
    if slope == 0:
        raise ValueError("predicted age does not change with true age (slope 0): the bias "
                         "correction (pred - intercept) / slope is undefined")
    return slope, float(pred.mean() - slope * true.mean())


def apply_age_bias(pred, slope: float, intercept: float) -> np.ndarray:
    """Bias-corrected brain age ``(pred - intercept) / slope`` (see :func:`fit_age_bias`)."""
    if slope == 0 or not math.isfinite(slope) or not math.isfinite(intercept):
        raise ValueError(f"age-bias slope must be finite and non-zero and intercept finite, "
                         f"got slope={slope}, intercept={intercept}")
    return (_vector("pred", pred).astype(np.float64) - intercept) / slope


AGE_BIAS_CONVENTION = ("Cole et al. 2018: prediction = slope * age + intercept fitted on the "
                       "validation scans; corrected = (prediction - intercept) / slope")
AGE_BIAS_MIN_SCANS = 20  # scans the line is fitted on
AGE_BIAS_MIN_SLOPE = 0.1  # below it, dividing by the slope amplifies noise more than 10x
AGE_BIAS_RANGE_MARGIN = 0.5  # of the training age span, either side of the training range


def age_bias_correction(val_pred, val_true, pred, train_range: tuple[float, float]) -> dict:
    """The brain-age bias correction of ``pred`` (convention :data:`AGE_BIAS_CONVENTION`,
    the line fitted on ``val_pred`` / ``val_true``), or the reason it is refused.

    Returns a dict with ``convention``, ``fitted_scans``, ``applied`` and either
    ``corrected`` (an array like ``pred``), ``slope`` and ``intercept``, or ``reason`` (and
    the fit where there was one). Refused when fewer than :data:`AGE_BIAS_MIN_SCANS`
    validation scans, the slope is under :data:`AGE_BIAS_MIN_SLOPE` (flat or negative: no
    regression to the mean that a division can undo) or a corrected value lies more than
    :data:`AGE_BIAS_RANGE_MARGIN` of the training span outside ``train_range`` (min, max of
    the training targets)."""
    val_pred, val_true = _pair(("val_pred", "val_true"), val_pred, val_true)
    pred = _vector("pred", pred).astype(np.float64)
    info = {"convention": AGE_BIAS_CONVENTION, "fitted_scans": int(len(val_true)),
            "applied": False}
    if len(val_true) < AGE_BIAS_MIN_SCANS:
        info["reason"] = (f"fitted on {len(val_true)} validation scans, fewer than the "
                          f"{AGE_BIAS_MIN_SCANS} a slope needs")
        return info
    try:
        slope, intercept = fit_age_bias(val_pred, val_true)
    except ValueError as e:
        info["reason"] = str(e)
        return info
    info.update(slope=slope, intercept=intercept)
    if slope < AGE_BIAS_MIN_SLOPE:
        info["reason"] = (f"slope {slope:.4g} of predicted on true age is below "
                          f"{AGE_BIAS_MIN_SLOPE}: the predictions do not follow age enough "
                          f"for (prediction - intercept) / slope to mean anything")
        return info
    corrected = apply_age_bias(pred, slope, intercept)
    lo, hi = (float(v) for v in train_range)
    margin = AGE_BIAS_RANGE_MARGIN * (hi - lo)
    outside = (corrected < lo - margin) | (corrected > hi + margin)
    if outside.any():
        info["reason"] = (f"{int(outside.sum())} corrected values (from {corrected.min():.4g} "
                          f"to {corrected.max():.4g}) lie outside the training range "
                          f"[{lo:.4g}, {hi:.4g}] by more than {margin:.4g}")
        return info
    info.update(applied=True, corrected=corrected)
    return info
