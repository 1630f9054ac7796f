"""Tests of the synthetic brain MRI generator and its dataset writers."""

import csv
import functools
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from jaxbrain.data import synthetic as S

SMALL = (48, 48, 48)
ANATOMIES = ["procedural", pytest.param("mni", marks=pytest.mark.filterwarnings("ignore"))]


def _needs(anatomy):
    if anatomy == "mni":
        pytest.importorskip("nilearn")


def _assert_same(a: S.Subject, b: S.Subject):
    for name in S.MODALITIES:
        np.testing.assert_array_equal(a.images[name], b.images[name])
    np.testing.assert_array_equal(a.tissue, b.tissue)
    np.testing.assert_array_equal(a.label, b.label)


@pytest.mark.parametrize("anatomy", ANATOMIES)
def test_same_seed_is_bitwise_identical_and_seeds_differ(anatomy):
    _needs(anatomy)
    first = S.synth_subject(3, SMALL, anatomy=anatomy)
    _assert_same(first, S.synth_subject(3, SMALL, anatomy=anatomy))
    other = S.synth_subject(4, SMALL, anatomy=anatomy)
    assert not np.array_equal(first.images["t1"], other.images["t1"])
    assert not np.array_equal(first.label, other.label)


def test_subject_format():
    shape = (40, 48, 36)
    subject = S.synth_subject(0, shape, anatomy="procedural")
    assert list(subject.images) == ["t1", "t1ce", "t2", "flair"]
    for image in subject.images.values():
        assert image.shape == shape and image.dtype == np.float32
        assert image.min() >= 0.0 and 500.0 < image.max() < 6000.0
    assert subject.tissue.dtype == np.uint8 and set(np.unique(subject.tissue)) == {0, 1, 2, 3, 4}
    assert subject.label.dtype == np.uint8 and subject.label.shape == shape
    np.testing.assert_allclose(subject.spacing, np.divide(S.DEFAULT_FOV_MM, shape))
    np.testing.assert_allclose(subject.affine, S.grid_affine(shape))
    assert S.synth_subject(0, shape, anatomy="procedural", lesion=None).label is None


def test_works_without_nilearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)  # makes `import nilearn` fail
    S._nilearn_available.cache_clear()
    try:
        _assert_same(S.synth_subject(0, SMALL), S.synth_subject(0, SMALL, anatomy="procedural"))
    finally:
        S._nilearn_available.cache_clear()


def test_invalid_arguments():
    with pytest.raises(ValueError):
        S.synth_subject(0, SMALL, lesion="cyst")
    with pytest.raises(ValueError):
        S.synth_subject(0, SMALL, anatomy="atlas")
    with pytest.raises(ValueError):
        S.synth_subject(0, SMALL, affine=np.diag([-1.0, 1.0, 1.0, 1.0]))


def _class_means(subject, name):
    image = subject.images[name]
    return [float(image[subject.tissue == c].mean()) for c in (S.CSF, S.GREY_MATTER, S.WHITE_MATTER)]


@pytest.mark.parametrize("anatomy", ANATOMIES)
def test_tissue_contrasts(anatomy):
    _needs(anatomy)
    for seed in range(3):
        subject = S.synth_subject(seed, (64, 64, 64), anatomy=anatomy, lesion=None)
        csf, grey, white = _class_means(subject, "t1")
        assert white > grey > csf
        csf, grey, white = _class_means(subject, "t1ce")
        assert white > grey > csf
        csf, grey, white = _class_means(subject, "t2")
        assert csf > grey > white
        csf, grey, white = _class_means(subject, "flair")
        assert grey > white > csf
        scalp = np.percentile(subject.images["t1"][subject.tissue == S.SKULL], 99)
        assert scalp > white  # fat is bright in T1


def test_skull_stripped_background_is_exactly_zero():
    subject = S.synth_subject(1, SMALL, anatomy="procedural", skull=False)
    outside = subject.tissue == S.BACKGROUND
    assert S.SKULL not in subject.tissue
    for image in subject.images.values():
        assert np.all(image[outside] == 0.0)
        assert np.all(image[~outside] > 0.0)
    with_skull = S.synth_subject(1, SMALL, anatomy="procedural", skull=True)
    assert np.all(with_skull.images["t1"] > 0.0)  # Rician noise everywhere


@pytest.mark.parametrize("anatomy", ANATOMIES)
def test_tumour_labels_are_nested(anatomy):
    _needs(anatomy)
    complete = 0
    for seed in range(6):
        subject = S.synth_subject(seed, SMALL, anatomy=anatomy, skull=False)
        label = subject.label
        assert set(np.unique(label)) <= {0, S.NECROSIS, S.OEDEMA, S.ENHANCING}
        complete += set(np.unique(label)) == {0, S.NECROSIS, S.OEDEMA, S.ENHANCING}
        assert np.all(subject.tissue[label > 0] != S.BACKGROUND)
        necrosis = label == S.NECROSIS
        core = necrosis | (label == S.ENHANCING)
        # the enhancing rim encloses the necrosis, oedema surrounds the core
        if necrosis.any():
            around_necrosis = ndi.binary_dilation(necrosis) & ~necrosis
            assert np.isin(label[around_necrosis], [S.NECROSIS, S.ENHANCING]).mean() >= 0.95
        around_core = ndi.binary_dilation(core) & ~core & (subject.tissue >= S.GREY_MATTER)
        assert (label[around_core] == S.OEDEMA).mean() >= 0.9
        fraction = (label > 0).sum() / (subject.tissue > 0).sum()
        assert 0.01 < fraction < 0.25
    assert complete >= 4


