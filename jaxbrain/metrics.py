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
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

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
