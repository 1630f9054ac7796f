"""Label tables (ADNI / PPMI style CSV and TSV) and subject-level splits."""

import json
import os
import random

import numpy as np
import pytest

from jaxbrain.data import layouts, splits, tables
from jaxbrain.data.layouts import Case
from jaxbrain.data.nifti import DataError

ADNI = """PTID,VISCODE,T1,DX,AGE,PTGENDER,SITE,MMSE
002_S_0001,bl,a.nii.gz,CN,71.2,Male,002,29
002_S_0001,m12,b.nii.gz,SMC,72.2,Male,002,28
003_S_0002,bl,c.nii.gz,Dementia,80.5,Female,003,20
003_S_0003,bl,d.nii.gz,EMCI,66.0,female,003,27
004_S_0004,bl,e.nii.gz, lmci ,59.9,M,004,26
004_S_0005,bl,f.nii.gz,AD,77.0,F,004,19
"""


def _table(folder, text, name="labels.csv", images=("a", "b", "c", "d", "e", "f")):
    os.makedirs(folder, exist_ok=True)
    for stem in images:
        open(os.path.join(folder, f"{stem}.nii.gz"), "w").close()
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_adni_vocabulary_targets_and_meta(tmp_path, capsys):
    path = _table(tmp_path, ADNI)
    cases = tables.read_table(path)
    assert [c.id for c in cases] == ["002_S_0001_bl", "002_S_0001_m12", "003_S_0002_bl",
                                     "003_S_0003_bl", "004_S_0004_bl", "004_S_0005_bl"]
    assert [c.meta["diagnosis"] for c in cases] == ["CN", "CN", "AD", "MCI", "MCI", "AD"]
    assert [c.target for c in cases] == [0, 0, 2, 1, 1, 2]  # CN, MCI, AD in vocabulary order
    first = cases[0]
    assert first.images == (str(tmp_path / "a.nii.gz"),)
    assert first.meta["subject"] == "002_S_0001" and first.meta["session"] == "bl"
    assert first.meta["age"] == 71.2 and first.meta["sex"] == "M" and first.meta["site"] == "002"
    assert first.meta["MMSE"] == "29" and first.meta["line"] == 2
    assert [c.meta["sex"] for c in cases] == ["M", "M", "F", "F", "M", "F"]
    hash(first)  # meta takes no part in hashing
    assert "6 rows, kept 6 scans of 5 subjects (2 CN, 2 MCI, 2 AD)" in capsys.readouterr().out
    # the layout name, given the table's folder
    assert layouts.find_cases("table", str(tmp_path), quiet=True) == cases


def test_class_subsets_are_ordered_and_dropped_rows_counted(tmp_path, capsys):
    path = _table(tmp_path, ADNI)
    cases = tables.read_table(path, classes=("CN", "Dementia"))
    assert [(c.id, c.target) for c in cases] == [
        ("002_S_0001_bl", 0), ("002_S_0001_m12", 0), ("003_S_0002_bl", 1), ("004_S_0005_bl", 1)]
    assert "dropped 2 (2 class MCI)" in capsys.readouterr().out
    table = tables.load_table(path, classes=("ad", "cn"))
    assert [c.target for c in table.cases] == [1, 1, 0, 0]
    assert table.classes == ("AD", "CN") and table.dropped == {"class MCI": 2}
    with pytest.raises(ValueError, match="vocabulary"):
        tables.load_table(path, classes=("CN", "Alzheimer-ish"))
    with pytest.raises(ValueError, match="two different"):
        tables.load_table(path, classes=("CN", "NC"))


def test_age_sex_and_column_regression_tasks(tmp_path):
    path = _table(tmp_path, ADNI)
    assert [c.target for c in tables.load_table(path, task="age").cases] == \
        [71.2, 72.2, 80.5, 66.0, 59.9, 77.0]
    assert [c.target for c in tables.load_table(path, task="sex").cases] == [1, 1, 0, 0, 1, 0]
    assert [c.target for c in tables.load_table(path, task="MMSE").cases] == \
        [29, 28, 20, 27, 26, 19]
    assert all(c.target is None for c in tables.load_table(path, task=None).cases)