def _relative_to_white_matter(subject, name, value):
    """Mean intensity of a lesion label relative to the lesion-free white matter."""
    image = subject.images[name]
    white = (subject.tissue == S.WHITE_MATTER) & (subject.label == 0)
    return image[subject.label == value].mean() / image[white].mean()


def test_tumour_intensities():
    for seed in range(3):
        subject = S.synth_subject(seed, (64, 64, 64), anatomy="procedural", skull=False)
        relative = functools.partial(_relative_to_white_matter, subject)
        assert relative("flair", S.OEDEMA) > 1.2
        assert relative("t2", S.OEDEMA) > 1.2
        assert relative("t1ce", S.ENHANCING) > 1.2 > relative("t1", S.ENHANCING)
        if (subject.label == S.NECROSIS).sum() > 10:
            assert relative("t1", S.NECROSIS) < 0.8 and relative("t1ce", S.NECROSIS) < 0.8
            assert relative("t2", S.NECROSIS) > 1.5


@pytest.mark.parametrize("anatomy", ANATOMIES)
def test_stroke_lesions(anatomy):
    _needs(anatomy)
    volumes = []
    for seed in range(4):
        subject = S.synth_subject(seed, SMALL, anatomy=anatomy, lesion="stroke")
        lesion = subject.label == S.STROKE
        assert set(np.unique(subject.label)) <= {0, 1} and lesion.any()
        assert np.all(np.isin(subject.tissue[lesion], [S.GREY_MATTER, S.WHITE_MATTER]))
        white = (subject.tissue == S.WHITE_MATTER) & ~lesion
        t1 = subject.images["t1"]
        assert t1[lesion].mean() < 0.8 * t1[white].mean()
        volumes.append(lesion.sum())
    assert len(set(volumes)) == len(volumes)


def test_same_seed_renders_the_same_head_at_any_resolution():
    centroids = []
    for shape in [(40, 40, 40), (64, 64, 64)]:
        subject = S.synth_subject(5, shape, anatomy="procedural")
        voxel = np.argwhere(subject.label > 0).mean(axis=0)
        centroids.append(subject.affine[:3, :3] @ voxel + subject.affine[:3, 3])
    np.testing.assert_allclose(*centroids, atol=3.0)


def _canonical(path):
    image = nib.as_closest_canonical(nib.load(path))
    return np.asarray(image.dataobj), image.affine


def _relative_files(root):
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


def test_write_brats_2021(tmp_path):
    shape = (40, 48, 32)
    records = S.write_brats(tmp_path, 2, shape=shape, seed=7, anatomy="procedural", folds=5)
    names = ["BraTS2021_00000", "BraTS2021_00001"]
    suffixes = ["flair", "seg", "t1", "t1ce", "t2"]
    expected = sorted([f"{n}/{n}_{s}.nii.gz" for n in names for s in suffixes] + ["brats21_folds.json"])
    assert _relative_files(tmp_path) == expected

    datalist = json.loads((tmp_path / "brats21_folds.json").read_text())
    assert datalist == {
        "training": [
            {
                "fold": i,
                "image": [f"{n}/{n}_{s}.nii.gz" for s in ["flair", "t1ce", "t1", "t2"]],
                "label": f"{n}/{n}_seg.nii.gz",
            }
            for i, n in enumerate(names)
        ]
    }
    assert [r["id"] for r in records] == names
    assert records[1]["image"][0] == str(tmp_path.resolve() / names[1] / f"{names[1]}_flair.nii.gz")

    grid = S.grid_affine(shape, S.BRATS_FOV_MM, S.BRAIN_CENTER_MM)
    for i, record in enumerate(records):
        stored = nib.load(record["label"])
        assert stored.affine[0, 0] < 0 and stored.affine[1, 1] < 0 and stored.affine[2, 2] > 0
        assert nib.aff2axcodes(stored.affine) == ("L", "P", "S")
        label, affine = _canonical(record["label"])
        np.testing.assert_allclose(affine, grid, rtol=1e-6)
        subject = S.synth_subject(7 + i, shape, anatomy="procedural", skull=False, affine=grid)
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, subject.label)
        for path, name in zip(record["image"], ["flair", "t1ce", "t1", "t2"]):
            data, _ = _canonical(path)
            assert data.dtype == np.int16
            np.testing.assert_array_equal(data, np.rint(subject.images[name]))
    np.testing.assert_allclose(np.diag(grid)[:3], np.divide(S.BRATS_FOV_MM, shape))


