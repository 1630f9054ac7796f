"""Evaluation metrics: Dice and HD95 against MONAI, BraTS regions and lesion-wise F1 on
hand-built masks with known answers, and the summary statistics."""

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from jaxbrain.data import labels
from jaxbrain import metrics as M

SPACINGS = [None, (1.0, 1.2, 2.5)]


def _blobs(rng, shape, channels):
    """Smooth random masks, one per channel, of varying size."""
    out = []
    for _ in range(channels):
        field = ndimage.gaussian_filter(rng.normal(size=shape), 2.5)
        out.append(field > np.quantile(field, rng.uniform(0.7, 0.97)))
    return np.stack(out, axis=-1)


def _monai(pred, target, spacing):
    """MONAI's per-channel Dice and HD95 of channels-last masks."""
    torch = pytest.importorskip("torch")
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    def to_torch(a):
        return torch.from_numpy(np.moveaxis(a, -1, 0)[None].astype(np.float32))

    p, t = to_torch(pred), to_torch(target)
    dice = DiceMetric(include_background=True, reduction="none")(p, t)
    hd = HausdorffDistanceMetric(include_background=True, percentile=95,
                                 distance_metric="euclidean", reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = hd(p, t, spacing=spacing)
    return dice[0].numpy(), hd95[0].numpy()


def _cube(shape, start, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_and_hd95_match_monai(seed, spacing):
    rng = np.random.default_rng(seed)
    pred, target = _blobs(rng, (36, 32, 24), 3), _blobs(rng, (36, 32, 24), 3)
    monai_dice, monai_hd95 = _monai(pred, target, spacing)
    np.testing.assert_allclose(M.dice_per_channel(pred, target), monai_dice, rtol=1e-6)
    np.testing.assert_allclose(M.hausdorff95_per_channel(pred, target, spacing=spacing),
                               monai_hd95, rtol=1e-5)
    assert M.dice(pred[..., 0], target[..., 0]) == pytest.approx(monai_dice[0], rel=1e-6)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_empty_masks_match_monai(spacing):
    shape = (20, 18, 12)
    blob = _cube(shape, (4, 5, 3), 6)
    empty = np.zeros(shape, bool)
    # Channels: empty target, empty prediction, both empty, both present.
    pred = np.stack([blob, empty, empty, blob], axis=-1)
    target = np.stack([empty, blob, empty, np.roll(blob, 2, axis=0)], axis=-1)
    monai_dice, monai_hd95 = _monai(pred, target, spacing)
    dice = M.dice_per_channel(pred, target)
    hd95 = M.hausdorff95_per_channel(pred, target, spacing=spacing)
    np.testing.assert_allclose(dice, monai_dice, rtol=1e-6)
    np.testing.assert_allclose(hd95, monai_hd95, rtol=1e-5)
    np.testing.assert_array_equal(np.isnan(dice), [True, False, True, False])
    assert dice[1] == 0.0
    np.testing.assert_array_equal(np.isnan(hd95), [True, True, True, False])


def test_dice_empty_option():
    blob = _cube((8, 8, 8), (2, 2, 2), 3)
    empty = np.zeros_like(blob)
    assert M.dice(empty, empty, empty=1.0) == 1.0
    assert M.dice(blob, empty, empty=1.0) == 0.0
    assert math.isnan(M.dice(blob, empty))
    assert M.dice(empty, blob, empty=1.0) == 0.0


def test_hd95_of_shifted_cube():
    """A cube shifted by two voxels along z: the far face (a sixth of the surface) lies two
    voxels (5 mm at 2.5 mm slices) from the nearest target surface and no surface voxel is
    farther, so the 95th percentile is exactly the shift."""
    shape = (24, 24, 24)
    target = _cube(shape, (6, 6, 6), 10)
    pred = _cube(shape, (6, 6, 8), 10)
    assert M.hausdorff95(pred, target) == 2.0
    assert M.hausdorff95(pred, target, spacing=(1.0, 1.2, 2.5)) == pytest.approx(5.0)
    assert M.hausdorff95(pred, target, spacing=0.5) == pytest.approx(1.0)
    assert M.dice(pred, target) == pytest.approx(0.8)


def _brats_label(shape, offset=(0, 0, 0), enhancing=4):
    """Nested cubes: oedema 20^3 around necrosis 12^3 around enhancing tumour 6^3."""
    label = np.zeros(shape, np.uint8)
    for value, start, size in [(2, 10, 20), (1, 14, 12), (enhancing, 17, 6)]:
        corner = tuple(start + o for o in offset)
        label[_cube(shape, corner, size)] = value
    return label


@pytest.mark.parametrize("convention,enhancing", [("brats2021", 4), ("brats2023", 3)])
def test_brats_region_metrics(convention, enhancing):
    shape = (40, 40, 40)
    target = labels.brats_to_regions(_brats_label(shape, enhancing=enhancing), convention)

    perfect = M.brats_region_metrics(target, target, spacing=(1.0, 1.2, 2.5))
    assert perfect == {"dice_TC": 1.0, "dice_WT": 1.0, "dice_ET": 1.0, "dice_mean": 1.0,
                       "hd95_TC": 0.0, "hd95_WT": 0.0, "hd95_ET": 0.0}

    # Shifted by two slices, each region (a cube of side n) overlaps by (n - 2) / n.
    shifted = labels.brats_to_regions(_brats_label(shape, (0, 0, 2), enhancing), convention)
    result = M.brats_region_metrics(shifted, target, spacing=(1.0, 1.2, 2.5))
    expected_dice = {"TC": 10 / 12, "WT": 18 / 20, "ET": 4 / 6}
    for region, value in expected_dice.items():
        assert result[f"dice_{region}"] == pytest.approx(value)
        assert result[f"hd95_{region}"] == pytest.approx(5.0)
    assert result["dice_mean"] == pytest.approx(np.mean(list(expected_dice.values())))


def test_brats_mean_dice_skips_absent_region():
    shape = (40, 40, 40)
    target = labels.brats_to_regions(_brats_label(shape), "brats2021")
    target[..., 2] = 0
    pred = labels.brats_to_regions(_brats_label(shape, (0, 0, 2)), "brats2021")
    result = M.brats_region_metrics(pred, target)
    assert math.isnan(result["dice_ET"]) and math.isnan(result["hd95_ET"])
    assert result["dice_mean"] == pytest.approx((10 / 12 + 18 / 20) / 2)
    with pytest.raises(ValueError, match="region channels"):
        M.brats_region_metrics(pred[..., :2], target[..., :2])


def _lesions(shape, corners, size=3):
    mask = np.zeros(shape, bool)
    for corner in corners:
        mask |= _cube(shape, corner, size)
    return mask


def test_lesion_f1_counts():
    shape = (30, 30, 30)
    target = _lesions(shape, [(2, 2, 2), (12, 12, 12), (22, 22, 22)])
    # Hits two lesions partially (one by a single voxel), misses the third, adds one spurious.
    pred = _lesions(shape, [(3, 3, 3), (22, 2, 2)])
    pred[14, 14, 14] = True
    result = M.lesion_f1(pred, target)
    assert result == {"f1": pytest.approx(4 / 6), "tp": 2, "fp": 1, "fn": 1}


def test_lesion_f1_connectivity_and_merged_components():
    shape = (12, 12, 12)
    diagonal = np.zeros(shape, bool)
    diagonal[2, 2, 2] = diagonal[3, 3, 3] = True
    assert M.lesion_f1(diagonal, diagonal) == {"f1": 1.0, "tp": 1, "fp": 0, "fn": 0}
    assert M.lesion_f1(diagonal, diagonal, connectivity=6)["tp"] == 2
    assert M.lesion_f1(diagonal, diagonal, connectivity=18)["tp"] == 2
    # One predicted component bridging two target lesions detects both.
    target = _lesions(shape, [(1, 1, 1), (1, 7, 1)])
    bridge = np.zeros(shape, bool)
    bridge[2, 2:9, 2] = True
    assert M.lesion_f1(bridge, target) == {"f1": 1.0, "tp": 2, "fp": 0, "fn": 0}
    with pytest.raises(ValueError, match="connectivity"):
        M.lesion_f1(bridge, target, connectivity=8)


def test_lesion_f1_empty_masks():
    shape = (8, 8, 8)
    empty = np.zeros(shape, bool)
    lesion = _cube(shape, (2, 2, 2), 2)
    assert M.lesion_f1(empty, empty) == {"f1": 1.0, "tp": 0, "fp": 0, "fn": 0}
    assert M.lesion_f1(empty, lesion) == {"f1": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert M.lesion_f1(lesion, empty) == {"f1": 0.0, "tp": 0, "fp": 1, "fn": 0}


def test_binary_metrics():
    shape = (24, 24, 24)
    target = _cube(shape, (6, 6, 6), 10)
    pred = _cube(shape, (6, 6, 8), 10)
    pred[20, 20, 0] = True
    result = M.binary_metrics(pred, target, spacing=(1.0, 1.2, 2.5))
    voxel = 1.0 * 1.2 * 2.5
    assert result["dice"] == pytest.approx(1600 / 2001)
    assert result["hd95"] == pytest.approx(M.hausdorff95(pred, target, spacing=(1.0, 1.2, 2.5)))
    assert (result["lesion_tp"], result["lesion_fp"], result["lesion_fn"]) == (1, 1, 0)
    assert result["lesion_f1"] == pytest.approx(2 / 3)
    assert result["volume_pred_mm3"] == pytest.approx(1001 * voxel)
    assert result["volume_target_mm3"] == pytest.approx(1000 * voxel)
    assert result["abs_volume_diff_mm3"] == pytest.approx(voxel)


def test_summarize_skips_nan():
    rows = [
        {"case": "a", "dice": 0.5, "hd95": 2.0},
        {"case": "b", "dice": float("nan"), "hd95": 4.0},
        {"case": "c", "dice": 1.0, "hd95": float("nan")},
        {"case": "d", "dice": 0.9},
    ]
    summary = M.summarize(rows)
    assert list(summary) == ["dice", "hd95"]
    assert summary["dice"] == {"mean": pytest.approx(0.8),
                               "std": pytest.approx(np.std([0.5, 1.0, 0.9])),
                               "median": pytest.approx(0.9), "n": 3, "nan": 1}
    assert summary["hd95"]["mean"] == pytest.approx(3.0)
    assert (summary["hd95"]["n"], summary["hd95"]["nan"]) == (2, 2)
    only_nan = M.summarize([{"x": float("nan")}])["x"]
    assert math.isnan(only_nan["mean"]) and (only_nan["n"], only_nan["nan"]) == (0, 1)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes"):
        M.dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="shapes"):
        M.hausdorff95_per_channel(np.zeros((4, 4, 4, 2)), np.zeros((4, 4, 4, 3)))
