"""BIDS datasets read as label tables: trees in the naming of BIDS's own examples
(bids-standard/bids-examples ds001, ds114, ds000117), with tiny NIfTIs."""

import os

import nibabel as nib
import numpy as np
import pytest

from jaxbrain.data import bids, splits, tables
from jaxbrain.data.nifti import DataError

# ds001's participants.tsv as published, sub-05's "M," included.
DS001 = ("participant_id\tsex\tage\nsub-01\tF\t26\nsub-02\tM\t24\nsub-03\tF\t27\n"
         "sub-04\tF\t20\nsub-05\tM,\t22\nsub-06\tF\t26\n")
# ds000117's: age, sex, first_ses; the MEG empty-room recording is a "subject" with n/a.
DS117 = ("participant_id\tage\tsex\tfirst_ses\nsub-01\t31\tM\tmeg\nsub-02\t25\tM\tmeg\n"
         "sub-03\t30\tM\tmeg\nsub-04\t26\tF\tmeg\nsub-emptyroom\tn/a\tn/a\tn/a\n")


def _nii(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), path)
    return path


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _ds001(root):
    _write(root / "dataset_description.json", '{"Name": "ds001", "BIDSVersion": "1.0.0"}')
    _write(root / "participants.tsv", DS001)
    for i in range(1, 7):
        _nii(str(root / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii.gz"))
        _nii(str(root / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_inplaneT2.nii.gz"))
        _write(root / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.json", "{}")
    (root / "derivatives" / "sub-01" / "anat").mkdir(parents=True)
    _nii(str(root / "derivatives" / "sub-01" / "anat" / "sub-01_desc-brain_T1w.nii.gz"))
    return root


def _ds114(root, subjects=6):
    """Two sessions a subject (test, retest), participants.tsv with dominant_hand only, and
    each subject's sessions.tsv with the age at each session."""
    _write(root / "dataset_description.json", '{"Name": "ds114"}')
    hands = ["left", "right", "right", "right", "right", "left", "right", "right"]
    _write(root / "participants.tsv", "participant_id\tdominant_hand\n" + "".join(
        f"sub-{i:02d}\t{hands[i - 1]}\n" for i in range(1, subjects + 1)))
    for i in range(1, subjects + 1):
        sub = f"sub-{i:02d}"
        _write(root / sub / f"{sub}_sessions.tsv", "session_id\tacq_time\tage\n"
               f"ses-test\t2010-01-0{i}T10:00:00\t{30 + i}.5\n"
               f"ses-retest\t2010-07-0{i}T10:00:00\t{31 + i}.0\n")
        for ses in ("test", "retest"):
            _nii(str(root / sub / f"ses-{ses}" / "anat" / f"{sub}_ses-{ses}_T1w.nii.gz"))
            (root / sub / f"ses-{ses}" / "func").mkdir(parents=True, exist_ok=True)
    return root


def _ds117(root):
    _write(root / "dataset_description.json", '{"Name": "ds000117"}')
    _write(root / "participants.tsv", DS117)
    for i in range(1, 5):
        sub = f"sub-{i:02d}"
        (root / sub / "ses-meg" / "meg").mkdir(parents=True)
        _nii(str(root / sub / "ses-mri" / "anat" / f"{sub}_ses-mri_acq-mprage_T1w.nii.gz"))
    # a repeated and a contrast-enhanced acquisition of sub-02: the plain first run is taken
    anat = root / "sub-02" / "ses-mri" / "anat"
    _nii(str(anat / "sub-02_ses-mri_acq-mprage_run-2_T1w.nii.gz"))
    os.replace(anat / "sub-02_ses-mri_acq-mprage_T1w.nii.gz",
               anat / "sub-02_ses-mri_acq-mprage_run-01_T1w.nii.gz")
    _nii(str(anat / "sub-02_ses-mri_acq-mprage_ce-gadolinium_T1w.nii.gz"))
    (root / "sub-emptyroom" / "ses-20000101" / "meg").mkdir(parents=True)
    return root


def test_parse_entities():
    f = bids.parse("/d/sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_run-02_T1w.nii.gz")
    assert f.entities == {"sub": "01", "ses": "mri", "acq": "mprage", "run": "02"}
    assert f.suffix == "T1w"
    assert bids.parse("sub-01_T1w.json") is None and bids.parse("T1w.nii.gz") is None
    assert bids.parse("sub-01_acq_T1w.nii.gz") is None


def test_ds001_participants_labels_and_the_problems_of_its_rows(tmp_path, capsys):
    root = _ds001(tmp_path / "ds001")
    # the folder, and its participants.tsv (no image column), are both read as BIDS
    for source in (root, root / "participants.tsv"):
        table = tables.load_table(str(source), task="age")
        assert [c.id for c in table.cases] == [f"sub-{i:02d}" for i in range(1, 7)]
        assert [c.target for c in table.cases] == [26, 24, 27, 20, 22, 26]
        assert table.cases[0].images == (str(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"),)
        assert table.cases[0].meta["sex"] == "F" and table.cases[0].meta["line"] == 2
    # ds001's "M," for sub-05: one error naming the file, line and column
    with pytest.raises(DataError, match=r"participants.tsv: line 6, column 'sex': unknown sex"):
        tables.load_table(str(root), task="sex")
    errors = []
    table = tables.load_table(str(root), task="sex", errors=errors)
    assert len(table.cases) == 5 and len(errors) == 1 and "line 6" in errors[0]
    # the second suffix as a channel
    two = tables.load_table(str(root), task=None, images=("T1w", "inplaneT2"))
    assert [os.path.basename(p) for p in two.cases[2].images] == [
        "sub-03_T1w.nii.gz", "sub-03_inplaneT2.nii.gz"]


def test_ds114_sessions_are_scans_of_one_subject_with_per_session_ages(tmp_path):
    root = _ds114(tmp_path / "ds114")
    table = tables.load_table(str(root), task="age")
    assert len(table.cases) == 12
    first = [c for c in table.cases if c.meta["subject"] == "sub-01"]
    assert [(c.id, c.meta["session"], c.target) for c in first] == [
        ("sub-01_ses-retest", "ses-retest", 32.0), ("sub-01_ses-test", "ses-test", 31.5)]
    assert first[0].meta["dominant_hand"] == "left"  # the subject's columns ride along
    hand = tables.load_table(str(root), task="dominant_hand", classes=("left", "right"))
    assert [c.target for c in hand.cases[:4]] == [0, 0, 1, 1]
    folds = splits.kfold(table.cases, 3, seed=0)
    for subject in {c.meta["subject"] for c in folds}:
        assert len({c.fold for c in folds if c.meta["subject"] == subject}) == 1
    assert sorted({c.fold for c in folds}) == [0, 1, 2]


def test_ds000117_runs_acquisitions_and_subjects_without_anat(tmp_path):
    root = _ds117(tmp_path / "ds000117")
    table = tables.load_table(str(root), task="age")
    assert [c.id for c in table.cases] == [f"sub-0{i}_ses-mri" for i in range(1, 5)]
    assert table.dropped == {"no T1w image": 1}  # sub-emptyroom
    assert os.path.basename(table.cases[1].images[0]) == \
        "sub-02_ses-mri_acq-mprage_run-01_T1w.nii.gz"
    assert "1 sessions have several T1w images" in table.summary()
    assert "data.bids_select" in table.summary()
    picked = tables.load_table(str(root), task="age", select="run-2")
    assert [os.path.basename(c.images[0]) for c in picked.cases] == [
        "sub-02_ses-mri_acq-mprage_run-2_T1w.nii.gz"]
    ce = tables.load_table(str(root), task="age", select="ce-gadolinium")
    assert len(ce.cases) == 1 and "_ce-gadolinium_" in ce.cases[0].images[0]


def test_bad_trees_name_the_file(tmp_path):
    root = _ds001(tmp_path / "ds")
    _nii(str(root / "sub-01" / "anat" / "sub-02_T1w.nii.gz"))
    with pytest.raises(DataError, match=r"sub-02_T1w.nii.gz: its entities \(sub-02\) do not "
                                        r"match its folder sub-01/anat"):
        tables.load_table(str(root), task="age")
    with open(root / "participants.tsv", "a") as f:
        f.write("sub-03\tF\t27\nsub-07\tM\n")
    errors = []  # every problem at once: the misplaced file, the repeated and the short row
    assert len(tables.load_table(str(root), task="age", errors=errors).cases) == 6
    assert [e.split(": ", 2)[1] for e in errors] == [
        "line 9", "line 8", "its entities (sub-02) do not match its folder sub-01/anat"]
    _write(root / "participants.tsv", DS001)
    os.remove(root / "sub-01" / "anat" / "sub-02_T1w.nii.gz")
    _write(root / "participants.tsv", DS001.replace("participant_id", "id"))
    with pytest.raises(DataError, match="no participant_id column"):
        tables.load_table(str(root), task="age")
    os.remove(root / "participants.tsv")  # recommended, not required: no labels then
    assert len(tables.load_table(str(root), task=None).cases) == 6
    with pytest.raises(DataError, match=r"task 'age' needs a column"):
        tables.load_table(str(root), task="age")


def test_brain_age_config_trains_on_a_bids_tree_split_by_subject(tmp_path, capsys):
    from jaxbrain.training import data as data_lib
    from jaxbrain.training.config import load_config_file
    root = _ds114(tmp_path / "ds114", subjects=8)
    c = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs",
                                      "brain_age.py"), "resnet18")
    c.data.root = str(root)
    c.data.num_folds = 4
    parts = data_lib.split(c.data, str(tmp_path / "run"))
    assert len(parts.train) == 12 and len(parts.val) == 4
    train_subjects = {x.meta["subject"] for x in parts.train}
    val_subjects = {x.meta["subject"] for x in parts.val}
    assert not train_subjects & val_subjects and len(val_subjects) == 2
    assert "16 rows, kept 16 scans of 8 subjects (age 31.5..39)" in capsys.readouterr().out
    c.data.bids_select = "ses-test"  # entities as in the file names
    parts = data_lib.split(c.data, str(tmp_path / "run_test_sessions"))
    assert {x.meta["session"] for x in parts.train + parts.val} == {"ses-test"}
    assert "8 sessions without a T1w image matching 'ses-test' left out" in capsys.readouterr().out


def test_ad_classification_config_on_a_bids_group_column(tmp_path):
    """participants.tsv's group column as the diagnosis, a dataset's own names mapped by
    data.vocabulary; the other group dropped and counted."""
    from jaxbrain.training import data as data_lib
    from jaxbrain.training.config import load_config_file
    root = _ds001(tmp_path / "ds")
    groups = ["control", "patient", "control", "patient", "control", "other"]
    _write(root / "participants.tsv", "participant_id\tgroup\tage\n" + "".join(
        f"sub-{i:02d}\t{g}\t{60 + i}\n" for i, g in enumerate(groups, start=1)))
    c = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs",
                                      "brain_classification.py"), "ad,resnet18")
    c.data.root = str(root / "participants.tsv")
    c.data.num_folds = None
    c.data.vocabulary = {"patient": "AD", "other": "MCI"}
    parts = data_lib.split(c.data, str(tmp_path / "run"))
    assert parts.classes == ("CN", "AD")
    assert [(x.id, x.target) for x in parts.train] == [
        ("sub-01", 0), ("sub-02", 1), ("sub-03", 0), ("sub-04", 1), ("sub-05", 0)]


def test_the_synthetic_cohort_is_a_bids_dataset_giving_the_table_s_scans(tmp_path):
    from jaxbrain.data import cohort
    root = tmp_path / "cohort"
    cohort.write_cohort(root, 6, shape=(24, 28, 24), anatomy="procedural", followup=0.5,
                        workers=0, progress=False)
    table = tables.load_table(str(root / "labels.csv"), task="age")
    as_bids = tables.load_table(str(root / "participants.tsv"), task="age")
    assert len(table.cases) > 6
    assert [(c.id, c.images, c.target) for c in as_bids.cases] == [
        (c.id, c.images, c.target) for c in table.cases]
    for key in ("subject", "session", "diagnosis", "sex", "site", "age"):
        assert [c.meta[key] for c in as_bids.cases] == [c.meta[key] for c in table.cases]


def test_uncompressed_nifti_and_scans_files_as_in_bids_examples_synthetic(tmp_path):
    """bids-examples' synthetic: sub-0X/ses-0Y/anat/sub-0X_ses-0Y_T1w.nii (not .gz), a
    sub-0X_ses-0Y_scans.tsv beside each session's folders, no sessions.tsv."""
    root = tmp_path / "synthetic"
    _write(root / "dataset_description.json", '{"Name": "Synthetic dataset"}')
    _write(root / "participants.tsv", "participant_id\tage\tsex\n" + "".join(
        f"sub-0{i}\t{20 + i}\t{'MF'[i % 2]}\n" for i in range(1, 6)))
    for i in range(1, 6):
        for ses in ("01", "02"):
            folder = root / f"sub-0{i}" / f"ses-{ses}"
            _nii(str(folder / "anat" / f"sub-0{i}_ses-{ses}_T1w.nii"))
            _write(folder / f"sub-0{i}_ses-{ses}_scans.tsv", "filename\tacq_time\n"
                   f"anat/sub-0{i}_ses-{ses}_T1w.nii\t1880-01-10T05:17:54\n")
    table = tables.load_table(str(root), task="sex")
    assert len(table.cases) == 10 and table.cases[0].images[0].endswith("sub-01_ses-01_T1w.nii")
    assert [c.target for c in table.cases[:4]] == [0, 0, 1, 1]  # F F M M: sessions share labels
