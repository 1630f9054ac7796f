"""Folds the project makes itself: BraTS / ATLAS trees without a datalist get a deterministic
5-fold split by subject, saved as workdir/folds.json and read back on resume."""

import json
import os
import shutil

import pytest

from jaxbrain.data import layouts, synthetic
from jaxbrain.data.layouts import Case
from jaxbrain.data.nifti import DataError
from jaxbrain.training import data as data_lib
from jaxbrain.training.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (16, 16, 12)
N_BRATS = 12


@pytest.fixture(scope="module")
def brats_tree(tmp_path_factory):
    """A plain BraTS 2021 download: case folders only, no datalist."""
    root = tmp_path_factory.mktemp("brats") / "BraTS2021"
    synthetic.write_brats(root, N_BRATS, shape=SHAPE, anatomy="procedural")
    os.remove(root / "brats21_folds.json")
    return root


@pytest.fixture(scope="module")
def atlas_tree(tmp_path_factory):
    """ATLAS BIDS tree where two subjects have a second session (ses-2, a copy of ses-1)."""
    root = tmp_path_factory.mktemp("atlas")
    records = synthetic.write_atlas(root, 8, shape=SHAPE, anatomy="procedural")
    for rec in records[:2]:
        ses1 = os.path.dirname(os.path.dirname(rec["image"][0]))
        ses2 = os.path.join(os.path.dirname(ses1), "ses-2")
        shutil.copytree(ses1, ses2)
        for name in os.listdir(os.path.join(ses2, "anat")):
            os.rename(os.path.join(ses2, "anat", name),
                      os.path.join(ses2, "anat", name.replace("_ses-1_", "_ses-2_")))
    return root


def _data(config, root, **overrides):
    c = load_config_file(os.path.join(ROOT, "configs", config))
    c.data.root = str(root)
    c.data.update(overrides)
    return c.data


def _folds(workdir):
    with open(os.path.join(workdir, data_lib.FOLDS_FILE)) as f:
        return {e["id"]: e["fold"] for e in json.load(f)["training"]}


