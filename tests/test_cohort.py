"""The synthetic cohort writer (age-, sex-, disease- and site-dependent anatomy, read back
through the label table) and the whole-scan preprocessing transforms."""

import dataclasses
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from jaxbrain.data import cohort, nifti, pipeline, synthetic, tables
from jaxbrain.data import transforms as T
from jaxbrain.data.layouts import Case

SHAPE = (46, 55, 46)  # the MNI box at about 4 mm
N = 36
SEED = 5


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    rows = cohort.write_cohort(root, N, shape=SHAPE, seed=SEED, workers=0, progress=False)
    table = tables.load_table(str(root))
    volumes = [nifti.read_volume(c.images[0])[0] for c in table.cases]
    return root, rows, table, volumes


def test_table_reads_back_into_cases_whose_files_exist(written):
    root, rows, table, volumes = written
    assert len(table.cases) == len(rows) > N and table.rows == len(rows)
    assert len({c.meta["subject"] for c in table.cases}) == N
    assert table.classes == ("CN", "MCI", "AD")
    first = table.cases[0]
    assert first.id == "sub-0001_ses-01" and os.path.exists(first.images[0])
    assert first.images[0].endswith("sub-0001/ses-01/anat/sub-0001_ses-01_T1w.nii.gz")
    assert all(os.path.exists(c.images[0]) for c in table.cases)
    assert {c.meta["site"] for c in table.cases} == {"site1", "site2", "site3", "site4"}
    baseline = [c for c in table.cases if c.meta["session"] == "ses-01"]
    assert sum(c.meta["sex"] == "M" for c in baseline) == N // 2
    assert [sum(c.target == k for c in baseline) for k in range(3)] == [14, 13, 9]  # 40/35/25 %
    by_subject = {}
    for c in table.cases:
        by_subject.setdefault(c.meta["subject"], []).append(c)
    followed = [m for m in by_subject.values() if len(m) == 2]
    assert 0 < len(followed) < N
    for a, b in followed:
        assert 1.0 <= b.meta["age"] - a.meta["age"] <= 2.05
        assert (a.meta["sex"], a.meta["site"]) == (b.meta["sex"], b.meta["site"])
        assert b.target >= a.target  # no recovery; MCI may convert to AD
    img = nib.load(first.images[0])
    assert img.get_data_dtype() == np.int16 and img.shape == SHAPE
    np.testing.assert_allclose(img.affine, cohort.grid(SHAPE))
    assert all(v[0].max() == 0 and v[:, 0].max() == 0 and v.min() == 0 for v in volumes)
    fsl_2mm = np.array([[2, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], float)
    np.testing.assert_allclose(cohort.grid(cohort.MNI_2MM_SHAPE), fsl_2mm)


def test_same_seed_same_scans(written):
    root, _, table, _ = written
    scans = cohort.plan(N, seed=SEED)
    assert scans == cohort.plan(N, seed=SEED) and scans != cohort.plan(N, seed=SEED + 1)
    for scan in scans[:2]:
        image, _ = cohort.render(scan, SHAPE)
        stored = np.asanyarray(nib.load(os.path.join(root, scan.path)).dataobj)
        np.testing.assert_array_equal(synthetic._int16(image), stored)


def _measures(table, volumes):
    """Per scan: dark (CSF-like) voxels in the central box around the lateral ventricles and
    in the hippocampi, and the brain's voxel count, from the written images alone."""
    affine = cohort.grid(SHAPE)
    axes = [affine[k, 3] + affine[k, k] * np.arange(n) for k, n in enumerate(SHAPE)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    box = (np.abs(x) < 30) & (y > -45) & (y < 30) & (z > -5) & (z < 35)
    hippocampi = np.zeros(SHAPE, bool)
    for (cx, cy, cz), (rx, ry, rz) in cohort._HIPPOCAMPI:
        hippocampi |= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 < 1
    out = []
    for v in volumes:
        brain = v > 0
        dark = brain & (v < 0.5 * np.percentile(v[brain], 95))
        out.append((dark[box].sum(), dark[hippocampi].sum(), brain.sum()))
    return np.array(out, float).T


def _auc(pos, neg):
    return np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])


