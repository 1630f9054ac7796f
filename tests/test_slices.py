"""The 2D axial slice source: robust scaling, empty slices, mixture weights, determinism,
resumption, per-process shards, the volume cache and named errors."""

import os

import ml_collections
import nibabel as nib
import numpy as np
import pytest

from jaxbrain.data import pipeline, slices
from jaxbrain.data.nifti import DataError
from jaxbrain.training import loop

SHAPE = (20, 24, 16)  # (X, Y, Z): 16 axial slices


def _volume(seed: int, empty: tuple[int, ...] = (0, 1, 14, 15)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 50.0, SHAPE).astype(np.float32)
    x[:3], x[-3:] = 0, 0  # background around the brain
    x[:, :, list(empty)] = 0
    x[:, :, 2][x[:, :, 2] > 0] *= rng.random(x[:, :, 2][x[:, :, 2] > 0].shape) > 0.9  # sparse
    return x


def _write(path, x):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(x, np.eye(4)), path)
    return path


def _subjects(root, n: int, seed: int = 0) -> str:
    rows = ["subject,t1"]
    for i in range(n):
        _write(os.path.join(root, f"s{i}", "t1.nii.gz"), _volume(seed + i))
        rows.append(f"s{i},s{i}/t1.nii.gz")
    with open(os.path.join(root, "subjects.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("slices")
    return {"a": _subjects(str(base / "a"), 3, 0), "b": _subjects(str(base / "b"), 2, 100),
            "base": str(base)}


@pytest.fixture(scope="module")
def cols(data):
    return slices.collections_of([{"root": data["a"], "weight": 1.0},
                                  {"root": data["b"], "weight": 3.0}])


OPTIONS = dict(slice_size=12, brain_fraction=0.2, slices_per_volume=4, volumes_in_memory=2)


def test_robust_scale_equals_numpy():
    x = _volume(7)
    x[5, 5, 5] = -3.0  # <= 0: background, as zeros
    brain = x[x > 0].astype(np.float64)
    lo, hi = np.percentile(brain, 1), np.percentile(brain, 99)
    clipped = np.minimum(np.maximum(brain, lo), hi)
    expected = np.zeros_like(x)
    expected[x > 0] = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(slices.robust_scale(x), expected, rtol=1e-6, atol=1e-6)
    assert slices.robust_scale(x)[5, 5, 5] == 0
    flat = np.where(x > 0, 5.0, 0.0).astype(np.float32)  # std 0: the floor, not a division by 0
    np.testing.assert_array_equal(slices.robust_scale(flat), np.zeros_like(flat))


def test_resize_is_torch_bilinear():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((3, 20, 24)).astype(np.float32)
    for size in ((12, 12), (40, 31)):
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], size=size,
                                              mode="bilinear", align_corners=False)[:, 0]
        np.testing.assert_allclose(slices.resize_slices(x, size), ref.numpy(), atol=1e-5)


def test_slices_are_scaled_axial_slices_with_brain(cols):
    plan = slices.SlicePlan(cols, seed=0, **OPTIONS)
    for v in range(6):
        got = plan.volume_slices(v)
        c, j = plan.draw(v)
        x = nib.load(cols[c].volumes[j].path).get_fdata().astype(np.float32)
        fractions = (x > 0).mean(axis=(0, 1))
        assert (fractions[got["slice"]] >= 0.2).all()
        assert not {0, 1, 2, 14, 15} & set(got["slice"].tolist())  # empty and sparse slices
        assert len(set(got["slice"].tolist())) == 4  # without replacement when there are enough
        scaled = np.moveaxis(slices.robust_scale(x), 2, 0)[got["slice"]]
        np.testing.assert_allclose(got["image"], slices.resize_slices(scaled, (12, 12)), atol=1e-6)


def test_mixture_weights_over_many_draws(cols):
    plan = slices.SlicePlan(cols, seed=3, **OPTIONS)
    n = 20000
    drawn = np.asarray([plan.draw(v) for v in range(n)])
    share = np.bincount(drawn[:, 0], minlength=2) / n
    assert abs(share[1] - 0.75) < 4 * np.sqrt(0.75 * 0.25 / n)
    for c, size in ((0, 3), (1, 2)):  # each pass over a collection takes every volume once
        order = drawn[drawn[:, 0] == c, 1]
        for epoch in range(5):
            assert sorted(order[epoch * size:(epoch + 1) * size]) == list(range(size))