def test_categorical_column_task_and_the_brats_sequence_table(tmp_path, capsys):
    path = _table(tmp_path / "t", ADNI.replace("MMSE", "APOE").replace(",29\n", ",e4\n")
                  .replace(",28\n", ",E4\n").replace(",20\n", ",e3\n").replace(",27\n", ",e3\n")
                  .replace(",26\n", ",e2\n").replace(",19\n", ",e_3\n"))
    table = tables.load_table(path, task="APOE", classes=("E3", "e4"))
    assert [c.target for c in table.cases] == [1, 1, 0, 0]  # case-insensitive; others dropped
    assert table.classes == ("E3", "e4") and table.dropped == {"APOE e2": 1, "APOE e_3": 1}
    with pytest.raises(ValueError, match="at least two different"):
        tables.load_table(path, task="APOE", classes=("e3", "E3"))
    with pytest.raises(ValueError, match="regression task 'age'"):
        tables.load_table(path, task="age", classes=("e3", "e4"))

    from jaxbrain.data import synthetic
    from jaxbrain.data.__main__ import main as data_main
    synthetic.write_brats(tmp_path / "brats", 2, shape=(16, 16, 12), anatomy="procedural")
    out = str(tmp_path / "brats_sequences.csv")
    data_main(["sequence-table", "--root", str(tmp_path / "brats"), "--out", out])
    assert "wrote" in capsys.readouterr().out
    table = tables.load_table(out, task="sequence", classes=tables.SEQUENCES)
    assert len(table.cases) == 8 and sorted({c.meta["subject"] for c in table.cases}) == \
        sorted(c.id for c in layouts.brats(str(tmp_path / "brats")))
    for case in table.cases:  # each image's class is its sequence
        name = os.path.basename(case.images[0])
        suffix = {"T1": "_t1.nii.gz", "T1ce": "_t1ce.nii.gz", "T2": "_t2.nii.gz",
                  "FLAIR": "_flair.nii.gz"}[tables.SEQUENCES[int(case.target)]]
        assert name.endswith(suffix) and os.path.exists(case.images[0])
    folds = {}  # a case's four images stay in one fold
    for case in splits.kfold(table.cases, 2, seed=0):
        folds.setdefault(case.meta["subject"], set()).add(case.fold)
    assert all(len(f) == 1 for f in folds.values()) and len(folds) == 2


def test_ppmi_vocabulary_tsv_and_sniffed_delimiter(tmp_path):
    rows = ["PATNO\tEVENT_ID\timage\tCOHORT\tAge", "3001\tBL\ta.nii.gz\tParkinson's Disease\t61",
            "3002\tBL\tb.nii.gz\tHealthy Control\t58", "3003\tBL\tc.nii.gz\t  pd \t70",
            "3004\tBL\td.nii.gz\tHC\t49", "3005\tBL\te.nii.gz\tProdromal\t66",
            "3006\tV04\tf.nii.gz\tSWEDD\t55"]
    tsv = _table(tmp_path, "\n".join(rows) + "\n", name="ppmi.tsv")
    table = tables.load_table(tsv, classes=("HC", "PD"))
    assert [c.target for c in table.cases] == [1, 0, 1, 0]
    assert table.dropped == {"class Prodromal": 1, "class SWEDD": 1}
    semicolons = _table(tmp_path / "s", "\n".join(r.replace("\t", ";") for r in rows),
                        name="ppmi.txt")
    assert [c.target for c in tables.load_table(semicolons, classes=("HC", "PD")).cases] == \
        [1, 0, 1, 0]
    extra = tables.load_table(tsv, classes=("HC", "genetic PD"),
                              vocabulary_extra={"Prodromal": "genetic PD"})
    assert [c.target for c in extra.cases] == [0, 0, 1]


def test_paths_relative_to_root(tmp_path):
    _table(tmp_path / "images", "", name="unused.txt")
    path = _table(tmp_path / "tables", "subject,t1,diagnosis\ns1,a.nii.gz,CN\ns2,b.nii.gz,AD\n",
                  images=())
    cases = tables.read_table(path, root=str(tmp_path / "images"), quiet=True)
    assert cases[1].images == (str(tmp_path / "images" / "b.nii.gz"),)
    two = _table(tmp_path / "two", "subject,t1,flair,dx\ns1,a.nii.gz,b.nii.gz,CN\n")
    assert tables.read_table(two, images=("t1", "flair"), quiet=True)[0].images == (
        str(tmp_path / "two" / "a.nii.gz"), str(tmp_path / "two" / "b.nii.gz"))


