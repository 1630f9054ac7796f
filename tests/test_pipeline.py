"""Layouts read back from synthetic trees on disk, and the grain pipeline: determinism across
seeds, worker counts and processes, exact resume from the iterator state, and the cache."""

import csv
import json
import os
import shutil

import numpy as np
import pytest

from jaxbrain.data import layouts, nifti, pipeline, synthetic, transforms as T
from jaxbrain.data.nifti import DataError

SHAPE = (48, 48, 40)
BRATS_AFFINE = synthetic.grid_affine(SHAPE, synthetic.BRATS_FOV_MM, synthetic.BRAIN_CENTER_MM)
AUGMENT = "rand_crop(roi=(24, 24, 24), pos_fraction=0.5), brats_regions, rand_flip, rand_scale_shift"


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("brats21"))
    synthetic.write_brats(root, 6, version=2021, shape=SHAPE, seed=0, anatomy="procedural")
    return root


@pytest.fixture(scope="module")
def cases(brats_root):
    return layouts.brats(brats_root)


def test_brats_2021_tree_reads_back(brats_root, cases):
    assert [c.id for c in cases] == [f"BraTS2021_{i:05d}" for i in range(6)]
    assert [os.path.basename(p) for p in cases[2].images] == [
        f"BraTS2021_00002_{m}.nii.gz" for m in ("flair", "t1ce", "t1", "t2")]
    record = T.load_case(cases[2])
    subject = synthetic.synth_subject(2, SHAPE, lesion="tumour", anatomy="procedural", skull=False,
                                     affine=BRATS_AFFINE)
    # The files are stored LPS like real BraTS; reading gives back the RAS arrays.
    for c, name in enumerate(("flair", "t1ce", "t1", "t2")):
        np.testing.assert_allclose(record["image"][..., c], subject.images[name], rtol=1e-3, atol=1)
    np.testing.assert_array_equal(record["label"], subject.label)
    assert set(np.unique(record["label"])) <= {0, 1, 2, 4}
    # The datalist with folds gives the same cases.
    listed = layouts.datalist(os.path.join(brats_root, "brats21_folds.json"))
    assert sorted(c.images for c in listed) == sorted(c.images for c in cases)
    train, val = layouts.split_fold(listed, 1)
    assert len(train) + len(val) == 6 and {c.fold for c in val} == {1} and 1 not in {c.fold for c in train}
    with pytest.raises(DataError, match="fold 7 not in the datalist"):
        layouts.split_fold(listed, 7)


def test_brats_2023_tree_reads_back(tmp_path):
    root = str(tmp_path)
    synthetic.write_brats(root, 2, version=2023, shape=SHAPE, seed=5, anatomy="procedural")
    cases = layouts.brats(root)
    assert cases[0].labels == "brats2023" and cases[0].id == "BraTS-GLI-00000-000"
    assert [p.rsplit("-", 1)[1] for p in cases[0].images] == ["t2f.nii.gz", "t1c.nii.gz", "t1n.nii.gz", "t2w.nii.gz"]
    record = T.load_case(cases[1])
    subject = synthetic.synth_subject(6, SHAPE, lesion="tumour", anatomy="procedural", skull=False,
                                     affine=BRATS_AFFINE)
    expected = subject.label.copy()
    expected[expected == 4] = 3
    np.testing.assert_array_equal(record["label"], expected)
    regions = T.BratsRegions("brats2023")(record)["label"]
    np.testing.assert_array_equal(regions[..., 2], subject.label == 4)


def test_brats_tree_errors(tmp_path, brats_root):
    root = str(tmp_path / "copy")
    shutil.copytree(brats_root, root)
    os.remove(os.path.join(root, "BraTS2021_00003", "BraTS2021_00003_t1ce.nii.gz"))
    with pytest.raises(DataError, match="BraTS2021_00003_t1ce.nii.gz: file not found"):
        layouts.brats(root)
    with pytest.raises(DataError, match="no_such_dir: BraTS root folder not found"):
        layouts.brats(str(tmp_path / "no_such_dir"))
    os.remove(os.path.join(root, "BraTS2021_00001", "BraTS2021_00001_seg.nii.gz"))
    with pytest.raises(DataError, match="BraTS2021_00001_seg.nii.gz: file not found"):
        layouts.brats(root, require_label=True)


