"""BIDS datasets as label tables: scans found by their file names, labels from
``participants.tsv`` (and ``sub-<label>/sub-<label>_sessions.tsv``).

A BIDS tree (https://bids-specification.readthedocs.io) keeps its images under
``sub-<label>/[ses-<label>/]anat/`` with names of entities and a suffix,

    sub-<label>[_ses-<label>][_task-..][_acq-..][_ce-..][_rec-..][_run-<index>][_echo-..]
        [_part-..][_chunk-..]_<suffix>.nii[.gz]

and its labels in ``participants.tsv`` (one row per subject, ``participant_id`` = ``sub-<label>``;
older datasets: ``subject_id``) and, per subject, ``sub-<label>_sessions.tsv`` (one row per
session, ``session_id`` = ``ses-<label>``; older: ``session``). ``n/a`` is a missing value.

:func:`rows` turns such a tree into the rows of a label table, one per (subject, session)
with an image of every requested suffix (default ``T1w``; several, e.g. ``("T1w", "FLAIR")``,
are channels in that order): a session's columns (from its sessions.tsv) override the
subject's of the same name (e.g. a per-session ``age``), so several sessions of one subject
are separate scans of the same subject (splits keep them together: the ``subject`` column).
:func:`jaxbrain.data.tables.load_table` reads a folder holding ``dataset_description.json``
or a ``participants.tsv`` without an image column this way.

Several images of one suffix in a session (``acq-``, ``ce-``, ``rec-``, ``run-`` ...): ``select``
(entities as in a file name, e.g. ``"acq-mprage"`` or ``"run-2"``) keeps the files that have
them; of those left, the file with the fewest entities besides sub, ses and run is taken (the
plain acquisition: no contrast agent, no reconstruction variant), then the first by
entity values, then the lowest run. Every such choice is counted in a note that the table's
summary prints. Subjects listed in participants.tsv without an image (e.g. ds000117's
``sub-emptyroom``) are left out and counted; scans of subjects participants.tsv does not list
have no labels.

pybids (the BIDS project's own library) is not used: it brings SQLAlchemy, formulaic,
pandas and more, and indexes every file of the tree into a database on each load (minutes
for thousands of subjects), where a whole-scan task needs the few naming rules above;
ancpbids is lighter but its schema-driven object model is still a dependency for those few
rules. Only top-level ``sub-*`` folders are read (``derivatives/``, ``sourcedata/`` and
``code/`` are not raw data).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

from jaxbrain.data.nifti import DataError

DESCRIPTION = "dataset_description.json"
PARTICIPANTS = "participants.tsv"
EXTENSIONS = (".nii.gz", ".nii")
_LABEL = re.compile(r"^[A-Za-z0-9+]+$")
# The order in which the specification lists the entities of an anat file name.
ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "run", "echo", "flip", "inv", "mt",
                "part", "chunk")
_PLAIN = ("sub", "ses", "run")  # entities that do not make an acquisition a variant


@dataclasses.dataclass(frozen=True)
class File:
    """A parsed BIDS file name: its path, entities ({key: value}) and suffix."""

    path: str
    entities: dict
    suffix: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclasses.dataclass(frozen=True)
class Row:
    """One scan of the table: its cells ({column: text}), the images (channel order), the
    line of participants.tsv it comes from (None if not listed) and where each column's
    value was read (``"<file>: line <n>"``)."""

    cells: dict
    images: tuple
    line: int | None
    origin: dict
    where: str


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The rows of a BIDS tree, the columns they have (``subject``, ``session`` first), the
    table that supplies the labels and notes on the choices made (printed in the summary)."""

    root: str
    path: str
    header: list
    rows: list
    dropped: dict
    notes: tuple


def parse(path: str) -> File | None:
    """The entities and suffix of a BIDS image file name, or None if it is not one
    (``sub-01_ses-1_acq-mprage_T1w.nii.gz`` -> {sub: 01, ses: 1, acq: mprage}, T1w)."""
    name = os.path.basename(path)
    ext = next((e for e in EXTENSIONS if name.endswith(e)), None)
    if ext is None:
        return None
    parts = name[: -len(ext)].split("_")
    if len(parts) < 2 or not parts[0].startswith("sub-"):
        return None
    entities = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or not key or not _LABEL.match(value) or key in entities:
            return None
        entities[key] = value
    suffix = parts[-1]
    if not suffix.isalnum():
        return None
    return File(path, entities, suffix)


def is_dataset(folder: str) -> bool:
    """Whether ``folder`` is a BIDS dataset: it holds ``dataset_description.json``, or
    ``participants.tsv`` beside ``sub-*`` folders."""
    if not os.path.isdir(folder):
        return False
    if os.path.exists(os.path.join(folder, DESCRIPTION)):
        return True
    return os.path.exists(os.path.join(folder, PARTICIPANTS)) and bool(_subjects(folder))