@pytest.mark.parametrize("text, kwargs, message", [
    ("subject,t1,dx\ns1,a.nii.gz,CN\ns2,missing.nii.gz,AD\n", {},
     r"line 3, column 't1': .*missing.nii.gz: file not found"),
    ("subject,t1,dx\ns1,a.nii.gz,CN\ns2,b.nii.gz,CN\ns3,c.nii.gz,FTD\n", {},
     r"line 4, column 'dx': unknown diagnosis 'FTD'; known: CN: cn, nc, .*AD: ad, dementia"),
    ("subject,t1,age\ns1,a.nii.gz,70\ns2,b.nii.gz,seventy\n", {"task": "age"},
     r"line 3, column 'age': age 'seventy' is not an age"),
    ("subject,t1,age\ns1,a.nii.gz,-4\n", {"task": "age"},
     r"line 2, column 'age': age '-4' is not an age"),
    ("subject,t1,age\ns1,a.nii.gz,70\ns2,b.nii.gz,NA\n", {"task": "age"},
     r"line 3, column 'age': no age value"),
    ("subject,t1,dx\ns1,a.nii.gz,CN\ns2,b.nii.gz,\n", {},
     r"line 3, column 'dx': no diagnosis value"),
    ("id_code,t1,dx\ns1,a.nii.gz,CN\n", {},
     r"no subject column; expected one of \['subject', .*header is \['id_code', 't1', 'dx'\]"),
    ("subject,t1\ns1,a.nii.gz\n", {},
     r"task 'diagnosis' needs a diagnosis column.*header is \['subject', 't1'\]"),
    ("subject,scan,dx\ns1,a.nii.gz,CN\n", {},
     r"no image column; expected one of \['t1', .*header is \['subject', 'scan', 'dx'\]"),
    ("subject,session,t1,dx\ns1,bl,a.nii.gz,CN\ns2,bl,b.nii.gz,CN\ns1,bl,c.nii.gz,AD\n", {},
     r"line 4: duplicate row \(subject 's1', session 'bl'\), first on line 2"),
    ("subject,t1,dx\ns1,a.nii.gz,CN\ns1,b.nii.gz,CN\n", {},
     r"line 3: duplicate row \(subject 's1'\), first on line 2"),
    ("subject,t1,dx\ns1,a.nii.gz,CN\ns2,b.nii.gz\n", {},
     r"line 3: 2 fields, but the header \(line 1\) has 3"),
    ("subject,t1,dx,diagnosis\ns1,a.nii.gz,CN,CN\n", {},
     r"columns \['diagnosis', 'dx'\] could each be the diagnosis"),
    ("subject,t1,dx\n", {}, r"empty table \(a header, no rows\)"),
    ("", {}, r"empty table \(no header, no rows\)"),
    ("subject,t1,sex\ns1,a.nii.gz,2\n", {"task": "sex"},
     r"line 2, column 'sex': unknown sex '2'"),
])
def test_table_errors_name_file_line_and_column(tmp_path, text, kwargs, message):
    path = _table(tmp_path, text)
    with pytest.raises(DataError, match=message) as error:
        tables.load_table(path, **kwargs)
    assert str(error.value).startswith(path)


