"""Label tables: ADNI / PPMI / UK Biobank style CSV or TSV files -> :class:`Case` records.

A table holds one row per scan under a header (line 1). The delimiter is a tab for ``.tsv``,
a comma for ``.csv``, and sniffed (tab, comma or semicolon) otherwise. Header names are
matched case-insensitively with spaces read as underscores; each field below is the first
alias found (two aliases of one field in a header is an error: pass ``columns=``):

  ========== ================================================================ ==========
  field      aliases                                                          needed
  ========== ================================================================ ==========
  subject    subject, subject_id, participant_id, ptid, rid, patno, eid       always
  session    session, session_id, ses, viscode, visit, event_id               no
  images     ``images=`` names one column per channel; by default the first   always
             of t1, t1w, image, path
  diagnosis  diagnosis, dx, group, research_group, cohort                     task
  age        age                                                              task
  sex        sex, gender, ptgender                                            task
  site       site, site_id, siteid, scanner, centre, center                   no
  ========== ================================================================ ==========

Image paths are relative to ``root`` (default: the table's folder) unless absolute.

Diagnoses are read through one vocabulary (case-insensitive; spaces, ``_`` and ``-`` alike;
apostrophes ignored) onto canonical names, in this order:

  CN          CN, NC, NL, HC, control, healthy control, normal, cognitively normal; SMC
              (ADNI's significant memory concern: cognitively normal, as ADNIMERGE's DX
              column has it); "MCI to NL"
  MCI         MCI, EMCI, LMCI (ADNI's early / late MCI), mild cognitive impairment; "NL to MCI",
              "Dementia to MCI"
  AD          AD, dementia, Alzheimer's disease; "MCI to Dementia", "NL to Dementia"
  PD          PD, Parkinson's disease (PPMI)
  Prodromal   prodromal (PPMI)
  SWEDD       SWEDD (PPMI: scans without evidence of dopaminergic deficit)

so PPMI's "Healthy Control" and ADNI's "CN" are both ``CN``. ``vocabulary=`` adds synonyms
(``{"Normal Control": "CN"}``). Sex reads M / male / man and F / female / woman.

The task decides ``Case.target``:

  * ``"diagnosis"``: the index of the row's diagnosis in ``classes`` (default: the canonical
    classes present, in the order above), e.g. ``classes=("CN", "AD")`` gives CN 0, AD 1;
    rows of other classes are dropped and counted in :attr:`Table.dropped`.
  * ``"sex"``: index in ``classes`` (default ``("F", "M")``).
  * ``"age"`` or any other column name: the column's number (regression);
  * another column name with ``classes``: a categorical column (e.g. BraTS sequence type,
    a mutation status, a survival group): the index of the row's value in ``classes``
    (case-insensitive; spaces, ``_`` and ``-`` alike); rows of other values are dropped and
    counted in :attr:`Table.dropped`.
  * ``None``: no target (e.g. pretraining on the table's scans).

The column a task reads must be valid on every row: a missing or unreadable value is an error
(``drop_missing=True`` drops such rows instead, counted). The other fields are read when they
can be and kept as written when not. Every scan keeps its row in ``Case.meta``: ``subject``,
``session``, ``diagnosis`` (canonical), ``age`` (float or None), ``sex`` ("M", "F"), ``site``,
``line`` (1-based, header = 1) and every other column under its header name (strings).
``Case.id`` is ``"<subject>_<session>"`` (``"<subject>"`` without a session column); rows must
be unique by (subject, session).

Errors are :class:`DataError` naming the file, the line and the column; with ``errors=`` (a
list) every row's error is appended to it and the row left out, so that one read reports them
all (``python -m jaxbrain.data check``).

A BIDS dataset (:mod:`jaxbrain.data.bids`: a folder holding ``dataset_description.json``, or
``participants.tsv`` beside ``sub-*`` folders, or such a ``participants.tsv`` itself when it
has no image column) is read as it is: one row per (subject, session) with an image of each
suffix in ``images`` (default ``("T1w",)``), found by its file name; the labels come from
participants.tsv and the subject's sessions.tsv (``n/a`` is missing); ``select`` (e.g.
``"acq-mprage"``) chooses among several images of a session.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Mapping, Sequence

from jaxbrain.data import bids, layouts
from jaxbrain.data.nifti import DataError

ALIASES = {
    "subject": ("subject", "subject_id", "participant_id", "ptid", "rid", "patno", "eid"),
    "session": ("session", "session_id", "ses", "viscode", "visit", "event_id"),
    "diagnosis": ("diagnosis", "dx", "group", "research_group", "cohort"),
    "age": ("age",),
    "sex": ("sex", "gender", "ptgender"),
    "site": ("site", "site_id", "siteid", "scanner", "centre", "center"),
}
IMAGE_ALIASES = ("t1", "t1w", "image", "path")
DIAGNOSES = ("CN", "MCI", "AD", "PD", "Prodromal", "SWEDD")
_SYNONYMS = {
    "CN": ("cn", "nc", "nl", "hc", "control", "controls", "healthy control", "healthy controls",
           "healthy", "normal", "normal control", "cognitively normal", "smc",
           "significant memory concern", "mci to nl"),
    "MCI": ("mci", "emci", "lmci", "early mci", "late mci", "mild cognitive impairment",
            "nl to mci", "dementia to mci"),
    "AD": ("ad", "dementia", "alzheimers disease", "alzheimer disease", "alzheimers",
           "mci to dementia", "nl to dementia"),
    "PD": ("pd", "parkinsons disease", "parkinson disease", "parkinsons", "parkinson"),
    "Prodromal": ("prodromal",),
    "SWEDD": ("swedd",),
}
SEXES = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}
MISSING = ("", "na", "n/a", "nan", "none", "null", "-")
TABLE_NAMES = ("labels.csv", "labels.tsv", "participants.tsv")


def normalise(text: str) -> str:
    """Vocabulary key of a cell: lower case, apostrophes dropped, ``_`` / ``-`` as spaces."""
    text = text.strip().lower().replace("\u2019", "'").replace("'", "")
    return " ".join(text.replace("_", " ").replace("-", " ").split())


def vocabulary(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """{normalised synonym: canonical diagnosis}, with ``extra`` synonyms added."""
    vocab = {normalise(s): name for name, synonyms in _SYNONYMS.items() for s in synonyms}
    for synonym, name in (extra or {}).items():
        canonical = vocab.get(normalise(name), name)
        vocab[normalise(synonym)] = canonical
        vocab.setdefault(normalise(canonical), canonical)
    return vocab


@dataclasses.dataclass(frozen=True)
class Table:
    """A read table: its cases, the task they carry and what was left out.

    ``classes`` is the target order of a classification task (None for regression);
    ``dropped`` counts the rows left out by reason (``"class MCI"``, ``"no age"``).
    """

    path: str
    cases: list
    task: str | None
    classes: tuple[str, ...] | None
    rows: int
    dropped: dict
    notes: tuple = ()

    def summary(self) -> str:
        subjects = len({c.meta["subject"] for c in self.cases})
        kept = f"{len(self.cases)} scans of {subjects} subjects"
        if self.classes is not None:
            counts = [sum(c.target == k for c in self.cases) for k in range(len(self.classes))]
            kept += " (" + ", ".join(f"{n} {name}" for n, name in zip(counts, self.classes)) + ")"
        elif self.task is not None and self.cases:
            values = [c.target for c in self.cases]
            kept += f" ({self.task} {min(values):g}..{max(values):g})"
        dropped = sum(self.dropped.values())
        text = f"{self.path}: {self.rows} rows, kept {kept}"
        if dropped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items()))
            text += f"; dropped {dropped} ({reasons})"
        for note in self.notes:
            text += f"; {note}"
        return text


def read_table(path: str, *, quiet: bool = False, **options) -> list:
    """The cases of :func:`load_table` ``(path, **options)`` (the ``"table"`` layout); prints
    the one-line summary of what was kept and dropped unless ``quiet``."""
    table = load_table(path, **options)
    if not quiet:
        print(table.summary(), flush=True)
    return table.cases


def load_table(path: str, *, task: str | None = "diagnosis", classes: Sequence[str] | None = None,
               images: Sequence[str] | None = None, root: str | None = None,
               columns: Mapping[str, str] | None = None,
               vocabulary_extra: Mapping[str, str] | None = None,
               drop_missing: bool = False, select: str | None = None,
               errors: list | None = None) -> Table:
    """Reads a label table into a :class:`Table`.

    Args:
      path: the CSV / TSV file, or a folder holding one of ``labels.csv``, ``labels.tsv``,
        ``participants.tsv``; or a BIDS dataset (its folder or its participants.tsv).
      task: ``"diagnosis"``, ``"sex"``, ``"age"`` (or another numeric column), or None.
      classes: target order of a classification task (names through the vocabulary).
      images: the image column(s), one per channel, in channel order (BIDS: the suffixes,
        default ``("T1w",)``).
      root: folder that relative image paths are relative to (default: the table's).
      columns: ``{field: header name}`` overriding the aliases, e.g. ``{"diagnosis": "DX_bl"}``.
      vocabulary_extra: more diagnosis synonyms, ``{synonym: canonical name}``.
      drop_missing: drop (and count) rows whose task value is missing instead of raising.
      select: BIDS only: entities an image must have, e.g. ``"acq-mprage"`` or ``"run-2"``.
      errors: a list to append every row's error to (the row is left out) instead of raising
        the first.
    """
    source = _source(path, images, select, errors)
    path, header, rows = source.path, source.header, source.rows
    if source.bids:
        columns = {"subject": "subject", "session": "session", **(columns or {})}
    fields = _fields(path, header, columns or {})
    image_columns = [] if source.bids else _image_columns(path, header, images)
    if fields["subject"] is None:
        raise DataError(f"{path}: no subject column; expected one of {list(ALIASES['subject'])} "
                        f"(or columns={{'subject': ...}}), header is {header}")
    vocab = vocabulary(vocabulary_extra)
    reader = _TaskReader(path, task, classes, fields, header, vocab)
    root = os.path.dirname(os.path.abspath(path)) if root is None else root
    known = set(fields.values()) | set(image_columns)
    cases, dropped, seen = [], dict(source.dropped), {}
    for row in rows:
        try:
            case, reason = _case(row, path, fields, image_columns, reader, vocab, root, known,
                                 seen, drop_missing)
        except DataError as e:
            if errors is None:
                raise
            errors.append(str(e))
            continue
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            cases.append(case)
    if not cases:
        raise DataError(f"{path}: no scans left of {len(rows)} rows"
                        + (f" (dropped: {dropped})" if dropped else "")
                        + (f" ({len(errors)} with errors)" if errors else ""))
    classes = reader.classes
    if task == "diagnosis" and classes is None:  # the classes present, in vocabulary order
        present = {c.target for c in cases}
        classes = tuple(n for n in [*DIAGNOSES, *sorted(present - set(DIAGNOSES))]
                        if n in present)
        cases = [dataclasses.replace(c, target=float(classes.index(c.target))) for c in cases]
    return Table(path, cases, task, classes, len(rows), dropped, source.notes)


@dataclasses.dataclass(frozen=True)
class _Source:
    """What a table's rows come from: a CSV / TSV file, or a BIDS tree (rows with their
    images resolved)."""

    path: str
    header: list
    rows: list  # of bids.Row
    bids: bool = False
    dropped: dict = dataclasses.field(default_factory=dict)
    notes: tuple = ()


def _source(path: str, images, select, errors) -> _Source:
    folder = None
    if os.path.isdir(path):
        if not any(os.path.exists(os.path.join(path, n)) for n in TABLE_NAMES[:2]) \
                and bids.is_dataset(path):
            folder = path
    elif os.path.basename(path) == bids.PARTICIPANTS and bids.is_dataset(os.path.dirname(
            os.path.abspath(path))):
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline()
        names = {_key(h) for h in first.rstrip("\r\n").split("\t")}
        wanted = {_key(c) for c in ([images] if isinstance(images, str) else images or ())}
        if not (names & set(IMAGE_ALIASES)) and not (wanted and wanted <= names):
            folder = os.path.dirname(os.path.abspath(path))
    if folder is not None:
        suffixes = (images,) if isinstance(images, str) else tuple(images or ("T1w",))
        data = bids.rows(folder, suffixes, select=select, errors=errors)
        return _Source(data.path, data.header, data.rows, True, data.dropped, data.notes)
    if select:
        raise ValueError(f"select={select!r} is for BIDS datasets; {path} is a table")
    path = _table_path(path)
    header, rows = _read_rows(path, errors)
    return _Source(path, header, [bids.Row(dict(zip(header, r)), None, line, {},
                                           f"{path}: line {line}") for line, r in rows])


def _case(row, path, fields, image_columns, reader, vocab, root, known, seen, drop_missing):
    """(the row's Case, None), or (None, the reason it is dropped)."""
    cell, line = row.cells, row.line
    at = lambda column: row.origin.get(column, row.where) + f", column {column!r}"  # noqa: E731
    subject = cell[fields["subject"]].strip()
    if not subject:
        raise DataError(f"{at(fields['subject'])}: no subject id")
    session = (cell[fields["session"]].strip() or None) if fields["session"] else None
    key = (subject, session)
    if key in seen:
        what = f"subject {subject!r}" + (f", session {session!r}" if session else "")
        raise DataError(f"{row.where}: duplicate row ({what}), first on line {seen[key]}; "
                        "rows must be unique by (subject, session)")
    seen[key] = line
    target, reason = reader.target(at(reader.column) if reader.column else row.where, cell,
                                   drop_missing)
    if reason is not None:
        return None, reason
    if row.images is not None:
        paths = row.images
    else:
        paths = tuple(_image(path, line, col, cell[col], root) for col in image_columns)
    meta = {"subject": subject, "session": session,
            "diagnosis": _lenient(vocab, cell, fields["diagnosis"]),
            "age": _number_or_none(cell, fields["age"]),
            "sex": _lenient(SEXES, cell, fields["sex"]),
            "site": cell[fields["site"]].strip() if fields["site"] else None,
            "line": line}
    meta.update({h: v for h, v in cell.items() if h not in known and h not in meta})
    case_id = f"{subject}_{session}" if session else subject
    return layouts.Case(id=case_id, images=paths, target=target, meta=meta), None


def _table_path(path: str) -> str:
    if os.path.isdir(path):
        for name in TABLE_NAMES:
            if os.path.exists(os.path.join(path, name)):
                return os.path.join(path, name)
        raise DataError(f"{path}: folder holds no label table (looked for {list(TABLE_NAMES)})")
    if not os.path.exists(path):
        raise DataError(f"{path}: label table not found")
    return path


def _read_rows(path: str, errors: list | None = None
               ) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (stripped names) and (line number, cells) of the non-blank rows (a row of the
    wrong length is an error, appended to ``errors`` when given)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    if not text.strip():
        raise DataError(f"{path}: empty table (no header, no rows)")
    if path.endswith(".tsv"):
        delimiter = "\t"
    elif path.endswith(".csv"):
        delimiter = ","
    else:
        try:
            delimiter = csv.Sniffer().sniff(text.splitlines()[0], delimiters="\t,;").delimiter
        except csv.Error:
            raise DataError(f"{path}: cannot tell the delimiter (tab, comma or semicolon) from "
                            "the header; name the file .csv or .tsv") from None
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    if len(set(h.lower() for h in header)) != len(header):
        dup = sorted({h for h in header if [x.lower() for x in header].count(h.lower()) > 1})
        raise DataError(f"{path}: line 1: repeated column names {dup}")
    rows = []
    for row in reader:
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            error = (f"{path}: line {reader.line_num}: {len(row)} fields, but the header "
                     f"(line 1) has {len(header)}: {header}")
            if errors is None:
                raise DataError(error)
            errors.append(error)
            continue
        rows.append((reader.line_num, row))
    if not rows:
        raise DataError(f"{path}: empty table (a header, no rows)")
    return header, rows


def _key(name: str) -> str:
    return "_".join(name.strip().lower().split())


def _fields(path: str, header: list[str], columns: Mapping[str, str]) -> dict:
    """{field: header name or None} from the aliases, overridden by ``columns``."""
    unknown = sorted(set(columns) - set(ALIASES))
    if unknown:
        raise ValueError(f"columns: unknown fields {unknown}; expected some of {list(ALIASES)}")
    by_key = {_key(h): h for h in header}
    fields = {}
    for field, aliases in ALIASES.items():
        if field in columns:
            if _key(columns[field]) not in by_key:
                raise DataError(f"{path}: no column {columns[field]!r} (columns={{{field!r}: "
                                f"{columns[field]!r}}}), header is {header}")
            fields[field] = by_key[_key(columns[field])]
            continue
        found = [by_key[a] for a in aliases if a in by_key]
        if len(found) > 1:
            raise DataError(f"{path}: columns {found} could each be the {field}; pass "
                            f"columns={{{field!r}: <one of them>}}")
        fields[field] = found[0] if found else None
    return fields


def _image_columns(path: str, header: list[str], images: Sequence[str] | None) -> list[str]:
    by_key = {_key(h): h for h in header}
    if images is None:
        found = [by_key[a] for a in IMAGE_ALIASES if a in by_key]
        if not found:
            raise DataError(f"{path}: no image column; expected one of {list(IMAGE_ALIASES)} "
                            f"(or images=(column, ...)), header is {header}")
        return found[:1]
    if isinstance(images, str):
        images = (images,)
    missing = [c for c in images if _key(c) not in by_key]
    if missing:
        raise DataError(f"{path}: no image column(s) {missing}, header is {header}")
    return [by_key[_key(c)] for c in images]


def _image(path: str, line: int, column: str, value: str, root: str) -> str:
    value = value.strip()
    if not value:
        raise DataError(f"{path}: line {line}, column {column!r}: no image path")
    full = value if os.path.isabs(value) else os.path.join(root, value)
    if not os.path.exists(full):
        raise DataError(f"{path}: line {line}, column {column!r}: {full}: file not found")
    return full


def _lenient(vocab: Mapping[str, str], cell: dict, column: str | None):
    """A column's canonical value where the vocabulary knows it, else as written (None if
    empty or absent)."""
    if column is None or _missing(cell[column]):
        return None
    return vocab.get(normalise(cell[column]), cell[column].strip())


def _missing(value: str) -> bool:
    return value.strip().lower() in MISSING


def _number_or_none(cell: dict, column: str | None) -> float | None:
    if column is None:
        return None
    try:
        value = float(cell[column])
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class _TaskReader:
    """Reads each row's target for the task, with the checks the task needs."""

    def __init__(self, path, task, classes, fields, header, vocab):
        self.path, self.task, self.vocab = path, task, vocab
        self.classes = None
        if task is None:
            if classes is not None:
                raise ValueError("classes given without a classification task")
            self.column = None
            return
        if task in ("diagnosis", "sex"):
            self.column = fields[task]
            if self.column is None:
                raise DataError(f"{path}: task {task!r} needs a {task} column; expected one of "
                                f"{list(ALIASES[task])} (or columns={{{task!r}: ...}}), header "
                                f"is {header}")
            self.lookup = vocab if task == "diagnosis" else SEXES
            if classes is not None:
                names = [self._canonical(c) for c in classes]
                if len(set(names)) != len(names) or len(names) < 2:
                    raise ValueError(f"classes {tuple(classes)} -> {tuple(names)}: expected at "
                                     "least two different classes")
                self.classes = tuple(names)
            else:
                self.classes = None if task == "diagnosis" else ("F", "M")
            return
        if classes is not None and task == "age":
            raise ValueError(f"classes given for the regression task {task!r}")
        self.column = fields["age"] if task == "age" else \
            {_key(h): h for h in header}.get(_key(task))
        if classes is not None:  # a categorical column: its values are the class names
            names = [normalise(str(c)) for c in classes]
            if len(set(names)) != len(names) or len(names) < 2:
                raise ValueError(f"classes {tuple(classes)}: expected at least two different "
                                 "class names")
            self.lookup = {n: str(c) for n, c in zip(names, classes)}
            self.classes = tuple(str(c) for c in classes)
        if self.column is None:
            what = f"one of {list(ALIASES['age'])}" if task == "age" else repr(task)
            raise DataError(f"{path}: task {task!r} needs a column {what}, header is {header}")

    def _canonical(self, name: str) -> str:
        value = self.lookup.get(normalise(name))
        if value is None:
            raise ValueError(f"class {name!r} is not in the {self.task} vocabulary "
                             f"{_known_text(self.lookup)}")
        return value

    def target(self, where: str, cell: dict, drop_missing: bool):
        """(target, None), or (None, reason) for a row to drop; ``where`` names the file,
        line and column in errors."""
        if self.task is None:
            return None, None
        raw = cell[self.column]
        if _missing(raw):
            if drop_missing:
                return None, f"no {self.task}"
            raise DataError(f"{where}: no {self.task} value (drop_missing=True drops such rows)")
        if self.task in ("diagnosis", "sex"):
            value = self.lookup.get(normalise(raw))
            if value is None:
                raise DataError(f"{where}: unknown {self.task} {raw.strip()!r}; known: "
                                f"{_known_text(self.lookup)} (add synonyms with vocabulary_extra)"
                                if self.task == "diagnosis" else
                                f"{where}: unknown sex {raw.strip()!r}; known: {sorted(SEXES)}")
            if self.classes is None:  # default classes: fixed once all rows are read
                return value, None
            if value not in self.classes:
                return None, f"class {value}"
            return float(self.classes.index(value)), None
        if self.classes is not None:  # categorical: rows of other values dropped and counted
            value = self.lookup.get(normalise(raw))
            if value is None:
                return None, f"{self.task} {raw.strip()}"
            return float(self.classes.index(value)), None
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (self.task == "age" and not 0 < value < 130):
            raise DataError(f"{where}: {self.task} {raw.strip()!r} is not "
                            + ("an age in years (0..130)" if self.task == "age" else "a number"))
        return value, None


def _known_text(lookup: Mapping[str, str]) -> str:
    groups = {}
    for synonym, name in lookup.items():
        groups.setdefault(name, []).append(synonym)
    return "; ".join(f"{name}: {', '.join(s)}" for name, s in groups.items())


# BraTS sequence type (BrainDINO's task): the classes, and the BraTS channel of each.
SEQUENCES = ("T1", "T1ce", "T2", "FLAIR")
_BRATS_SEQUENCES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}


