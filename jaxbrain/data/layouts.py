"""Dataset layouts: find the cases of BraTS, ATLAS v2.0, MONAI datalists and subject lists.

A layout function returns a list of :class:`Case` records (file paths only; nothing is
decoded). Every problem with the tree (a case missing a modality, a CSV row without a path,
a glob matching a subject in one channel but not another) raises :class:`DataError` naming
the file; nothing is skipped silently.

Supported:
  * BraTS 2021: ``BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1ce,t1,t2,seg}.nii.gz``.
  * BraTS 2023: ``BraTS-GLI-XXXXX-YYY/BraTS-GLI-XXXXX-YYY-{t2f,t1c,t1n,t2w,seg}.nii.gz``
    (any ``BraTS-<cohort>-`` prefix). Both give channels in the order [FLAIR, T1ce, T1, T2].
  * MONAI-style JSON datalists with folds, as ``brats21_folds.json``:
    ``{"training": [{"image": [...], "label": ..., "fold": k}, ...]}``; :func:`make_folds`
    and :func:`write_datalist` make one for data that comes without (``folds.json``).
  * ATLAS v2.0 (BIDS): ``sub-*/ses-*/anat/*_T1w.nii.gz`` with
    ``*_label-L_desc-T1lesion_mask.nii.gz`` next to it.
  * Unlabeled subject lists (UK Biobank style T1 + T2-FLAIR) from a CSV, a JSON list or glob
    patterns, one per channel.
  * Label tables (ADNI / PPMI / UK Biobank style CSV or TSV: subject, session, image paths,
    diagnosis, age, sex, site): :mod:`jaxbrain.data.tables`, layout ``"table"``.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re
from typing import Mapping, Sequence

import numpy as np

from jaxbrain.data.nifti import DataError

BRATS_CHANNELS = ("flair", "t1ce", "t1", "t2")
_BRATS_SUFFIXES = {
    "brats2021": {"flair": "_flair", "t1ce": "_t1ce", "t1": "_t1", "t2": "_t2", "seg": "_seg"},
    "brats2023": {"flair": "-t2f", "t1ce": "-t1c", "t1": "-t1n", "t2": "-t2w", "seg": "-seg"},
}
_BRATS_DIRS = {"brats2021": re.compile(r"^BraTS20\d\d_\d+$"),
               "brats2023": re.compile(r"^BraTS-[A-Za-z]+-\d+-\d+$")}
ATLAS_MASK_SUFFIX = "_label-L_desc-T1lesion_mask.nii.gz"


@dataclasses.dataclass(frozen=True)
class Case:
    """One subject: image files in channel order, an optional label file and fold.

    ``labels`` names the label convention (see :mod:`jaxbrain.data.labels`). ``target`` is a
    volume-level value (a class index or a number such as an age), carried into every crop
    of the case and batched as ``batch["target"]`` (B,). ``meta`` holds what a label table
    says about the scan (subject, session, diagnosis, age, sex, site, other columns; see
    :mod:`jaxbrain.data.tables`), JSON-serialisable, None for the other layouts; it takes
    no part in hashing.
    """

    id: str
    images: tuple[str, ...]
    label: str | None = None
    fold: int | None = None
    labels: str = "binary"
    target: float | None = None
    meta: Mapping | None = dataclasses.field(default=None, hash=False)


def _nii(stem: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if os.path.exists(stem + ext):
            return stem + ext
    return stem + ".nii.gz"


def _require(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found ({what})")
    return path


def brats_version(root: str) -> str:
    """The label convention of a BraTS folder, from its case folders' names: "brats2021"
    (``BraTS2021_XXXXX``, enhancing tumour 4) or "brats2023" (``BraTS-GLI-XXXXX-YYY``, 3)."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: BraTS root folder not found")
    names = sorted(os.listdir(root))
    found = [v for v, pat in _BRATS_DIRS.items() if any(pat.match(n) for n in names)]
    if len(found) != 1:
        raise DataError(f"{root}: expected case folders named BraTS2021_XXXXX or "
                        f"BraTS-GLI-XXXXX-YYY, found {names[:5]}{'...' if len(names) > 5 else ''}")
    return found[0]


