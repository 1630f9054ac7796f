"""Labels and transforms: BraTS regions against hand-built maps, MONAI parity of the
deterministic transforms, and the behaviour of the random ones."""

import numpy as np
import pytest

from jaxbrain.data import labels, pipeline, transforms as T
from jaxbrain.data.nifti import DataError


def _hand_built(enhancing):
    """A 1-D "volume" with every label and the regions each voxel belongs to, written out."""
    label = np.array([0, 1, 2, enhancing, 0, 2, 1, enhancing], np.uint8)
    tc = [0, 1, 0, 1, 0, 0, 1, 1]
    wt = [0, 1, 1, 1, 0, 1, 1, 1]
    et = [0, 0, 0, 1, 0, 0, 0, 1]
    return label, np.array([tc, wt, et], np.uint8).T


@pytest.mark.parametrize("convention,enhancing", [("brats2021", 4), ("brats2023", 3)])
def test_brats_regions_against_hand_built_maps(convention, enhancing):
    label, regions = _hand_built(enhancing)
    np.testing.assert_array_equal(labels.brats_to_regions(label, convention), regions)
    np.testing.assert_array_equal(labels.regions_to_brats(regions, convention), label)
    # Probabilities are thresholded at 0.5.
    probs = regions * 0.8 + 0.1
    np.testing.assert_array_equal(labels.regions_to_brats(probs, convention), label)


def test_brats_regions_match_monai():
    from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses
    label = np.random.default_rng(0).choice([0, 1, 2, 4], size=(6, 7, 8)).astype(np.uint8)
    ref = np.asarray(ConvertToMultiChannelBasedOnBratsClasses()(label[None])).reshape(3, 6, 7, 8)
    np.testing.assert_array_equal(labels.brats_to_regions(label), np.moveaxis(ref, 0, -1))


def test_regions_need_three_channels():
    with pytest.raises(ValueError, match="3 region channels"):
        labels.regions_to_brats(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="not a BraTS label convention"):
        labels.brats_to_regions(np.zeros(3), "binary")


def _image(shape=(24, 20, 18, 3), seed=0):
    x = np.random.default_rng(seed).gamma(2.0, 100.0, size=shape).astype(np.float32)
    x[:4] = 0
    x[:, -3:] = 0
    x[..., 1][x[..., 1] < 80] = 0
    return x


def test_zscore_matches_monai():
    from monai.transforms import NormalizeIntensity
    x = _image()
    ours = T.ZScore()({"image": x})["image"]
    ref = NormalizeIntensity(nonzero=True, channel_wise=True)(np.moveaxis(x, -1, 0))
    np.testing.assert_allclose(ours, np.moveaxis(np.asarray(ref), 0, -1), atol=2e-5)
    assert (ours[x == 0] == 0).all()


def test_scale_range_matches_monai():
    from monai.transforms import ScaleIntensityRange
    x = _image()
    ours = T.ScaleRange(a_min=50.0, a_max=400.0)({"image": x})["image"]
    ref = ScaleIntensityRange(a_min=50.0, a_max=400.0, b_min=0.0, b_max=1.0, clip=True)(x)
    np.testing.assert_allclose(ours, np.asarray(ref), atol=1e-6)


def test_scale_percentiles_per_channel_over_nonzero():
    x = _image()
    ours = T.ScalePercentiles(1.0, 99.0)({"image": x})["image"]
    assert (ours[x == 0] == 0).all() and ours.min() >= 0 and ours.max() <= 1
    for c in range(x.shape[-1]):
        nz = x[..., c] != 0
        lo, hi = np.percentile(x[..., c][nz], [1.0, 99.0])
        inside = nz & (x[..., c] > lo) & (x[..., c] < hi)
        np.testing.assert_allclose(ours[..., c][inside], (x[..., c][inside] - lo) / (hi - lo),
                                   rtol=1e-5)
    with pytest.raises(ValueError, match="lower < upper"):
        T.ScalePercentiles(50, 10)