def test_atlas_tree_reads_back(tmp_path):
    root = str(tmp_path)
    synthetic.write_atlas(root, 6, shape=(40, 48, 40), seed=3, anatomy="procedural")
    cases = layouts.atlas(root)
    assert len(cases) == 6 and cases[0].id == "sub-r001s001_ses-1"
    assert {os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(c.images[0])))))
            for c in cases} == {"R001", "R002"}
    record = T.load_case(cases[0])
    assert record["image"].shape == (40, 48, 40, 1) and set(np.unique(record["label"])) <= {0, 1}
    os.remove(cases[4].label)
    with pytest.raises(DataError, match="label-L_desc-T1lesion_mask.nii.gz: file not found"):
        layouts.atlas(root)
    assert layouts.atlas(root, require_label=False)[4].label is None


def test_unlabeled_subject_lists(tmp_path):
    root = str(tmp_path)
    synthetic.write_unlabeled(root, 3, shape=(40, 48, 40), seed=1, anatomy="procedural")
    from_csv = layouts.subjects(os.path.join(root, "subjects.csv"))
    globs = {"t1": os.path.join(root, "*", "T1", "T1_brain_to_MNI.nii.gz"),
             "flair": os.path.join(root, "*", "T2_FLAIR", "T2_FLAIR_brain_to_MNI.nii.gz")}
    from_glob = layouts.subjects(globs)
    rows = [{"t1": c.images[0], "flair": c.images[1]} for c in from_csv]
    with open(os.path.join(root, "subjects.json"), "w") as f:
        json.dump(rows, f)
    from_json = layouts.subjects(os.path.join(root, "subjects.json"))
    assert [c.images for c in from_csv] == [c.images for c in from_glob] == [c.images for c in from_json]
    assert [c.id for c in from_glob] == sorted(os.listdir(root))[:3]
    assert T.load_case(from_csv[0])["image"].shape[-1] == 2
    # A subject with T1 but no FLAIR is reported, not dropped.
    os.remove(from_csv[1].images[1])
    with pytest.raises(DataError, match=f"no flair file for subjects \\['{from_csv[1].id}'\\]"):
        layouts.subjects(globs)
    with pytest.raises(DataError, match=r"T2_FLAIR_brain_to_MNI.nii.gz: file not found"):
        layouts.subjects(os.path.join(root, "subjects.csv"))
    with open(os.path.join(root, "bad.csv"), "w") as f:
        csv.writer(f).writerows([["subject", "t1"], ["x", from_csv[0].images[0]]])
    with pytest.raises(DataError, match=r"bad.csv: row 1: no path for channel\(s\) \['flair'\]"):
        layouts.subjects(os.path.join(root, "bad.csv"))


def _batches(cases, n, *, seed=0, workers=0, shard=(0, 1), batch=4, crops=2, preprocess="zscore"):
    ds = pipeline.training_dataset(cases, preprocess=preprocess, augment=AUGMENT, global_batch_size=batch,
                                   seed=seed, crops_per_volume=crops, shard=shard)
    it = iter(pipeline.loader(ds, workers=workers))
    out = [next(it) for _ in range(n)]
    return out, it


def _equal(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "label"))


def test_training_batches(cases):
    (batch,), _ = _batches(cases, 1)
    assert batch["image"].shape == (4, 24, 24, 24, 4) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 24, 24, 24, 3) and batch["label"].dtype == np.uint8
    # Balanced crops: most of them contain tumour.
    many, _ = _batches(cases, 6)
    hit = np.mean([b["label"][i].any() for b in many for i in range(4)])
    assert hit >= 0.4


def test_determinism_across_seeds_workers_and_processes(cases):
    ref, _ = _batches(cases, 4, seed=0)
    again, _ = _batches(cases, 4, seed=0)
    other, _ = _batches(cases, 4, seed=1)
    assert _equal(ref, again)
    assert not _equal(ref, other)
    workers, it = _batches(cases, 4, seed=0, workers=2)
    assert _equal(ref, workers)
    del it
    # Two processes each read their block; together they make the single-process global batch.
    halves = [_batches(cases, 4, seed=0, shard=(p, 2))[0] for p in range(2)]
    joined = [{k: np.concatenate([halves[0][i][k], halves[1][i][k]]) for k in ("image", "label")}
              for i in range(4)]
    assert _equal(ref, joined)