def brats(root: str, *, version: str = "auto", require_label: bool = True) -> list[Case]:
    """Cases of a BraTS 2021 or 2023 training/validation folder, sorted by case id.

    Args:
      root: the folder holding one sub-folder per case.
      version: "brats2021", "brats2023" or "auto" (decided by the folder names).
      require_label: raise if a case has no segmentation (set False for validation sets
        without labels).
    """
    if not os.path.isdir(root):
        raise DataError(f"{root}: BraTS root folder not found")
    names = sorted(os.listdir(root))
    if version == "auto":
        version = brats_version(root)
    if version not in _BRATS_SUFFIXES:
        raise ValueError(f"version must be brats2021, brats2023 or auto, got {version!r}")
    suffixes = _BRATS_SUFFIXES[version]
    cases = []
    for name in names:
        folder = os.path.join(root, name)
        if not (os.path.isdir(folder) and _BRATS_DIRS[version].match(name)):
            continue
        images = tuple(_require(_nii(os.path.join(folder, name + suffixes[c])), f"BraTS {c}")
                       for c in BRATS_CHANNELS)
        label = _nii(os.path.join(folder, name + suffixes["seg"]))
        if not os.path.exists(label):
            if require_label:
                raise DataError(f"{label}: file not found (BraTS segmentation; pass "
                                "require_label=False for unlabeled validation data)")
            label = None
        cases.append(Case(id=name, images=images, label=label, labels=version))
    if not cases:
        raise DataError(f"{root}: no {version} case folders found")
    return cases


def datalist(path: str, *, root: str | None = None, key: str = "training",
             labels: str = "brats2021") -> list[Case]:
    """Cases of a MONAI-style JSON datalist; relative paths are resolved against ``root``
    (default: the JSON file's folder)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: datalist not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if key not in data or not isinstance(data[key], list):
        raise DataError(f"{path}: expected a list under key {key!r}, found keys {sorted(data)}")
    root = os.path.dirname(os.path.abspath(path)) if root is None else root
    cases = []
    for i, entry in enumerate(data[key]):
        where = f"{path}: {key}[{i}]"
        if not isinstance(entry, Mapping) or "image" not in entry:
            raise DataError(f"{where}: expected an object with an 'image' entry, got {entry!r}")
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        images = tuple(_require(os.path.join(root, p), f"{where} image") for p in images)
        label = entry.get("label")
        if label is not None:
            label = _require(os.path.join(root, label), f"{where} label")
        fold = entry.get("fold")
        if fold is not None and not isinstance(fold, int):
            raise DataError(f"{where}: fold must be an integer, got {fold!r}")
        case_id = entry.get("id") or os.path.basename(os.path.dirname(images[0])) or str(i)
        cases.append(Case(id=str(case_id), images=images, label=label, fold=fold, labels=labels))
    return cases


def split_fold(cases: Sequence[Case], fold: int) -> tuple[list[Case], list[Case]]:
    """(training, validation) cases: validation is the cases whose fold equals ``fold``."""
    folds = sorted({c.fold for c in cases if c.fold is not None})
    if any(c.fold is None for c in cases):
        missing = [c.id for c in cases if c.fold is None]
        raise DataError(f"cases without a fold: {missing[:5]}; every datalist entry needs 'fold'")
    if fold not in folds:
        raise DataError(f"fold {fold} not in the datalist (folds present: {folds})")
    return [c for c in cases if c.fold != fold], [c for c in cases if c.fold == fold]


_BIDS_SUBJECT = re.compile(r"^(sub-[^_/]+)(?:_|$)")
_BRATS23_SUBJECT = re.compile(r"^(BraTS-[A-Za-z]+-\d+)-\d+$")


def subject_of(case_id: str) -> str:
    """The subject a case id belongs to, so that its sessions share a fold: BIDS
    ``sub-X_ses-Y`` (ATLAS) -> ``sub-X``; BraTS 2023 ``BraTS-GLI-00001-001`` (patient 00001,
    time point 001) -> ``BraTS-GLI-00001``; any other id is its own subject."""
    m = _BIDS_SUBJECT.match(case_id) or _BRATS23_SUBJECT.match(case_id)
    return m.group(1) if m else case_id


def make_folds(cases: Sequence[Case], num_folds: int = 5, seed: int = 0) -> list[Case]:
    """``cases`` with ``fold`` set: a deterministic ``num_folds``-fold split by subject.

    The subjects (:func:`subject_of`, sorted) are shuffled with ``numpy.random.default_rng(
    seed)`` and dealt to folds 0, 1, ..., num_folds - 1, 0, ... in turn; every case gets its
    subject's fold, so sessions of one subject never straddle folds. The same ids and seed
    give the same folds, whatever the order of ``cases``.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"duplicate case ids {dup[:5]}: cannot assign folds")
    subjects = sorted({subject_of(i) for i in ids})
    order = np.random.default_rng(seed).permutation(len(subjects))
    fold_of = {subjects[j]: k % num_folds for k, j in enumerate(order)}
    return [dataclasses.replace(c, fold=fold_of[subject_of(c.id)]) for c in cases]


