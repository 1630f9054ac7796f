"""NIfTI reading: canonical orientation against MONAI, geometry round trips, resampling
against torch, and every bad-input case raising an error that names the file."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from jaxbrain.data import layouts, nifti, transforms as T
from jaxbrain.data.nifti import DataError

# An oblique-free but flipped and permuted affine: file axes (P, S, L) at 1.2 x 1 x 0.9 mm.
PERMUTED = np.array([[0.0, 0.0, -0.9, 40.0],
                     [-1.2, 0.0, 0.0, 30.0],
                     [0.0, 1.0, 0.0, -20.0],
                     [0.0, 0.0, 0.0, 1.0]])


def _save(path, data, affine=PERMUTED):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def _volume(shape=(20, 18, 16), seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_canonical_orientation_matches_monai(tmp_path):
    from monai.transforms import LoadImage, Orientation
    path = _save(tmp_path / "a.nii.gz", _volume())
    ours, geometry = nifti.read_volume(path)
    ref = Orientation("RAS")(LoadImage(image_only=True, ensure_channel_first=True)(path))
    np.testing.assert_array_equal(ours, ref[0].numpy())
    np.testing.assert_allclose(geometry.affine, ref.affine.numpy(), atol=1e-6)
    assert nib.aff2axcodes(geometry.affine) == ("R", "A", "S")


def test_geometry_round_trip_through_crop_resize_and_spacing(tmp_path):
    data = np.arange(20 * 18 * 16, dtype=np.float32).reshape(20, 18, 16)
    path = _save(tmp_path / "a.nii.gz", data)
    x, g = nifti.read_volume(path)
    # Canonical array back to the file grid: exact.
    np.testing.assert_array_equal(nifti.to_source(x, g), data)
    record = {"image": x[..., None], "label": (x > 2000).astype(np.uint8), "geometry": g}
    cropped = T.CropForeground(margin=2)(dict(record, image=record["image"] * (x[..., None] > 500)))
    back = nifti.to_source(cropped["label"], cropped["geometry"])
    np.testing.assert_array_equal(back, (data > 2000).astype(np.uint8))
    # Voxel -> world mapping is preserved by every grid change.
    for t in (T.Resize((11, 13, 7)), T.Resample((2.0, 2.0, 2.0)), T.Pad((24, 24, 24))):
        out = t(record)
        g2 = out["geometry"]
        ijk = np.array([1.0, 2.0, 3.0, 1.0])
        canonical_ijk = np.r_[np.asarray(g2.scale) * ijk[:3] + np.asarray(g2.offset), 1.0]
        np.testing.assert_allclose(g2.affine @ ijk, g.canonical_affine @ canonical_ijk)
        assert nifti.to_source(out["label"], g2).shape == data.shape
    # Spacing: 2 mm resampling doubles the voxel size and keeps the first voxel centre.
    out = T.Resample((2.0, 2.0, 2.0))(record)
    np.testing.assert_allclose(out["geometry"].spacing, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(out["geometry"].affine[:3, 3], g.affine[:3, 3])


def test_written_prediction_has_the_source_affine(tmp_path):
    path = _save(tmp_path / "a.nii.gz", _volume())
    x, g = nifti.read_volume(path)
    out = T.Resize((8, 8, 8))({"image": x[..., None], "geometry": g})
    nifti.write_volume(str(tmp_path / "pred.nii.gz"), (out["image"][..., 0] > 0.5).astype(np.uint8),
                       out["geometry"])
    img = nib.load(str(tmp_path / "pred.nii.gz"))
    np.testing.assert_allclose(img.affine, PERMUTED, atol=1e-5)
    assert img.shape == (20, 18, 16)


@pytest.mark.parametrize("in_shape,out_shape", [((20, 18, 16), (96, 64, 40)), ((20, 18, 16), (7, 9, 5))])
def test_resize_matches_torch_trilinear(in_shape, out_shape):
    import torch
    x = np.random.default_rng(1).normal(size=in_shape + (2,)).astype(np.float32)
    scale, offset = nifti.resize_params(in_shape, out_shape)
    ours = nifti.remap(x, scale, offset, out_shape, "linear")
    ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(3, 0, 1, 2))[None], size=out_shape,
                                          mode="trilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(ours, ref.transpose(1, 2, 3, 0), atol=1e-5)


def test_resize_labels_nearest_keeps_values():
    label = np.random.default_rng(2).choice([0, 1, 2, 4], size=(20, 18, 16)).astype(np.uint8)
    out = T.Resize((40, 36, 32))({"image": np.zeros((20, 18, 16, 1), np.float32), "label": label})
    assert out["label"].dtype == np.uint8
    np.testing.assert_array_equal(out["label"][::2, ::2, ::2], label)


# --- bad input: each case names the file ---------------------------------------------------------


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.nii.gz")
    with pytest.raises(DataError, match="nope.nii.gz: file not found"):
        nifti.read_volume(path)


def test_corrupt_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a nifti file at all" * 10)
    with pytest.raises(DataError, match="garbage.nii.gz: not a readable NIfTI"):
        nifti.read_volume(str(garbage))
    good = _save(tmp_path / "good.nii.gz", _volume((40, 40, 40)))
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.nii.gz: corrupt or truncated"):
        nifti.read_volume(str(truncated))
    # A gzip stream whose payload is cut short of the voxel data.
    raw = gzip.decompress(data)
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(raw[: len(raw) - 1000]))
    with pytest.raises(DataError, match="short.nii.gz"):
        nifti.read_volume(str(short))


def test_4d_data_where_3d_expected(tmp_path):
    path = _save(tmp_path / "bold.nii.gz", np.zeros((8, 8, 8, 3), np.float32))
    with pytest.raises(DataError, match=r"bold.nii.gz: expected a 3D volume, got shape \(8, 8, 8, 3\)"):
        nifti.read_volume(path)
    # A trailing singleton dimension is still 3D data.
    path = _save(tmp_path / "single.nii.gz", np.zeros((8, 8, 8, 1), np.float32))
    assert nifti.read_volume(path)[0].shape == (8, 8, 8)


def test_nan_and_inf_voxels(tmp_path):
    x = _volume()
    x[3, 4, 5] = np.nan
    x[1, 1, 1] = np.inf
    path = _save(tmp_path / "nan.nii.gz", x)
    with pytest.raises(DataError, match="nan.nii.gz: 2 NaN/Inf voxels"):
        nifti.read_volume(path)


def _case(tmp_path, *, image_shapes=((20, 18, 16),) * 2, affines=(PERMUTED,) * 2, label=None,
          labels="brats2021"):
    images = tuple(_save(tmp_path / f"ch{i}.nii.gz", _volume(s, i), a)
                   for i, (s, a) in enumerate(zip(image_shapes, affines)))
    label_path = None
    if label is not None:
        label_path = _save(tmp_path / "seg.nii.gz", label, affines[0])
    return layouts.Case(id="c", images=images, label=label_path, labels=labels)


def test_modalities_with_different_shapes_or_affines(tmp_path):
    case = _case(tmp_path, image_shapes=((20, 18, 16), (20, 18, 15)))
    with pytest.raises(DataError, match=r"ch1.nii.gz: shape \(20, 18, 15\) differs from .*ch0.nii.gz"):
        T.load_case(case)
    shifted = PERMUTED.copy()
    shifted[0, 3] += 5
    case = _case(tmp_path, affines=(PERMUTED, shifted))
    with pytest.raises(DataError, match="ch1.nii.gz: affine differs from .*ch0.nii.gz"):
        T.load_case(case)


def test_label_values_outside_the_convention(tmp_path):
    label = np.zeros((20, 18, 16), np.uint8)
    label[2:5, 2:5, 2:5] = 3  # BraTS 2023's enhancing value in a 2021 case
    case = _case(tmp_path, label=label, labels="brats2021")
    with pytest.raises(DataError, match=r"seg.nii.gz: label values \[3\] outside the expected set \[0, 1, 2, 4\]"):
        T.load_case(case)
    # The same file is fine under the 2023 convention.
    record = T.load_case(layouts.Case("c", case.images, case.label, labels="brats2023"))
    assert record["image"].shape == (16, 20, 18, 2) and record["label"].max() == 3
    float_label = label.astype(np.float32) + 0.5
    _save(tmp_path / "seg.nii.gz", float_label)
    with pytest.raises(DataError, match="seg.nii.gz: non-integer values"):
        T.load_case(case)


def test_label_on_another_grid(tmp_path):
    case = _case(tmp_path, label=np.zeros((20, 18, 14), np.uint8))
    with pytest.raises(DataError, match="seg.nii.gz: shape"):
        T.load_case(case)


def test_missing_modality_in_a_case(tmp_path):
    case = _case(tmp_path)
    os.remove(case.images[1])
    with pytest.raises(DataError, match="ch1.nii.gz: file not found"):
        T.load_case(case)