def test_deterministic_and_resumable(cols):
    ds = slices.training_dataset(cols, global_batch_size=6, seed=1, shard=(0, 1), **OPTIONS)
    again = slices.training_dataset(cols, global_batch_size=6, seed=1, shard=(0, 1), **OPTIONS)
    other = slices.training_dataset(cols, global_batch_size=6, seed=2, shard=(0, 1), **OPTIONS)
    for j in (0, 3):
        np.testing.assert_array_equal(ds[j]["image"], again[j]["image"])
    assert not np.array_equal(ds[0]["image"], other[0]["image"])
    first = ds[0]
    assert first["image"].shape == (6, 12, 12, 3) and first["image"].dtype == np.float32
    np.testing.assert_array_equal(first["image"][..., 0], first["image"][..., 2])

    it = iter(pipeline.loader(ds, threads=2))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = iter(pipeline.loader(again, threads=2))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_process_shards_are_disjoint_blocks_of_one_global_batch(cols):
    whole = slices.training_dataset(cols, global_batch_size=8, seed=0, shard=(0, 1), **OPTIONS)
    parts = [slices.training_dataset(cols, global_batch_size=8, seed=0, shard=(i, 2), **OPTIONS)
             for i in range(2)]
    plan = slices.SlicePlan(cols, seed=0, **OPTIONS)
    for j in range(3):
        joined = np.concatenate([p[j]["image"] for p in parts])
        np.testing.assert_array_equal(joined, whole[j]["image"])
        blocks = [{plan.locate(i) for i in range(j * 8 + 4 * k, j * 8 + 4 * (k + 1))}
                  for k in range(2)]
        assert len(blocks[0]) == len(blocks[1]) == 4 and not blocks[0] & blocks[1]


def test_each_volume_is_read_once(cols):
    plan = slices.SlicePlan(cols, seed=0, **OPTIONS)
    ds = slices.batches(plan, global_batch_size=8, shard=(0, 1))
    for j in range(6):  # 48 slices = 12 volume draws of 4 slices, shuffled in pairs of draws
        ds[j]
    touched = {plan.locate(i)[0] for i in range(48)}
    assert plan.reads == len(touched) == 12


def test_errors_name_the_file_line_or_collection(data, tmp_path):
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "subjects.csv").write_text("subject,t1\ns0,nowhere.nii.gz\n")
    with pytest.raises(DataError, match=r"collection missing: .*nowhere\.nii\.gz"):
        slices.collections_of([{"root": str(missing)}])

    table = tmp_path / "table"
    table.mkdir()
    (table / "labels.csv").write_text("subject,t1\na,gone.nii.gz\n")
    with pytest.raises(DataError, match=r"gone\.nii\.gz.*line 2|line 2.*gone\.nii\.gz"):
        slices.collections_of([{"root": str(table), "layout": "table", "name": "t"}])

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "subjects.csv").write_text("subject,t1\n")
    with pytest.raises(DataError, match="collection empty"):
        slices.collections_of([{"root": str(empty)}])

    broken = tmp_path / "broken"
    _subjects(str(broken), 1)
    with open(broken / "s0" / "t1.nii.gz", "wb") as f:
        f.write(b"not a nifti file")
    plan = slices.SlicePlan(slices.collections_of([{"root": str(broken)}]), seed=0, **OPTIONS)
    with pytest.raises(DataError, match=r"collection broken: .*s0/t1\.nii\.gz"):
        plan.volume_slices(0)

    blank = tmp_path / "blank"
    _write(str(blank / "s0" / "t1.nii.gz"), np.zeros(SHAPE, np.float32))
    (blank / "subjects.csv").write_text("subject,t1\ns0,s0/t1.nii.gz\n")
    plan = slices.SlicePlan(slices.collections_of([{"root": str(blank)}]), seed=0, **OPTIONS)
    with pytest.raises(DataError, match="no axial slice has a brain fraction"):
        plan.volume_slices(0)

    with pytest.raises(ValueError, match="weight must be > 0"):
        slices.collections_of([{"root": data["a"], "weight": 0}])
    with pytest.raises(ValueError, match=r"unknown keys \['wieght'\]"):
        slices.collections_of([{"root": data["a"], "wieght": 1}])


def test_the_loop_reads_a_slice_source_from_the_config(tmp_path):
    config = ml_collections.ConfigDict({
        "seed": 0, "batch_size": 4,
        "data": {"source": "slices", "slice_size": 16, "brain_fraction": 0.05,
                 "slices_per_volume": 2, "volumes_in_memory": 2,
                 "collections": [{"name": "ukb", "synthetic": {"kind": "unlabeled", "n": 2,
                                                               "shape": (24, 28, 24)},
                                  "channels": ("t1", "flair")}]}})
    train_cases, val_cases, ds = loop.training_data(config, str(tmp_path))
    assert train_cases == [] and val_cases == []
    batch = ds[0]
    assert batch["image"].shape == (4, 16, 16, 3)
    assert set(batch["collection"].tolist()) == {0}
    assert os.path.exists(tmp_path / "data" / "ukb" / "subjects.csv")
    config.data.source = "slabs"
    with pytest.raises(ValueError, match="unknown source 'slabs'"):
        loop.training_data(config, str(tmp_path))
