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


# --- Volume Fusion crop augmentations (PyMIC's Crop4VolumeFusion) ------------------------------
# The PyMIC functions restated in NumPy on channel-first arrays, with Python's ``random`` replaced
# by the same draws from a NumPy generator, in the order the transforms make them.

def _pymic_random_resized_crop(image, output_size, scale_lower, scale_upper, rng, order=1):
    from scipy import ndimage
    input_size = image.shape
    u = rng.random(3)
    scale = [scale_lower[i] + (scale_upper[i] - scale_lower[i]) * u[i] for i in range(3)]
    crop_size = [min(int(output_size[i] * scale[i]), input_size[1 + i]) for i in range(3)]
    crop_min = [int(rng.integers(input_size[1 + i] - crop_size[i] + 1)) for i in range(3)]
    crop = image[:, crop_min[0]:crop_min[0] + crop_size[0], crop_min[1]:crop_min[1] + crop_size[1],
                 crop_min[2]:crop_min[2] + crop_size[2]] * 1
    zoom = [1.0] + [(output_size[i] + 0.0) / crop_size[i] for i in range(3)]
    # mode="nearest": scipy's default "constant" sometimes zeroes the last voxel of an axis by
    # rounding; inside the grid the two modes are the same.
    return ndimage.zoom(crop, zoom, order=order, mode="nearest")


def _pymic_adaptive_contrast_adjust(image, p0, p1):
    image = np.array(image, np.float64)
    v_min, v_max = image.min(), image.max()
    v0, v1 = np.percentile(image, p0), np.percentile(image, p1)
    mask_l, mask_m, mask_u = image < v0, (image >= v0) * (image <= v1), image > v1
    image[mask_l] = (image[mask_l] - v_min) * 0.1 / (v0 - v_min)
    image[mask_m] = (image[mask_m] - v0) / (v1 - v0) * 0.8 + 0.1
    image[mask_u] = 0.9 + 0.1 * (image[mask_u] - v1) / (v_max - v1)
    return image


def _pymic_gamma_correction(image, gamma_min, gamma_max, rng):
    v_min, v_max = image.min(), image.max()
    if v_min < v_max:
        image = (image - v_min) / (v_max - v_min)
        gamma = rng.random() * (gamma_max - gamma_min) + gamma_min
        image = np.power(image, gamma) * (v_max - v_min) + v_min
    return image


def _cf(x):
    return np.moveaxis(x, -1, 0)


@pytest.mark.parametrize("shape,roi", [((20, 18, 16), (12, 10, 8)), ((9, 14, 30), (16, 16, 16)),
                                        ((5, 6, 7), (8, 8, 8))])
def test_rand_resized_crop_matches_pymic(shape, roi):
    gen = np.random.default_rng(1)
    image = gen.random(shape + (2,)).astype(np.float32)
    label = gen.integers(0, 4, shape).astype(np.uint8)
    t = T.RandResizedCrop(roi)
    for seed in range(10):
        out = t({"image": image, "label": label}, np.random.default_rng(seed))
        want = _pymic_random_resized_crop(_cf(image), roi, t.scale_min, t.scale_max,
                                          np.random.default_rng(seed))
        np.testing.assert_allclose(_cf(out["image"]), want, atol=1e-5)
        want = _pymic_random_resized_crop(label[None], roi, t.scale_min, t.scale_max,
                                          np.random.default_rng(seed), order=0)[0]
        np.testing.assert_array_equal(out["label"], want)
        assert out["image"].dtype == np.float32 and out["label"].dtype == np.uint8


def test_rand_resized_crop_shapes_and_geometry():
    from jaxbrain.data.nifti import Geometry
    for shape in [(40, 40, 40), (10, 50, 7), (3, 3, 3), (1, 64, 2)]:
        x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
        image = np.stack([x + 2 * y + 3 * z], axis=-1)  # linear: interpolation is exact
        geometry = Geometry(np.eye(4), shape, np.array([[0, 1], [1, 1], [2, 1]], np.float64),
                            np.eye(4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), shape)
        record = {"image": image, "label": (x > 1).astype(np.uint8), "geometry": geometry}
        for seed in range(25):
            out = T.RandResizedCrop((16, 12, 8))(record, np.random.default_rng(seed))
            assert out["image"].shape == (16, 12, 8, 1) and out["label"].shape == (16, 12, 8)
            g = out["geometry"]
            assert g.shape == (16, 12, 8)
            coords = [np.arange(n) * s + o for n, s, o in zip(g.shape, g.scale, g.offset)]
            cx, cy, cz = np.meshgrid(*coords, indexing="ij")
            np.testing.assert_allclose(out["image"][..., 0], cx + 2 * cy + 3 * cz, atol=1e-3)
    # scale 1 on a large enough image is a plain random crop
    image = np.random.default_rng(0).random((20, 20, 20, 1)).astype(np.float32)
    out = T.RandResizedCrop(8, 1.0, 1.0)({"image": image}, np.random.default_rng(3))["image"]
    hits = [(i, j, k) for i in range(13) for j in range(13) for k in range(13)
            if np.array_equal(image[i:i + 8, j:j + 8, k:k + 8], out)]
    assert len(hits) == 1