def write_sequence_table(cases: Sequence[layouts.Case], path: str,
                         channels: Sequence[str] = layouts.BRATS_CHANNELS) -> int:
    """Writes a label table of sequence type from multi-sequence cases (a BraTS layout's:
    ``layouts.brats``, images in ``channels`` order): one row per image, ``subject`` (the
    case), ``session`` and ``sequence`` (T1, T1ce, T2 or FLAIR), ``image`` (relative to the
    table's folder when under it). Read it with ``task="sequence", classes=SEQUENCES``; the
    subject column keeps a case's images in one fold. Returns the number of rows."""
    unknown = [c for c in channels if c not in _BRATS_SEQUENCES]
    if unknown:
        raise ValueError(f"channels {tuple(channels)}: {unknown} are not BraTS sequences "
                         f"{sorted(_BRATS_SEQUENCES)}")
    folder = os.path.dirname(os.path.abspath(path))
    rows = 0
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject", "session", "image", "sequence"])
        for case in cases:
            if len(case.images) != len(channels):
                raise DataError(f"case {case.id}: {len(case.images)} images, expected "
                                f"{len(channels)} ({', '.join(channels)})")
            for channel, image in zip(channels, case.images):
                image = os.path.abspath(image)
                rel = os.path.relpath(image, folder)
                name = _BRATS_SEQUENCES[channel]
                writer.writerow([case.id, name, image if rel.startswith("..") else rel, name])
                rows += 1
    return rows