def _subjects(root: str) -> list[str]:
    return sorted(n for n in os.listdir(root)
                  if n.startswith("sub-") and os.path.isdir(os.path.join(root, n)))


def _selection(select: str | None) -> dict:
    if not select:
        return {}
    out = {}
    for part in str(select).replace(",", "_").split("_"):
        key, sep, value = part.strip().partition("-")
        if not sep or not key or not value:
            raise ValueError(f"BIDS selection {select!r}: expected entities as in a file name, "
                             "e.g. 'acq-mprage' or 'acq-mprage_run-2'")
        out[key] = value
    return out


def _matches(f: File, wanted: dict) -> bool:
    return all(_same(f.entities.get(k), v) for k, v in wanted.items())


def _same(value: str | None, wanted: str) -> bool:
    """Entity values compared as BIDS indices where both are numbers (run-01 is run-1)."""
    if value is None:
        return False
    if value.isdigit() and wanted.isdigit():
        return int(value) == int(wanted)
    return value == wanted


def _order(f: File):
    """Preference among images of one suffix in one session (smallest first)."""
    variants = sorted((k, v) for k, v in f.entities.items() if k not in _PLAIN)
    run = f.entities.get("run")
    return (len(variants), variants, int(run) if run and run.isdigit() else -1, f.name)


def images(root: str, suffix: str = "T1w", *, datatype: str = "anat",
           errors: list | None = None) -> dict[tuple[str, str | None], list[File]]:
    """{(subject, session or None): [files of ``suffix``]} of the tree under ``root``.

    A file whose entities contradict its folders (``sub-02_T1w`` under ``sub-01/``) is a
    DataError (appended to ``errors`` when given, the file left out).
    """
    found = {}
    for subject in _subjects(root):
        folder = os.path.join(root, subject)
        sessions = sorted(n for n in os.listdir(folder)
                          if n.startswith("ses-") and os.path.isdir(os.path.join(folder, n)))
        for session in [None, *sessions]:
            where = os.path.join(folder, session, datatype) if session else \
                os.path.join(folder, datatype)
            if not os.path.isdir(where):
                continue
            for name in sorted(os.listdir(where)):
                f = parse(os.path.join(where, name))
                if f is None or f.suffix != suffix:
                    continue
                if f"sub-{f.entities['sub']}" != subject or (
                        f"ses-{f.entities['ses']}" if "ses" in f.entities else None) != session:
                    error = (f"{f.path}: its entities (sub-{f.entities['sub']}"
                             + (f", ses-{f.entities['ses']}" if "ses" in f.entities else "")
                             + f") do not match its folder {os.path.relpath(where, root)}")
                    if errors is None:
                        raise DataError(error)
                    errors.append(error)
                    continue
                found.setdefault((subject, session), []).append(f)
    return found