def test_write_brats_2023_stores_enhancing_as_3(tmp_path):
    shape = (40, 48, 32)
    (record,) = S.write_brats(tmp_path, 1, version=2023, shape=shape, seed=2, anatomy="procedural")
    name = "BraTS-GLI-00000-000"
    suffixes = ["seg", "t1c", "t1n", "t2f", "t2w"]
    expected = sorted([f"{name}/{name}-{s}.nii.gz" for s in suffixes] + ["brats23_folds.json"])
    assert _relative_files(tmp_path) == expected
    entry = json.loads((tmp_path / "brats23_folds.json").read_text())["training"][0]
    assert entry["image"] == [f"{name}/{name}-{s}.nii.gz" for s in ["t2f", "t1c", "t1n", "t2w"]]

    grid = S.grid_affine(shape, S.BRATS_FOV_MM, S.BRAIN_CENTER_MM)
    label, affine = _canonical(record["label"])
    np.testing.assert_allclose(affine, grid, rtol=1e-6)
    subject = S.synth_subject(2, shape, anatomy="procedural", skull=False, affine=grid)
    assert S.ENHANCING in subject.label
    np.testing.assert_array_equal(label, np.where(subject.label == S.ENHANCING, 3, subject.label))
    flair, _ = _canonical(record["image"][0])
    np.testing.assert_array_equal(flair, np.rint(subject.images["flair"]))


def test_write_atlas(tmp_path):
    shape = (40, 46, 38)
    records = S.write_atlas(tmp_path, 6, shape=shape, seed=1, anatomy="procedural")
    ids = [r["id"] for r in records]
    assert ids == [f"sub-r001s00{i}" for i in range(1, 6)] + ["sub-r002s006"]
    space = "space-MNI152NLin2009aSym"
    expected = []
    for sub in ids:
        folder = f"ATLAS_2/Training/R{sub[5:8]}/{sub}/ses-1/anat"
        expected += [
            f"{folder}/{sub}_ses-1_{space}_T1w.nii.gz",
            f"{folder}/{sub}_ses-1_{space}_label-L_desc-T1lesion_mask.nii.gz",
        ]
    assert _relative_files(tmp_path) == sorted(expected)

    record = records[-1]
    image = nib.load(record["image"][0])
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    grid = S.grid_affine(shape, S.ATLAS_FOV_MM, S.ATLAS_CENTER_MM)
    np.testing.assert_allclose(image.affine, grid, rtol=1e-6)
    subject = S.synth_subject(1 + 6, shape, anatomy="procedural", lesion="stroke", affine=grid)
    np.testing.assert_array_equal(np.asarray(image.dataobj), subject.images["t1"])
    for record in records:
        mask = np.asarray(nib.load(record["label"]).dataobj)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}


def test_atlas_default_grid_is_the_mni152_2009a_grid():
    affine = S.grid_affine((197, 233, 189), S.ATLAS_FOV_MM, S.ATLAS_CENTER_MM)
    expected = np.diag([1.0, 1.0, 1.0, 1.0])
    expected[:3, 3] = [-98.0, -134.0, -72.0]
    np.testing.assert_allclose(affine, expected)


def test_write_unlabeled(tmp_path):
    shape = (36, 44, 36)
    records = S.write_unlabeled(tmp_path, 2, shape=shape, seed=3, anatomy="procedural")
    eids = ["1000000", "1000001"]
    files = [f"{e}/T1/T1_brain_to_MNI.nii.gz" for e in eids] + [
        f"{e}/T2_FLAIR/T2_FLAIR_brain_to_MNI.nii.gz" for e in eids
    ]
    assert _relative_files(tmp_path) == sorted([*files, "subjects.csv"])
    with open(tmp_path / "subjects.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["subject", "t1", "flair"]] + [
        [e, f"{e}/T1/T1_brain_to_MNI.nii.gz", f"{e}/T2_FLAIR/T2_FLAIR_brain_to_MNI.nii.gz"] for e in eids
    ]
    assert [r["id"] for r in records] == eids and all(r["label"] is None for r in records)

    flair = nib.load(records[1]["image"][1])
    grid = S.grid_affine(shape, S.UKB_FOV_MM, S.UKB_CENTER_MM)
    np.testing.assert_allclose(flair.affine, grid, rtol=1e-6)
    subject = S.synth_subject(3 + 1, shape, anatomy="procedural", lesion=None, skull=False, affine=grid)
    np.testing.assert_array_equal(np.asarray(flair.dataobj), subject.images["flair"])


def test_command_line(tmp_path):
    records = S.main(
        [
            "brats",
            "--out",
            str(tmp_path),
            "--n",
            "1",
            "--shape",
            "32",
            "32",
            "24",
            "--version",
            "2023",
            "--anatomy",
            "procedural",
        ]
    )
    assert len(records) == 1 and (tmp_path / "brats23_folds.json").exists()
    assert nib.load(records[0]["label"]).shape == (32, 32, 24)