def test_resume_from_iterator_state(cases):
    ref, _ = _batches(cases, 5, seed=3)
    ds = pipeline.training_dataset(cases, preprocess="zscore", augment=AUGMENT, global_batch_size=4, seed=3,
                                   crops_per_volume=2, shard=(0, 1))
    it = iter(pipeline.loader(ds))
    [next(it) for _ in range(2)]
    state = it.get_state()
    resumed = iter(pipeline.loader(ds))
    resumed.set_state(json.loads(json.dumps(state)))  # states survive serialisation
    assert _equal(ref[2:], [next(resumed) for _ in range(3)])


def test_cache_returns_the_direct_arrays(cases, tmp_path):
    preprocess = "crop_foreground(margin=1), zscore"
    pipeline.build_cache(cases, preprocess, str(tmp_path), workers=0)
    cached = pipeline.open_cache(str(tmp_path), preprocess, cases)
    for case, entry in zip(cases, cached):
        direct = T.apply(pipeline.parse_transforms(preprocess), T.load_case(case))
        from_cache = entry.load()
        assert isinstance(from_cache["image"], np.memmap)
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.asarray(from_cache[key]), direct[key])
        assert from_cache["geometry"] == direct["geometry"]
    direct_batches, _ = _batches(cases, 3, preprocess=preprocess)
    cached_batches, _ = _batches(cached, 3, preprocess=preprocess)
    assert _equal(direct_batches, cached_batches)
    evals = [pipeline.eval_dataset(c, preprocess=preprocess, shard=(0, 1))[1] for c in (cases, cached)]
    np.testing.assert_array_equal(evals[0]["image"], np.asarray(evals[1]["image"]))
    with pytest.raises(DataError, match="cache built with preprocess .* but .*zscore.* was asked for"):
        pipeline.open_cache(str(tmp_path), "zscore", cases)


def test_eval_volumes_write_back_to_source_space(cases, tmp_path):
    ds = pipeline.eval_dataset(cases, preprocess="crop_foreground, zscore", shard=(0, 1))
    assert len(ds) == 6
    record = ds[0]
    out = str(tmp_path / "pred.nii.gz")
    nifti.write_volume(out, record["label"], record["geometry"])
    import nibabel as nib
    written, source = nib.load(out), nib.load(cases[0].label)
    np.testing.assert_allclose(written.affine, source.affine)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(source.dataobj))
    shards = [pipeline.eval_dataset(cases, preprocess="zscore", shard=(p, 2)) for p in range(2)]
    assert sorted(r["id"] for s in shards for r in s) == [c.id for c in cases]


def test_bad_case_inside_the_pipeline_names_the_file(tmp_path, brats_root):
    root = str(tmp_path / "copy")
    shutil.copytree(brats_root, root)
    bad = os.path.join(root, "BraTS2021_00004", "BraTS2021_00004_t2.nii.gz")
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 3])
    cases = layouts.brats(root)
    ds = pipeline.eval_dataset(cases, preprocess="zscore", shard=(0, 1))
    with pytest.raises(DataError, match="BraTS2021_00004_t2.nii.gz: corrupt or truncated"):
        [ds[i] for i in range(len(ds))]


def test_cache_and_synth_commands(tmp_path, capsys):
    from jaxbrain.data.__main__ import main
    data, cache = str(tmp_path / "atlas"), str(tmp_path / "cache")
    main(["synth", "atlas", "--out", data, "--n", "2", "--shape", "32", "40", "32", "--anatomy", "procedural"])
    main(["cache", "--layout", "atlas", "--root", data, "--out", cache,
          "--preprocess", "resize(shape=(16, 16, 16)), zscore"])
    assert "cached 2 cases" in capsys.readouterr().out
    cached = pipeline.open_cache(cache, "resize(shape=(16,16,16)),zscore", layouts.atlas(data))
    record = cached[0].load()
    assert record["image"].shape == (16, 16, 16, 1) and record["label"].shape == (16, 16, 16)