def read_tsv(path: str, errors: list | None = None) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and (line, {column: cell}) of a BIDS TSV file (tab-separated, line 1 the
    header; blank lines skipped; a row of the wrong length is an error, appended to
    ``errors`` when given)."""
    with open(path, encoding="utf-8-sig") as fh:
        lines = fh.read().splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty file; expected a tab-separated header")
    header = [h.strip() for h in lines[0].split("\t")]
    rows = []
    for n, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        cells = text.split("\t")
        if len(cells) != len(header):
            error = (f"{path}: line {n}: {len(cells)} tab-separated fields, but the header "
                     f"(line 1) has {len(header)}: {header}")
            if errors is None:
                raise DataError(error)
            errors.append(error)
            continue
        rows.append((n, dict(zip(header, (c.strip() for c in cells)))))
    return header, rows


def _id_column(path: str, header: list[str], names: Sequence[str]) -> str:
    found = [h for h in header if h.lower() in names]
    if not found:
        raise DataError(f"{path}: no {names[0]} column (header is {header}); BIDS names the "
                        f"{'subject' if 'participant_id' in names else 'session'} "
                        f"{names[0]}")
    return found[0]


def _keyed(path: str, names: Sequence[str], prefix: str, errors: list | None
           ) -> tuple[list[str], dict]:
    """{id: (line, cells without the id column)} of a participants or sessions file."""
    header, rows = read_tsv(path, errors)
    column = _id_column(path, header, names)
    out = {}
    for line, cells in rows:
        key = cells[column]
        if not key.startswith(prefix):
            key = prefix + key  # older datasets write the label alone ("01")
        if key in out:
            error = f"{path}: line {line}: {key} listed twice (first on line {out[key][0]})"
            if errors is None:
                raise DataError(error)
            errors.append(error)
            continue
        out[key] = (line, {h: v for h, v in cells.items() if h != column})
    return [h for h in header if h != column], out


def rows(root: str, suffixes: Sequence[str] = ("T1w",), *, select: str | None = None,
         datatype: str = "anat", errors: list | None = None) -> Dataset:
    """The scans of the BIDS dataset under ``root`` as label-table rows (see the module
    docstring): columns ``subject``, ``session``, then participants.tsv's, then those of the
    sessions files. ``errors``: a list to append the problems of single files and rows to
    (that file or row left out) instead of raising the first."""
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    suffixes = tuple(suffixes)
    if not os.path.isdir(root):
        raise DataError(f"{root}: BIDS dataset folder not found")
    wanted = _selection(select)
    participants_path = os.path.join(root, PARTICIPANTS)
    participants, p_columns = {}, []
    if os.path.exists(participants_path):
        p_columns, participants = _keyed(participants_path, ("participant_id", "subject_id"),
                                         "sub-", errors)
    per_suffix = [images(root, s, datatype=datatype, errors=errors) for s in suffixes]
    keys = sorted(set().union(*per_suffix), key=lambda k: (k[0], k[1] or ""))
    if not keys:
        raise DataError(f"{root}: no BIDS images sub-*/[ses-*/]{datatype}/sub-*_"
                        f"{suffixes[0]}.nii[.gz] found")
    session_tables = {}
    s_columns = []
    for subject in sorted({k[0] for k in keys}):
        path = os.path.join(root, subject, f"{subject}_sessions.tsv")
        if os.path.exists(path):
            columns, table = _keyed(path, ("session_id", "session"), "ses-", errors)
            session_tables[subject] = (path, table)
            s_columns += [c for c in columns if c not in s_columns]
    header = ["subject", "session"]
    header += [c for c in p_columns if c.lower() not in ("subject", "session")]
    header += [c for c in s_columns if c not in header]
    dropped, chosen, incomplete = {}, [], []
    out = []
    for subject, session in keys:
        files = []
        for suffix, found in zip(suffixes, per_suffix):
            candidates = [f for f in found.get((subject, session), []) if _matches(f, wanted)]
            if not candidates:
                break
            candidates.sort(key=_order)
            if len(candidates) > 1:
                chosen.append((candidates[0], len(candidates)))
            files.append(candidates[0])
        if len(files) < len(suffixes):
            incomplete.append((subject, session))
            continue
        cells = {h: "n/a" for h in header}
        cells["subject"], cells["session"] = subject, session or ""
        origin = {}
        line = None
        if subject in participants:
            line, values = participants[subject]
            for h, v in values.items():
                if h in cells and h not in ("subject", "session"):
                    cells[h] = v
                    origin[h] = f"{participants_path}: line {line}"
        if subject in session_tables and session:
            path, table = session_tables[subject]
            if session in table:
                s_line, values = table[session]
                for h, v in values.items():
                    if h in cells and h not in ("subject", "session") and v.lower() != "n/a":
                        cells[h] = v
                        origin[h] = f"{path}: line {s_line}"
        if line is None:
            where = (f"{participants_path}: no row for {subject}" if participants else
                     f"{root}: no {PARTICIPANTS} (labels of {subject})")
        else:
            where = f"{participants_path}: line {line}"
        out.append(Row(cells, tuple(f.path for f in files), line, origin, where))
    listed_without = sorted(set(participants) - {r.cells["subject"] for r in out})
    if listed_without:
        dropped[f"no {'+'.join(suffixes)} image"] = len(listed_without)
    notes = []
    if incomplete and len(suffixes) > 1:
        notes.append(f"{len(incomplete)} sessions without every suffix {list(suffixes)} left "
                     f"out (e.g. {'_'.join(p for p in incomplete[0] if p)})")
    elif incomplete:
        notes.append(f"{len(incomplete)} sessions without a {suffixes[0]} image matching "
                     f"{select!r} left out")
    if chosen:
        f, n = chosen[0]
        notes.append(f"{len(chosen)} sessions have several {f.suffix} images: took the one "
                     "with the fewest acq/ce/rec/... entities, then the lowest run (e.g. "
                     f"{f.name} of {n}); data.bids_select (e.g. 'acq-mprage', 'run-2') chooses")
    if not out:
        raise DataError(f"{root}: no session has an image of every suffix {list(suffixes)}"
                        + (f" matching {select!r}" if select else ""))
    table = participants_path if participants else root
    return Dataset(root, table, header, out, dropped, tuple(notes))
