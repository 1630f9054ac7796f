"""Data checks before training: every case's files read once, every problem reported at once.

:func:`find` lists a layout's cases leniently (a missing file, an unreadable table row is a
problem and the case or row is left out, where the layout functions stop at the first one);
:func:`check_cases` reads every case's headers and, where it has one, its label map:

  * each file: it exists, is a readable 3D NIfTI, its voxel sizes are positive and finite
    and its affine is finite and invertible;
  * the images and the label map of a case share one grid (shape and affine);
  * the label map: finite integer values within the case's convention
    (:data:`jaxbrain.data.labels.CONVENTIONS`: e.g. 4 in a BraTS 2023 segmentation is not);
  * with ``voxels=True``, also every floating-point image's voxels: no NaN or Inf (integer
    images cannot hold them).

A problem is one line, ``<file>: <what is wrong>; <the fix>``. Cases that pass are remembered
in a small file per data root (``$JAXBRAIN_DATA_CHECK_CACHE``, default
``~/.cache/jaxbrain/data_check``; "" turns it off), keyed by each case's files, their sizes and
modification times, its label convention and the check's settings: a second check of
unchanged data reads nothing. Files are read by a pool of threads (decompression releases
the GIL), with a progress bar and its ETA.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import gzip
import hashlib
import json
import os
import re
import zlib
from typing import Sequence

import nibabel as nib
import numpy as np
from tqdm import tqdm

from jaxbrain.data import labels as labels_lib
from jaxbrain.data import layouts
from jaxbrain.data.nifti import DataError

VERSION = 1  # of the checks below; part of every cache key
CACHE_ENV = "JAXBRAIN_DATA_CHECK_CACHE"


@dataclasses.dataclass(frozen=True)
class Report:
    """What a check found: the root, the number of cases, how many were read now (the others
    passed before, unchanged), the problems (one line each) and notes (what was kept, what a
    config leaves unused)."""

    root: str
    cases: int
    read: int
    problems: tuple
    notes: tuple = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        cached = f", {self.cases - self.read} unchanged since their last check" \
            if self.read < self.cases else ""
        if self.ok:
            return (f"data check: {self.cases} cases under {self.root} passed ({self.read} "
                    f"read{cached})")
        return (f"data check: {len(self.problems)} problems in the data under {self.root} "
                f"({self.cases} cases checked{cached}); fix them and start again")

    def text(self) -> str:
        return "\n".join([*self.notes, *self.problems, self.summary()])


class DataProblems(DataError):
    """Problems found by a data check: the summary line, then one line each."""

    def __init__(self, report: Report):
        super().__init__("\n".join([report.summary(), *report.problems]))
        self.report = report


# --- finding the cases, leniently -----------------------------------------------------------


def find(layout: str, source, **kwargs) -> tuple[list, list, list]:
    """(cases, problems, notes) of a layout: like :func:`jaxbrain.data.layouts.find_cases`,
    but a missing file or a bad table row is a problem and its case left out."""
    problems, notes = [], []
    try:
        if layout == "brats":
            return (*_brats(source, problems, **kwargs), notes)
        if layout == "atlas":
            return (*_atlas(source, problems, **kwargs), notes)
        if layout == "datalist":
            return (*_datalist(source, problems, **kwargs), notes)
        if layout == "table":
            from jaxbrain.data import tables
            kwargs.pop("quiet", None)
            table = tables.load_table(source, errors=problems, **kwargs)
            return table.cases, problems, [table.summary()]
        return layouts.find_cases(layout, source, **kwargs), problems, notes
    except DataError as e:
        return [], problems + [str(e)], notes


def _brats(root: str, problems: list, *, version: str = "auto", require_label: bool = True):
    if not os.path.isdir(root):
        raise DataError(f"{root}: BraTS root folder not found")
    names = sorted(os.listdir(root))
    if version == "auto":
        found = [v for v, pat in layouts._BRATS_DIRS.items() if any(pat.match(n) for n in names)]
        if len(found) != 1:
            return layouts.brats(root), problems  # its own error
        version = found[0]
    suffixes = layouts._BRATS_SUFFIXES[version]
    cases = []
    for name in names:
        folder = os.path.join(root, name)
        if not (os.path.isdir(folder) and layouts._BRATS_DIRS[version].match(name)):
            continue
        files = {c: layouts._nii(os.path.join(folder, name + suffixes[c]))
                 for c in (*layouts.BRATS_CHANNELS, "seg")}
        missing = [c for c, p in files.items() if not os.path.exists(p)
                   and (c != "seg" or require_label)]
        for c in missing:
            problems.append(f"{files[c]}: file not found (the {c} of case {name}; every case "
                            f"folder holds <case>{', <case>'.join(suffixes[n] for n in files)}"
                            ".nii.gz)")
        if missing:
            continue
        label = files["seg"] if os.path.exists(files["seg"]) else None
        cases.append(layouts.Case(id=name, images=tuple(files[c] for c in layouts.BRATS_CHANNELS),
                                  label=label, labels=version))
    if not cases and not problems:
        raise DataError(f"{root}: no {version} case folders found")
    return cases, problems


def _atlas(root: str, problems: list, *, require_label: bool = True):
    if not os.path.isdir(root):
        raise DataError(f"{root}: ATLAS root folder not found")
    images = sorted(glob.glob(os.path.join(root, "**", "sub-*", "ses-*", "anat", "*_T1w.nii.gz"),
                              recursive=True))
    if not images:
        raise DataError(f"{root}: no sub-*/ses-*/anat/*_T1w.nii.gz files found")
    cases = []
    for image in images:
        label = image[: -len("_T1w.nii.gz")] + layouts.ATLAS_MASK_SUFFIX
        if not os.path.exists(label):
            if require_label:
                problems.append(f"{label}: file not found (the lesion mask of {image})")
                continue
            label = None
        name = os.path.basename(image)
        case_id = "_".join(p for p in name.split("_") if p.startswith(("sub-", "ses-")))
        cases.append(layouts.Case(id=case_id, images=(image,), label=label, labels="binary"))
    return cases, problems


def _datalist(path: str, problems: list, *, root: str | None = None, key: str = "training",
              labels: str = "brats2021"):
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: datalist not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if key not in data or not isinstance(data[key], list):
        return layouts.datalist(path, key=key, labels=labels), problems  # its own error
    root = os.path.dirname(os.path.abspath(path)) if root is None else root
    cases = []
    for i, entry in enumerate(data[key]):
        where = f"{path}: {key}[{i}]"
        if not isinstance(entry, dict) or "image" not in entry:
            problems.append(f"{where}: expected an object with an 'image' entry, got {entry!r}")
            continue
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        files = [os.path.join(root, p) for p in images]
        if entry.get("label") is not None:
            files.append(os.path.join(root, entry["label"]))
        missing = [p for p in files if not os.path.exists(p)]
        for p in missing:
            problems.append(f"{p}: file not found ({where})")
        if missing:
            continue
        case_id = entry.get("id") or os.path.basename(os.path.dirname(files[0])) or str(i)
        cases.append(layouts.Case(id=str(case_id), images=tuple(files[:len(images)]),
                                  label=files[len(images)] if len(files) > len(images) else None,
                                  fold=entry.get("fold"), labels=labels))
    return cases, problems


# --- reading every case ---------------------------------------------------------------------


def _open(path: str, problems: list):
    """The NIfTI image of ``path`` with a sane header, or None (problems appended)."""
    if not os.path.exists(path):
        problems.append(f"{path}: file not found")
        return None
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises many types for bad headers
        problems.append(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e}); "
                        "re-export it as .nii.gz")
        return None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        problems.append(f"{path}: a {type(img).__name__}, not NIfTI; convert it to .nii.gz")
        return None
    shape = img.shape
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        problems.append(f"{path}: shape {shape}, expected a 3D volume"
                        + ("; split the 4D series into one file per volume" if len(shape) > 3
                           else ""))
        return None
    zooms = np.asarray(img.header.get_zooms()[:3], np.float64)
    if not (np.all(np.isfinite(zooms)) and np.all(zooms > 0)):
        problems.append(f"{path}: voxel sizes {tuple(zooms.tolist())} mm, expected positive "
                        "numbers; rewrite the header with the scan's voxel sizes")
        return None
    affine = np.asarray(img.affine, np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        problems.append(f"{path}: affine is not finite or not invertible; rewrite the header "
                        "(qform/sform) with the scan's orientation")
        return None
    return img


def _voxels(path: str, img, problems: list):
    try:
        return np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        problems.append(f"{path}: corrupt or truncated data ({type(e).__name__}: {e}); "
                        "copy or export the file again")
        return None


def _label_fix(convention: str, bad: Sequence[int]) -> str:
    if convention in ("brats2021", "brats2023"):
        other = "brats2023" if convention == "brats2021" else "brats2021"
        value, wrong = labels_lib.enhancing_value(convention), labels_lib.enhancing_value(other)
        if list(bad) == [wrong]:
            year = other[-4:]
            return (f"{wrong} is BraTS {year}'s enhancing tumour: relabel {wrong} -> {value} "
                    f"in this file")
    others = [n for n, allowed in labels_lib.CONVENTIONS.items()
              if n != convention and set(bad) <= set(allowed)]
    fix = "relabel or remove these voxels"
    if others:
        fix += f", or set data.labels={others[0]} if every label map uses it"
    return fix


def _check_label(path: str, img, convention: str, problems: list) -> None:
    data = _voxels(path, img, problems)
    if data is None:
        return
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.all():
            problems.append(f"{path}: {int(finite.size - np.count_nonzero(finite))} NaN/Inf "
                            "voxels in a label map; expected integer labels")
            return
        if not np.array_equal(data, np.round(data)):
            problems.append(f"{path}: non-integer values in a label map; save it with an "
                            "integer data type")
            return
        data = data.astype(np.int64)
    lo, hi = int(data.min()), int(data.max())
    if lo >= 0 and hi < 1 << 16:
        counts = np.bincount(data.ravel(), minlength=hi + 1)
        values = np.flatnonzero(counts)
    else:
        values, counts = np.unique(data, return_counts=True)
        counts = dict(zip(values.tolist(), counts.tolist()))
    allowed = labels_lib.CONVENTIONS.get(convention)
    if allowed is None:
        problems.append(f"{path}: unknown label convention {convention!r}; expected one of "
                        f"{sorted(labels_lib.CONVENTIONS)}")
        return
    bad = [int(v) for v in values if int(v) not in allowed]
    if bad:
        voxels = sum(int(counts[v]) for v in bad)
        problems.append(f"{path}: label values {bad} ({voxels} voxels) outside the {convention} "
                        f"set {list(allowed)}; {_label_fix(convention, bad)}")


def check_case(case, *, voxels: bool = False) -> list[str]:
    """The problems of one case (empty if none): see the module docstring."""
    problems = []
    files = [*case.images, *([case.label] if case.label is not None else [])]
    opened = [(p, _open(p, problems)) for p in files]
    grid = [(p, img) for p, img in opened if img is not None]
    if grid:
        ref_path, ref = grid[0]
        for path, img in grid[1:]:
            if img.shape[:3] != ref.shape[:3]:
                problems.append(f"{path}: shape {img.shape[:3]} differs from {ref_path} "
                                f"{ref.shape[:3]}; all images of a case must share one grid "
                                "(resample it onto the others')")
            elif not np.allclose(img.affine, ref.affine, atol=1e-3):
                problems.append(f"{path}: affine differs from {ref_path}'s; all images of a "
                                "case must share one grid (resample it onto the others')")
    label = opened[-1][1] if case.label is not None else None
    if label is not None:
        _check_label(case.label, label, case.labels, problems)
    if voxels:
        for path, img in opened[:len(case.images)]:
            if img is None or img.get_data_dtype().kind != "f":
                continue
            data = _voxels(path, img, problems)
            if data is not None and not np.isfinite(data).all():
                bad = int(data.size - np.count_nonzero(np.isfinite(data)))
                problems.append(f"{path}: {bad} NaN/Inf voxels; expected finite values "
                                "(replace them, e.g. with 0, and save the file again)")
    return problems


def cache_dir() -> str | None:
    """Where passed cases are remembered (None: nowhere)."""
    folder = os.environ.get(CACHE_ENV)
    if folder is None:
        folder = os.path.join(os.path.expanduser("~"), ".cache", "jaxbrain", "data_check")
    return folder or None


def _key(case, settings: dict) -> str | None:
    """A case's cache key: its files with their sizes and modification times, its label
    convention and the settings (None if a file is missing)."""
    entry = []
    for path in [*case.images, *([case.label] if case.label is not None else [])]:
        try:
            st = os.stat(path)
        except OSError:
            return None
        entry.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
    text = json.dumps([VERSION, entry, case.labels, settings], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def _cache_file(root: str) -> str | None:
    folder = cache_dir()
    if folder is None:
        return None
    name = hashlib.sha1(os.path.abspath(str(root)).encode()).hexdigest()[:16]
    return os.path.join(folder, f"{name}.json")


def _passed(path: str | None) -> set:
    if path is None or not os.path.exists(path):
        return set()
    try:
        with open(path) as f:
            return set(json.load(f).get("passed", []))
    except (OSError, ValueError, AttributeError):
        return set()


def _remember(path: str | None, root: str, passed: set) -> None:
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"root": os.path.abspath(str(root)), "version": VERSION,
                       "passed": sorted(passed)}, f)
        os.replace(tmp, path)
    except OSError:  # a read-only home: the check is only not remembered
        pass


def check_cases(cases: Sequence, root: str, *, voxels: bool = False, workers: int | None = None,
                progress: bool = True) -> tuple[list[str], int]:
    """(problems, cases read) of ``cases`` (of the data under ``root``), in case order; the
    cases that passed an earlier check with the same files and settings are not read."""
    settings = {"voxels": bool(voxels)}
    cache = _cache_file(root)
    before = _passed(cache)
    keys = [_key(c, settings) for c in cases]
    todo = [i for i, k in enumerate(keys) if k is None or k not in before]
    found = {}
    workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
    with tqdm(total=len(todo), unit="case", desc="data check",
              disable=not progress or not todo) as bar:
        if workers <= 1 or len(todo) < 8:
            for i in todo:
                found[i] = check_case(cases[i], voxels=voxels)
                bar.update()
        else:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                futures = {pool.submit(check_case, cases[i], voxels=voxels): i for i in todo}
                for future in concurrent.futures.as_completed(futures):
                    found[futures[future]] = future.result()
                    bar.update()
    passed = {k for i, k in enumerate(keys) if k is not None and not found.get(i)}
    if passed != (before & set(keys)):
        _remember(cache, root, passed)
    return [p for i in sorted(found) for p in found[i]], len(todo)


def unused_fields(data_cfg) -> list[str]:
    """Lines naming the fields of a config's ``data`` section its preprocessing leaves unused
    (``data.spacing`` without a resample in ``data.preprocess``)."""
    spacing = data_cfg.get("spacing")
    preprocess = data_cfg.get("preprocess")
    if spacing is None or not isinstance(preprocess, str):
        return []
    spacing = tuple(float(s) for s in spacing)
    if "resample(" not in preprocess:
        return [f"config: data.spacing={spacing} is unused: data.preprocess ({preprocess}) does "
                "not resample, the scans are used at their own voxel size"]
    m = re.search(r"resample\(spacing=\(([^)]*)\)", preprocess)
    if m:
        used = tuple(float(v) for v in m.group(1).split(",") if v.strip())
        if len(used) == 3 and not np.allclose(used, spacing):
            return [f"config: data.spacing={spacing} is unused: data.preprocess resamples to "
                    f"{used} mm"]
    return []