def test_images_carry_age_disease_and_sex_signal(written):
    _, _, table, volumes = written
    ventricles, hippocampi, brain = _measures(table, volumes)
    ventricles = ventricles / brain  # a fraction of the brain, as ventricles / ICV
    age = np.array([c.meta["age"] for c in table.cases])
    dx = np.array([c.meta["diagnosis"] for c in table.cases])
    assert np.corrcoef(ventricles, age)[0, 1] > 0.6
    cn = dx == "CN"
    fit = np.polyfit(ventricles[cn], age[cn], 1)  # brain age from the ventricles alone
    assert np.abs(np.polyval(fit, ventricles) - age)[cn].mean() < 0.7 * age[cn].std()
    for measure in (ventricles, hippocampi):  # AD above CN at matched age
        residual = measure - np.polyval(np.polyfit(age[cn], measure[cn], 1), age)
        assert _auc(residual[dx == "AD"], residual[cn]) > 0.7
    sex = np.array([c.meta["sex"] for c in table.cases])
    assert _auc(brain[sex == "M"], brain[sex == "F"]) > 0.7


def test_pd_cohort_darkens_the_nigra_and_reads_as_hc_vs_pd(tmp_path):
    scans = cohort.plan(4, seed=0, pd=True, followup=0.0)
    assert [s.diagnosis for s in scans] == ["PD", "HC", "PD", "PD"]
    pd = next(s for s in scans if s.diagnosis == "PD")
    with_nigra, _ = cohort.render(pd, SHAPE)
    without, _ = cohort.render(dataclasses.replace(pd, nigra=0.0), SHAPE)
    changed = np.argwhere(with_nigra != without)
    affine = cohort.grid(SHAPE)
    mm = changed * np.diag(affine)[:3] + affine[:3, 3]
    centres = np.array([c for c, _ in cohort._NIGRA])
    assert len(changed) and (np.linalg.norm(mm[:, None] - centres, axis=-1).min(1) < 20).all()
    darker = (without - with_nigra) / np.maximum(without, 1)
    assert darker.max() > 0.05 and (without - with_nigra).sum() > 0
    synthetic.main(["cohort", "--out", str(tmp_path), "--n", "3", "--shape", "23", "28", "23",
                    "--pd", "--workers", "0"])
    table = tables.load_table(str(tmp_path), classes=("HC", "PD"))
    baseline = [c.target for c in table.cases if c.meta["session"] == "ses-01"]
    assert sorted(baseline) == [0.0, 1.0, 1.0]  # 35 % HC, 65 % PD


def test_training_config_writes_and_reads_a_cohort(tmp_path):
    from jaxbrain.training import data as data_lib
    cfg = ConfigDict({"layout": "table", "root": None, "fold": 0,
                      "synthetic": {"kind": "cohort", "n": 3, "shape": (23, 28, 23)}})
    train, val = data_lib.cases(cfg, str(tmp_path))
    assert val == [] and {c.meta["subject"] for c in train} == {"sub-0001", "sub-0002", "sub-0003"}
    assert os.path.exists(tmp_path / "data" / "cohort" / "labels.csv")


# --------------------------------------------------------------------------- whole-scan transforms


@pytest.mark.parametrize("shape, target", [((20, 23, 17), (16, 24, 18)), ((25, 30, 12), (21, 20, 11)),
                                           ((46, 55, 46), (48, 48, 48))])