def test_missing_values_dropped_only_when_asked(tmp_path):
    os.makedirs(tmp_path / "empty")
    path = _table(tmp_path, "subject,t1,age\ns1,a.nii.gz,70\ns2,b.nii.gz,\ns3,c.nii.gz,61\n")
    table = tables.load_table(path, task="age", drop_missing=True)
    assert [c.id for c in table.cases] == ["s1", "s3"] and table.dropped == {"no age": 1}
    assert tables.load_table(path, task=None).cases[1].meta["age"] is None
    with pytest.raises(DataError, match=r"nowhere.csv: label table not found"):
        tables.load_table(str(tmp_path / "nowhere.csv"))
    with pytest.raises(DataError, match=r"folder holds no label table"):
        tables.load_table(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- splits


def _cohort(n_subjects=60, seed=0):
    """Cases of subjects with 1-3 sessions, classes 0/1/2 in shares 1/2, 1/3, 1/6, 3 sites,
    ages 55-90; no files (splits read only ids, targets and meta)."""
    rng = np.random.default_rng(seed)
    cases = []
    for s in range(n_subjects):
        label = 0 if s % 6 < 3 else (1 if s % 6 < 5 else 2)
        age, site = float(rng.uniform(55, 90)), f"site{s % 3}"
        for k in range(1 + s % 3):
            meta = {"subject": f"S{s:03d}", "session": f"ses-{k}", "age": age + k, "site": site}
            cases.append(Case(id=f"S{s:03d}_ses-{k}", images=("x",), target=float(label),
                              meta=meta))
    return cases


def _subjects_of(cases, fold):
    return {c.meta["subject"] for c in cases if c.fold == fold}


def test_kfold_keeps_subjects_together_and_stratifies():
    cases = splits.kfold(_cohort(), 5, seed=0)
    folds = [_subjects_of(cases, k) for k in range(5)]
    assert all(not (a & b) for i, a in enumerate(folds) for b in folds[i + 1:])
    assert sum(len(f) for f in folds) == 60
    for k in range(5):
        labels = [c.target for c in cases if c.fold == k and c.meta["session"] == "ses-0"]
        assert np.bincount(np.array(labels, int), minlength=3).tolist() == [6, 4, 2]
    train, val = layouts.split_fold(cases, 2)
    assert not ({c.meta["subject"] for c in train} & {c.meta["subject"] for c in val})
    shuffled = _cohort()
    random.Random(1).shuffle(shuffled)
    again = {c.id: c.fold for c in splits.kfold(shuffled, 5, seed=0)}
    assert again == {c.id: c.fold for c in cases}
    assert {c.id: c.fold for c in splits.kfold(_cohort(), 5, seed=1)} != again


def test_kfold_regression_strata_are_age_bins():
    cases = [Case(id=c.id, images=c.images, target=c.meta["age"], meta=c.meta)
             for c in _cohort(100)]
    folded = splits.kfold(cases, 4, seed=0)
    groups = splits.by_subject(folded)
    bins = splits.strata(groups, "bins", 5)
    for k in range(4):
        members = [s for s, m in groups.items() if m[0].fold == k]
        assert np.bincount([bins[s] for s in members], minlength=5).tolist() == [5] * 5
    unstratified = splits.kfold(cases, 4, seed=0, stratify=None)
    assert len({c.fold for c in unstratified}) == 4


def test_site_split_holds_the_site_out():
    cases = _cohort()
    moved = cases[2]  # S001 ses-1, scanned at another site than its baseline (site1)
    assert moved.id == "S001_ses-1"
    cases[2] = Case(id=moved.id, images=moved.images, target=moved.target,
                    meta={**moved.meta, "site": "site2"})
    split = splits.site_split(cases, "site2")
    train, test = layouts.split_fold(split, splits.HELD_OUT)
    assert {c.meta["site"] for c in test} == {"site2"}
    assert "site2" not in {c.meta["site"] for c in train}
    assert not ({c.meta["subject"] for c in train} & {c.meta["subject"] for c in test})
    assert "S001_ses-0" not in {c.id for c in split}  # its training-site scan left out
    assert len(split) == len(cases) - 1
    with pytest.raises(DataError, match=r"not in the data; sites are \['site0', 'site1', 'site2'\]"):
        splits.site_split(cases, ["site9"])


def test_subset_is_stratified_by_subject_and_nested():
    cases = _cohort()
    small, large = splits.subset(cases, 0.2, seed=3), splits.subset(cases, 0.5, seed=3)
    subjects = lambda cs: {c.meta["subject"] for c in cs}  # noqa: E731
    assert subjects(small) < subjects(large)
    baseline = [c for c in small if c.meta["session"] == "ses-0"]
    assert np.bincount([int(c.target) for c in baseline], minlength=3).tolist() == [6, 4, 2]
    for s in subjects(small):  # every session of a chosen subject comes along
        assert sum(c.meta["subject"] == s for c in small) == sum(c.meta["subject"] == s for c in cases)
    assert splits.subset(cases, 1.0) == cases


def test_split_json_round_trip(tmp_path):
    cases = splits.kfold(_cohort(), 3, seed=0)
    path = splits.write_split(str(tmp_path / "folds.json"), cases, num_folds=3, split_seed=0)
    data = json.load(open(path))
    assert data["num_folds"] == 3 and data["training"][0]["subject"] == "S000"
    assert {"id", "subject", "fold", "image", "target"} <= set(data["training"][0])
    fresh = _cohort()
    assert [c.fold for c in splits.read_split(path, fresh)] == [c.fold for c in cases]
    with pytest.raises(DataError, match="not in the data"):
        splits.read_split(path, fresh[5:])
