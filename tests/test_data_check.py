"""The data check: every case read once before training, every problem listed at once (one
line naming the file), remembered per data root; train.py stopping with the list."""

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from jaxbrain.data import check as check_lib
from jaxbrain.data import tables
from jaxbrain.data.__main__ import main as data_main
from jaxbrain.training import data as data_lib
from jaxbrain.training.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 6)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(check_lib.CACHE_ENV, str(tmp_path / "check_cache"))


def _save(path, data, affine=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


def _brats2023(root, n=5):
    """A BraTS 2023 tree in its own naming (BraTS-GLI-XXXXX-YYY-{t2f,t1c,t1n,t2w,seg})."""
    for i in range(n):
        name = f"BraTS-GLI-{i:05d}-000"
        for m in ("t2f", "t1c", "t1n", "t2w"):
            _save(os.path.join(root, name, f"{name}-{m}.nii.gz"), np.ones(SHAPE, np.float32))
        seg = np.zeros(SHAPE, np.uint8)
        seg[2:4, 2:4, 2:4] = (1, 2, 3)[i % 3]
        _save(os.path.join(root, name, f"{name}-seg.nii.gz"), seg)
    return root


def _break(root):
    """Four problems in four cases: a 4 in a 2023 segmentation, a missing modality, a label
    map on another grid, a NaN voxel (where there is a fourth case)."""
    def case(i):
        return os.path.join(root, f"BraTS-GLI-{i:05d}-000", f"BraTS-GLI-{i:05d}-000")

    seg = np.zeros(SHAPE, np.uint8)
    seg[3, 3, 3] = 4
    _save(case(0) + "-seg.nii.gz", seg)
    os.remove(case(1) + "-t1n.nii.gz")
    _save(case(2) + "-seg.nii.gz", np.zeros((8, 8, 5), np.uint8))
    if os.path.isdir(os.path.dirname(case(3))):
        nan = np.ones(SHAPE, np.float32)
        nan[0, 0, 0] = np.nan
        _save(case(3) + "-t2w.nii.gz", nan)
    return [case(0) + "-seg.nii.gz", case(1) + "-t1n.nii.gz", case(2) + "-seg.nii.gz",
            case(3) + "-t2w.nii.gz"]


def _brats_config(root):
    c = load_config_file(os.path.join(ROOT, "configs", "brats_swinunetr.py"), "demo")
    c.data.root = str(root)
    return c


def test_check_command_lists_every_problem_of_a_brats2023_tree(tmp_path, capsys):
    root = _brats2023(str(tmp_path / "BraTS2023"))
    bad = _break(root)
    with pytest.raises(SystemExit) as stop:
        data_main(["check", "--config", os.path.join(ROOT, "configs", "brats_swinunetr.py"),
                   f"--config.data.root={root}", "--voxels"])
    assert stop.value.code == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("data check: 4 problems")
    for path, line in zip(sorted(bad), sorted(lines[:4])):
        assert line.startswith(path + ": ")
    text = "\n".join(lines)
    assert ("-seg.nii.gz: label values [4] (1 voxels) outside the brats2023 set [0, 1, 2, 3]; "
            "4 is BraTS 2021's enhancing tumour: relabel 4 -> 3") in text
    assert "-t1n.nii.gz: file not found (the t1 of case BraTS-GLI-00001-000" in text
    assert "shape (8, 8, 5) differs from" in text and "1 NaN/Inf voxels" in text
    # without --voxels the images' voxels are not read: the NaN goes unseen
    report = data_lib.check(_brats_config(root).data, str(tmp_path), progress=False)
    assert len(report.problems) == 3 and report.read == 4


def test_passed_cases_are_remembered_per_root_until_their_files_change(tmp_path):
    root = _brats2023(str(tmp_path / "BraTS2023"))
    cfg = _brats_config(root).data
    first = data_lib.check(cfg, str(tmp_path), progress=False)
    assert first.ok and (first.cases, first.read) == (5, 5)
    again = data_lib.check(cfg, str(tmp_path), progress=False)
    assert again.ok and again.read == 0 and "unchanged since their last check" in again.summary()
    seg = os.path.join(root, "BraTS-GLI-00002-000", "BraTS-GLI-00002-000-seg.nii.gz")
    label = np.zeros(SHAPE, np.uint8)
    label[1, 1, 1] = 7
    _save(seg, label)  # a new file: its size or time changes, only its case is read again
    third = data_lib.check(cfg, str(tmp_path), progress=False)
    assert third.read == 1 and third.problems == (
        f"{seg}: label values [7] (1 voxels) outside the brats2023 set [0, 1, 2, 3]; "
        "relabel or remove these voxels",)
    assert data_lib.check(cfg, str(tmp_path), voxels=True, progress=False).read == 5  # settings


def test_brats2021_labels_and_the_fix_named(tmp_path):
    seg = np.zeros(SHAPE, np.uint8)
    seg[0, 0, 0] = 3
    path = str(tmp_path / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz")
    _save(path, seg)
    images = []
    for m in ("flair", "t1ce", "t1", "t2"):
        images.append(str(tmp_path / "BraTS2021_00000" / f"BraTS2021_00000_{m}.nii.gz"))
        _save(images[-1], np.ones(SHAPE, np.int16), affine=np.diag([2.0, 2, 2, 1]) if m == "t2"
              else None)
    cases, problems, _ = check_lib.find("brats", str(tmp_path))
    assert problems == [] and cases[0].labels == "brats2021"
    found = check_lib.check_case(cases[0])
    assert found == [f"{images[3]}: affine differs from {images[0]}'s; all images of a case "
                     "must share one grid (resample it onto the others')",
                     f"{path}: label values [3] (1 voxels) outside the brats2021 set "
                     "[0, 1, 2, 4]; 3 is BraTS 2023's enhancing tumour: relabel 3 -> 4 in this "
                     "file"]


def test_table_problems_are_all_listed(tmp_path):
    for name in ("a", "b", "d"):
        _save(str(tmp_path / f"{name}.nii.gz"), np.ones(SHAPE, np.int16))
    with open(tmp_path / "bad.nii.gz", "w") as f:
        f.write("not a nifti")
    path = tmp_path / "labels.csv"
    path.write_text("subject,t1,age\ns1,a.nii.gz,70\ns2,b.nii.gz,n/a\ns3,c.nii.gz,65\n"
                    "s4,d.nii.gz,61,extra\ns5,bad.nii.gz,80\ns6,d.nii.gz,140\n")
    with pytest.raises(tables.DataError):  # reading for training stops at the first
        tables.load_table(str(path), task="age")
    c = load_config_file(os.path.join(ROOT, "configs", "brain_age.py"), "resnet18")
    c.data.root = str(path)
    report = data_lib.check(c.data, str(tmp_path), progress=False)
    assert [p.split(": ", 1)[0] for p in report.problems] == [
        str(path), str(path), str(path), str(path), str(tmp_path / "bad.nii.gz")]
    assert [p.split(": ")[1] for p in report.problems[:4]] == [
        "line 5", "line 3, column 'age'", "line 4, column 't1'", "line 7, column 'age'"]
    assert "not a readable NIfTI file" in report.problems[4]
    assert report.cases == 2 and "kept 2 scans" in report.text()


def test_a_preset_that_leaves_spacing_unused_says_so(tmp_path, capsys):
    demo = load_config_file(os.path.join(ROOT, "configs", "brain_age.py"), "demo").data
    assert check_lib.unused_fields(demo) == [
        "config: data.spacing=(2.0, 2.0, 2.0) is unused: data.preprocess (robust_scale, "
        "center_crop_or_pad(shape=(48, 56, 48))) does not resample, the scans are used at "
        "their own voxel size"]
    full = load_config_file(os.path.join(ROOT, "configs", "brain_age.py"), "resnet18").data
    assert check_lib.unused_fields(full) == []
    _save(str(tmp_path / "a.nii.gz"), np.ones(SHAPE, np.int16))
    (tmp_path / "labels.csv").write_text("subject,t1,age\ns1,a.nii.gz,70\n")
    with demo.unlocked():
        demo.root = str(tmp_path / "labels.csv")
    data_lib.check_before_training(demo, str(tmp_path))
    out = capsys.readouterr().out
    assert "config: data.spacing=(2.0, 2.0, 2.0) is unused" in out
    assert "data check: 1 cases under" in out


def test_training_stops_before_compiling_with_the_list_in_one_block(tmp_path):
    root = _brats2023(str(tmp_path / "BraTS2023"), n=3)
    bad = _break(root)[:3]
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--config",
         os.path.join(ROOT, "configs", "brats_swinunetr.py") + ":demo", "--workdir", str(workdir),
         f"--config.data.root={root}"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    error = out.stderr[out.stderr.index("data error: "):].strip().splitlines()
    assert error[0].startswith("data error: data check: 3 problems in the data under")
    assert sorted(line.split(": ")[0] for line in error[1:]) == sorted(bad)
    assert not (workdir / "checkpoints").exists()