def test_brats_without_datalist_gets_five_saved_folds(brats_tree, tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train, val = data_lib.cases(_data("brats_swinunetr.py", brats_tree), a)
    out = capsys.readouterr().out.strip().splitlines()
    path = os.path.join(a, "folds.json")
    assert len(out) == 1 and path in out[0] and "fold sizes 3, 3, 2, 2, 2" in out[0], out
    saved = _folds(a)
    assert sorted(saved) == sorted(os.listdir(brats_tree)) and set(saved.values()) == set(range(5))
    assert sorted(c.id for c in val) == sorted(i for i, k in saved.items() if k == 0)
    assert sorted(c.id for c in train + val) == sorted(saved)
    assert all(c.labels == "brats2021" and c.fold == saved[c.id] for c in train + val)
    # The file is a datalist the project reads (paths absolute, so another run can use it).
    listed = layouts.datalist(path)
    assert {c.id: c.fold for c in listed} == saved
    assert [c.images for c in listed] == [c.images for c in sorted(train + val, key=lambda c: c.id)]
    # Deterministic: a fresh workdir gets the same split; another split_seed another one.
    again = data_lib.cases(_data("brats_swinunetr.py", brats_tree), b)
    assert again == (train, val) and _folds(b) == saved
    other = str(tmp_path / "other")
    data_lib.cases(_data("brats_swinunetr.py", brats_tree, split_seed=1), other)
    assert _folds(other) != saved
    # Another fold of the same split.
    _, val3 = data_lib.cases(_data("brats_swinunetr.py", brats_tree, fold=3), a)
    assert sorted(c.id for c in val3) == sorted(i for i, k in saved.items() if k == 3)


def test_resume_reads_the_saved_split_back(brats_tree, tmp_path, capsys):
    root = tmp_path / "BraTS2021"
    shutil.copytree(brats_tree, root)
    workdir = str(tmp_path / "run")
    first = data_lib.cases(_data("brats_swinunetr.py", root), workdir)
    capsys.readouterr()
    # A case added to the data since: the resumed run keeps its split (without it).
    new = root / "BraTS2021_00099"
    shutil.copytree(root / "BraTS2021_00000", new)
    for name in os.listdir(new):
        os.rename(new / name, new / name.replace("00000", "00099"))
    assert data_lib.cases(_data("brats_swinunetr.py", root), workdir) == first
    assert "made" not in capsys.readouterr().out
    fresh = str(tmp_path / "fresh")  # a new run splits what is there now
    data_lib.cases(_data("brats_swinunetr.py", root), fresh)
    assert "BraTS2021_00099" in _folds(fresh)
    # The saved split asks for the same seed and fold count.
    with pytest.raises(ValueError, match="split_seed 0.*split_seed 2"):
        data_lib.cases(_data("brats_swinunetr.py", root, split_seed=2), workdir)
    # A case of the saved split gone from the data: an error naming it.
    shutil.rmtree(root / "BraTS2021_00004")
    with pytest.raises(DataError, match="case BraTS2021_00004 of the run's saved split"):
        data_lib.cases(_data("brats_swinunetr.py", root), workdir)


def test_datalists_given_present_or_missing(brats_tree, tmp_path):
    # An explicit datalist that does not exist is an error, as before.
    with pytest.raises(DataError, match="nope.json: datalist not found"):
        data_lib.cases(_data("brats_swinunetr.py", brats_tree, datalist="nope.json"),
                       str(tmp_path / "a"))
    # The root's brats21_folds.json (BrainSegFounder's split) is used when it is there.
    root = tmp_path / "with_json"
    synthetic.write_brats(root, 6, shape=SHAPE, anatomy="procedural")
    train, val = data_lib.cases(_data("brats_swinunetr.py", root, fold=1), str(tmp_path / "b"))
    assert [c.id for c in val] == ["BraTS2021_00001"] and len(train) == 5
    assert not os.path.exists(tmp_path / "b" / "folds.json")
    # val_every, set explicitly, still holds out every k-th case.
    train, val = data_lib.cases(_data("brats_swinunetr.py", brats_tree, val_every=4),
                                str(tmp_path / "c"))
    assert [c.id for c in val] == ["BraTS2021_00003", "BraTS2021_00007", "BraTS2021_00011"]
    assert not os.path.exists(tmp_path / "c" / "folds.json")


def test_atlas_sessions_of_a_subject_share_a_fold(atlas_tree, tmp_path):
    workdir = str(tmp_path / "run")
    train, val = data_lib.cases(_data("atlas_swinunetr.py", atlas_tree), workdir)
    found = train + val
    assert len(found) == 10 and sum(c.id.endswith("ses-2") for c in found) == 2
    by_subject = {}
    for c in found:
        by_subject.setdefault(c.id.split("_")[0], set()).add(c.fold)
    assert len(by_subject) == 8 and all(len(f) == 1 for f in by_subject.values())
    assert sorted(min(f) for f in by_subject.values()) == [0, 0, 1, 1, 2, 2, 3, 4]
    with open(os.path.join(workdir, "folds.json")) as f:
        saved = json.load(f)
    assert saved["num_folds"] == 5 and saved["split_seed"] == 0
    assert {e["subject"] for e in saved["training"]} == set(by_subject)
    assert val and all(c.fold == 0 for c in val)


def test_make_folds_by_subject():
    cases = [Case(id=f"sub-{s:02d}_ses-{k}", images=("x",)) for s in range(23)
             for k in range(1, 2 + s % 3)]
    folded = layouts.make_folds(cases, 5, seed=0)
    subject_folds = {}
    for c in folded:
        subject_folds.setdefault(layouts.subject_of(c.id), set()).add(c.fold)
    assert all(len(f) == 1 for f in subject_folds.values())
    per_fold = [sum(f == {k} for f in subject_folds.values()) for k in range(5)]
    assert per_fold == [5, 5, 5, 4, 4]  # subjects dealt round-robin
    # The same ids give the same folds in any order; another seed, other folds.
    shuffled = layouts.make_folds(cases[::-1], 5, seed=0)
    assert {c.id: c.fold for c in shuffled} == {c.id: c.fold for c in folded}
    assert {c.id: c.fold for c in layouts.make_folds(cases, 5, seed=1)} != {
        c.id: c.fold for c in folded}
    assert layouts.subject_of("sub-r001s001_ses-1") == "sub-r001s001"
    assert layouts.subject_of("BraTS-GLI-00012-001") == "BraTS-GLI-00012"
    assert layouts.subject_of("BraTS2021_00012") == "BraTS2021_00012"
    with pytest.raises(DataError, match="duplicate case ids"):
        layouts.make_folds(cases + cases[:1])