def write_datalist(path: str, cases: Sequence[Case], **info) -> str:
    """Writes ``cases`` (with folds) as a MONAI-style datalist that :func:`datalist` reads:
    ``{"training": [{"id", "subject", "fold", "image": [...], "label"}, ...], **info}`` with
    absolute paths (atomically: a temporary file renamed). Returns ``path``."""
    entries = []
    for c in cases:
        entry = {"id": c.id, "subject": subject_of(c.id), "fold": c.fold,
                 "image": [os.path.abspath(p) for p in c.images]}
        if c.label is not None:
            entry["label"] = os.path.abspath(c.label)
        entries.append(entry)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"training": entries, **info}, f, indent=1)
    os.replace(tmp, path)
    return path


def atlas(root: str, *, require_label: bool = True) -> list[Case]:
    """Cases of an ATLAS v2.0 BIDS tree (any depth above ``sub-*/ses-*/anat``)."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: ATLAS root folder not found")
    images = sorted(glob.glob(os.path.join(root, "**", "sub-*", "ses-*", "anat", "*_T1w.nii.gz"),
                              recursive=True))
    if not images:
        raise DataError(f"{root}: no sub-*/ses-*/anat/*_T1w.nii.gz files found")
    cases = []
    for image in images:
        label = image[: -len("_T1w.nii.gz")] + ATLAS_MASK_SUFFIX
        if not os.path.exists(label):
            if require_label:
                raise DataError(f"{label}: file not found (lesion mask of {image}; pass "
                                "require_label=False for unlabeled test data)")
            label = None
        name = os.path.basename(image)
        case_id = "_".join(p for p in name.split("_") if p.startswith(("sub-", "ses-")))
        cases.append(Case(id=case_id, images=(image,), label=label, labels="binary"))
    return cases


def _glob_regex(pattern: str) -> re.Pattern:
    """Regex for a glob pattern whose wildcards are capture groups (the subject key)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append("(.*)")
            i += 2
        elif pattern[i] == "*":
            out.append("([^/]*)")
            i += 1
        elif pattern[i] == "?":
            out.append("([^/])")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


def _from_globs(patterns: Mapping[str, str], channels: Sequence[str]) -> list[Case]:
    keyed = {}
    for ch in channels:
        if ch not in patterns:
            raise DataError(f"no glob pattern for channel {ch!r} (got {sorted(patterns)})")
        regex = _glob_regex(patterns[ch])
        files = sorted(glob.glob(patterns[ch], recursive=True))
        if not files:
            raise DataError(f"{patterns[ch]}: glob matches no files (channel {ch})")
        keyed[ch] = {"/".join(regex.match(f).groups()): f for f in files}
    keys = set().union(*(k.keys() for k in keyed.values()))
    for ch in channels:
        missing = sorted(keys - keyed[ch].keys())
        if missing:
            raise DataError(f"{patterns[ch]}: no {ch} file for subjects {missing[:5]}"
                            f"{' ...' if len(missing) > 5 else ''}")
    return [Case(id=k, images=tuple(keyed[ch][k] for ch in channels)) for k in sorted(keys)]