def test_center_crop_or_pad_matches_monai(shape, target):
    from monai.transforms import ResizeWithPadOrCrop
    image = np.random.default_rng(0).random(shape + (2,)).astype(np.float32)
    ours = T.CenterCropOrPad(target)({"image": image})["image"]
    theirs = ResizeWithPadOrCrop(target)(torch.from_numpy(np.moveaxis(image, -1, 0).copy()))
    np.testing.assert_array_equal(ours, np.moveaxis(np.asarray(theirs), 0, -1))


def test_affine_matches_monai_affine():
    from monai.transforms import Affine
    from scipy import ndimage
    image = ndimage.gaussian_filter(np.random.default_rng(1).random((20, 23, 17, 2)), (2, 2, 2, 0))
    image = image.astype(np.float32)
    angles, scale, shift = (4.0, -3.0, 6.0), (1.08, 0.93, 1.05), (2.5, -1.0, 3.0)
    matrix = T.affine_matrix(angles, scale, shift)
    label = (image[..., 0] > np.median(image[..., 0])).astype(np.uint8)
    for x, mode, order in ((image, "bilinear", 1), (label[..., None], "nearest", 0)):
        monai = Affine(rotate_params=tuple(np.deg2rad(angles)), scale_params=scale,
                       translate_params=shift, mode=mode, padding_mode="zeros", image_only=True)
        theirs = np.moveaxis(np.asarray(monai(torch.from_numpy(np.moveaxis(x, -1, 0).astype(np.float32)))), 0, -1)
        np.testing.assert_allclose(T.warp_affine(x, matrix, order), theirs, atol=1e-5)


def test_rand_affine_is_deterministic_and_keeps_labels_aligned():
    record = {"image": np.random.default_rng(2).random((24, 20, 16, 1)).astype(np.float32),
              "label": np.zeros((24, 20, 16), np.uint8)}
    record["image"][8:14, 6:12, 5:10] += 5.0
    record["label"][8:14, 6:12, 5:10] = 1
    t = pipeline.parse_transform("rand_affine(rotate=6, scale=0.1, translate=3)")
    a, b = t(record, np.random.default_rng(7)), t(record, np.random.default_rng(7))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], t(record, np.random.default_rng(8))["image"])
    assert a["image"].shape == record["image"].shape and a["label"].dtype == np.uint8
    assert a["image"][a["label"] == 1].mean() > 4.5 > a["image"][a["label"] == 0].mean() + 3.5
    assert pipeline.parse_transform("rand_affine(prob=0.0)")(record, np.random.default_rng(0)) is record
    with pytest.raises(ValueError, match="rand_affine scale"):
        T.RandAffine(scale=1.5)


def test_robust_scale_clips_outliers_and_keeps_background():
    rng = np.random.default_rng(3)
    image = np.zeros((10, 10, 10, 2), np.float32)
    image[2:8, 2:8, 2:8] = rng.normal(100.0, 10.0, (6, 6, 6, 2))
    image[4, 4, 4, 0] = 1e6  # a hot voxel
    out = pipeline.parse_transform("robust_scale")({"image": image})["image"]
    brain = image[..., 0] != 0
    assert (out[~brain] == 0).all()
    for c in range(2):
        values = out[..., c][brain]
        assert abs(values.mean()) < 1e-5 and abs(values.std() - 1) < 1e-5
        assert values.max() < 3.5  # the hot voxel is clipped to the 99th percentile


def test_whole_scan_preprocessing_of_a_cohort_scan(written):
    _, _, table, _ = written
    case = table.cases[0]
    record = T.load_case(Case(id=case.id, images=case.images))
    specs = "resample(spacing=(2, 2, 2)), center_crop_or_pad(shape=(96, 96, 96)), robust_scale"
    out = T.apply(pipeline.parse_transforms(specs), record)
    assert record["image"].shape == SHAPE + (1,) and out["image"].shape == (96, 96, 96, 1)
    np.testing.assert_allclose(out["geometry"].spacing, 2.0, atol=0.02)
    brain = out["image"][..., 0] != 0
    assert abs(out["image"][..., 0][brain].mean()) < 1e-4