@pytest.mark.parametrize("margin,k", [(0, 1), (2, 1), (0, 16)])
def test_crop_foreground_matches_monai(margin, k):
    from monai.transforms import CropForeground
    x = _image()
    ours = T.CropForeground(margin=margin, k_divisible=k)({"image": x})["image"]
    ref = CropForeground(select_fn=lambda v: v != 0, margin=margin, k_divisible=k, allow_smaller=False)(
        np.moveaxis(x, -1, 0))
    np.testing.assert_array_equal(ours, np.moveaxis(np.asarray(ref), 0, -1))


def test_rand_crop_balances_labelled_centres():
    image = np.ones((64, 64, 64, 1), np.float32)
    label = np.zeros((64, 64, 64), np.uint8)
    label[50:54, 8:12, 30:34] = 1
    record = {"image": image, "label": label}
    crop = T.RandCrop((16, 16, 16), pos_fraction=1.0)
    hits = [crop(record, np.random.default_rng(s))["label"].any() for s in range(50)]
    assert all(hits)
    uniform = T.RandCrop((16, 16, 16), pos_fraction=0.0)
    hits = [uniform(record, np.random.default_rng(s))["label"].any() for s in range(50)]
    assert sum(hits) < 25
    half = T.RandCrop((16, 16, 16), pos_fraction=0.5)
    hits = [half(record, np.random.default_rng(s))["label"].any() for s in range(200)]
    assert 70 <= sum(hits) <= 150


def test_rand_crop_pads_small_volumes_and_keeps_pairs_aligned():
    image = np.arange(10 * 12 * 8, dtype=np.float32).reshape(10, 12, 8, 1)
    label = (image[..., 0] % 7).astype(np.uint8)
    out = T.RandCrop((16, 16, 16))({"image": image, "label": label}, np.random.default_rng(0))
    assert out["image"].shape == (16, 16, 16, 1) and out["label"].shape == (16, 16, 16)
    inside = out["image"][..., 0] > 0
    np.testing.assert_array_equal(out["label"][inside], (out["image"][..., 0][inside] % 7).astype(np.uint8))


def test_random_transforms_keep_image_and_label_aligned():
    image = np.random.default_rng(0).random((16, 16, 16, 2)).astype(np.float32)
    label = (image[..., 0] > 0.5).astype(np.uint8)
    record = {"image": image, "label": label}
    for seed in range(10):
        rng = np.random.default_rng(seed)
        out = T.apply([T.RandFlip(), T.RandRot90(prob=1.0)], record, rng)
        np.testing.assert_array_equal(out["label"], (out["image"][..., 0] > 0.5).astype(np.uint8))
    with pytest.raises(DataError, match="equal sizes"):
        T.RandRot90(axes=(0, 2))({"image": np.zeros((4, 4, 6, 1))}, np.random.default_rng(0))


def test_rand_scale_shift_ranges():
    image = np.ones((4, 4, 4, 2), np.float32)
    values = [T.RandScaleShift(0.1, 0.1)({"image": image}, np.random.default_rng(s))["image"]
              for s in range(100)]
    assert all(np.allclose(v, v.flat[0]) for v in values)  # one factor for all channels
    firsts = np.array([v.flat[0] for v in values])
    assert firsts.min() >= 0.8 and firsts.max() <= 1.2 and firsts.std() > 0.03
    per = T.RandScaleShift(0.1, 0.1, per_channel=True)({"image": image}, np.random.default_rng(0))["image"]
    assert per[..., 0].flat[0] != per[..., 1].flat[0]


def test_random_transforms_need_an_rng():
    with pytest.raises(ValueError, match="RandFlip is random and needs an rng"):
        T.apply([T.RandFlip()], {"image": np.zeros((2, 2, 2, 1))})


def test_transform_specs():
    ts = pipeline.parse_transforms("crop_foreground(margin=2), zscore, resize(shape=(8, 8, 8)), rand_flip(prob=0.3)")
    assert [type(t).__name__ for t in ts] == ["CropForeground", "ZScore", "Resize", "RandFlip"]
    assert ts[2].shape == (8, 8, 8) and ts[3].prob == 0.3
    with pytest.raises(ValueError, match="unknown transform 'zscor'"):
        pipeline.parse_transforms(["zscor"])
    with pytest.raises(ValueError, match="resize"):
        pipeline.parse_transforms(["resize(size=3)"])