def test_rand_contrast_matches_pymic():
    gen = np.random.default_rng(2)
    image = gen.normal(size=(12, 12, 12, 2)).astype(np.float32)
    image[:4, ..., 1] = 0  # a zero background: v0 at the minimum
    t = T.RandContrast()
    for seed in range(10):
        out = t({"image": image}, np.random.default_rng(seed))["image"]
        rng = np.random.default_rng(seed)
        p0, p1 = rng.uniform(0.1, 2.0), rng.uniform(98.0, 99.9)
        for c in range(2):
            np.testing.assert_allclose(out[..., c], _pymic_adaptive_contrast_adjust(image[..., c], p0, p1),
                                       atol=1e-6)
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
        assert out[..., 0].min() == 0 and out[..., 0].max() == 1
        order = np.argsort(image[..., 0], axis=None)
        assert np.all(np.diff(out[..., 0].ravel()[order]) >= 0)
    constant = t({"image": np.full((4, 4, 4, 1), 3.0, np.float32)}, np.random.default_rng(0))["image"]
    np.testing.assert_allclose(constant, 0.1)


def test_rand_gamma_matches_pymic_and_keeps_range_and_order():
    gen = np.random.default_rng(3)
    image = gen.random((10, 10, 10, 2)).astype(np.float32)
    image[0, 0, 0], image[-1, -1, -1] = 0.0, 1.0
    image[..., 1] = image[..., 1] * 5 - 2
    gammas = []
    for seed in range(20):
        out = T.RandGamma()({"image": image}, np.random.default_rng(seed))["image"]
        for c in range(2):
            want = _pymic_gamma_correction(image[..., c].astype(np.float64), 0.7, 1.5,
                                           np.random.default_rng(seed))
            np.testing.assert_allclose(out[..., c], want, rtol=1e-6, atol=1e-6)
            assert out[..., c].min() == image[..., c].min() and out[..., c].max() == image[..., c].max()
            order = np.argsort(image[..., c], axis=None)
            assert np.all(np.diff(out[..., c].ravel()[order]) >= 0)
        gammas.append(np.log(out[1, 1, 1, 0]) / np.log(image[1, 1, 1, 0]))  # range [0, 1]
    assert 0.7 <= min(gammas) < 0.9 and 1.3 < max(gammas) <= 1.5
    flat = np.full((3, 3, 3, 1), 0.4, np.float32)
    np.testing.assert_array_equal(T.RandGamma()({"image": flat}, np.random.default_rng(0))["image"], flat)


def test_rand_invert_frequency():
    image = np.random.default_rng(4).random((3, 3, 3, 2)).astype(np.float32)
    t = T.RandInvert(prob=0.25)
    inverted = 0
    for seed in range(2000):
        out = t({"image": image}, np.random.default_rng(seed))["image"]
        if out is image:
            continue
        np.testing.assert_array_equal(out, 1 - image)
        inverted += 1
    assert abs(inverted / 2000 - 0.25) < 0.03
    assert T.RandInvert(prob=0.0)({"image": image}, np.random.default_rng(0))["image"] is image


def test_volume_fusion_augmentation_specs_and_arguments():
    ts = pipeline.parse_transforms("rand_resized_crop(roi=(8, 8, 8), scale_min=(1.0, 0.5, 0.5)), rand_flip, "
                                   "rand_contrast, rand_gamma(gamma=(0.8, 1.2)), rand_invert(prob=0.1)")
    assert [type(t).__name__ for t in ts] == ["RandResizedCrop", "RandFlip", "RandContrast", "RandGamma",
                                              "RandInvert"]
    assert ts[0].scale_min == (1.0, 0.5, 0.5) and ts[3].gamma == (0.8, 1.2) and ts[4].prob == 0.1
    image = np.random.default_rng(5).normal(size=(20, 16, 12, 1)).astype(np.float32)
    out = T.apply(ts, {"image": image}, np.random.default_rng(0))["image"]
    assert out.shape == (8, 8, 8, 1) and out.min() >= 0 and out.max() <= 1
    bad = [(T.RandResizedCrop, dict(roi=(8, 8)), "roi: expected a positive integer or 3"),
           (T.RandResizedCrop, dict(roi=8, scale_min=0), "scale_min: expected a positive number"),
           (T.RandResizedCrop, dict(roi=8, scale_min=2.0), "scale_min <= scale_max"),
           (T.RandContrast, dict(lower=(2.0, 1.0)), "lower: expected low <= high"),
           (T.RandContrast, dict(upper=(98.0, 101.0)), "0 <= lower <= upper <= 100"),
           (T.RandGamma, dict(gamma=1.2), r"gamma: expected a \(low, high\) pair"),
           (T.RandGamma, dict(gamma=(0.0, 1.0)), "gamma: expected positive values"),
           (T.RandInvert, dict(prob=1.5), "prob: expected a probability in")]
    for cls, kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)