def _from_rows(path: str, rows: Sequence[Mapping], channels: Sequence[str], root: str
               ) -> list[Case]:
    cases = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i + 1}"
        if isinstance(row, Mapping) and "image" in row:
            paths = row["image"] if isinstance(row["image"], list) else [row["image"]]
            if len(paths) != len(channels):
                raise DataError(f"{where}: {len(paths)} images, expected {len(channels)} {channels}")
        else:
            missing = [ch for ch in channels if not (isinstance(row, Mapping) and row.get(ch))]
            if missing:
                raise DataError(f"{where}: no path for channel(s) {missing}")
            paths = [row[ch] for ch in channels]
        images = tuple(_require(os.path.join(root, p), f"{where}") for p in paths)
        case_id = row.get("subject") or row.get("id") or str(i)
        cases.append(Case(id=str(case_id), images=images))
    return cases


def subjects(spec: str | Mapping[str, str], *, channels: Sequence[str] = ("t1", "flair"),
             root: str | None = None) -> list[Case]:
    """Unlabeled subjects for self-supervised pretraining.

    ``spec`` is one of:
      * a ``.csv`` file with a header naming the channels (``subject,t1,flair``);
      * a ``.json`` file with a list of ``{"t1": ..., "flair": ...}`` or ``{"image": [...]}``
        objects (or such a list under ``"training"``);
      * a mapping ``{channel: glob pattern}``; files are paired across channels by what the
        wildcards match, e.g. ``{"t1": "ukb/*/T1/T1_brain_to_MNI.nii.gz",
        "flair": "ukb/*/T2_FLAIR/T2_FLAIR_brain_to_MNI.nii.gz"}``;
      * a single glob pattern (one channel).
    Relative paths in CSV/JSON files are resolved against ``root`` (default: the file's folder).
    """
    if isinstance(spec, Mapping):
        return _from_globs(spec, channels)
    if spec.endswith((".csv", ".json")):
        if not os.path.exists(spec):
            raise DataError(f"{spec}: subject list not found")
        root = os.path.dirname(os.path.abspath(spec)) if root is None else root
        with open(spec, newline="") as f:
            if spec.endswith(".csv"):
                rows = list(csv.DictReader(f))
            else:
                try:
                    rows = json.load(f)
                except json.JSONDecodeError as e:
                    raise DataError(f"{spec}: not valid JSON ({e})") from e
                if isinstance(rows, Mapping):
                    rows = rows.get("training", rows.get("subjects"))
                if not isinstance(rows, list):
                    raise DataError(f"{spec}: expected a list of subjects (or one under 'training')")
        if not rows:
            raise DataError(f"{spec}: no subjects listed")
        return _from_rows(spec, rows, channels, root)
    if len(channels) != 1:
        raise DataError(f"{spec}: a single glob pattern gives one channel, but {len(channels)} "
                        f"channels {tuple(channels)} are expected; pass {{channel: pattern}}")
    return _from_globs({channels[0]: spec}, channels)


def _table(source: str, **kwargs) -> list[Case]:
    from jaxbrain.data import tables  # tables builds on this module
    return tables.read_table(source, **kwargs)


LAYOUTS = {"brats": brats, "atlas": atlas, "datalist": datalist, "subjects": subjects}
LAYOUTS["table"] = _table


def find_cases(layout: str, source, **kwargs) -> list[Case]:
    """``find_cases("brats", root)``, ``("atlas", root)``, ``("datalist", json_path)``,
    ``("subjects", csv/json/glob)`` or ``("table", csv/tsv or its folder)`` -- the form configs
    and commands use."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[layout](source, **kwargs)
