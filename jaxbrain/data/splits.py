"""Subject-level splits of labelled scans: stratified k-fold, held-out sites, label budgets.

Every splitter works on subjects, never on scans: all sessions of a subject land on the same
side. A case's subject is ``case.meta["subject"]`` (label tables), else
:func:`jaxbrain.data.layouts.subject_of` of its id. A subject's stratum comes from its
baseline scan (the first by session, then id):

  * ``stratify="class"``: the target (a class index);
  * ``stratify="bins"``: the quantile bin of the target among the subjects' baseline targets
    (``bins`` bins; regression targets such as age);
  * ``"auto"``: "class" when every target is an integer and there are at most 10 values,
    else "bins"; cases without targets are one stratum;
  * a ``meta`` field name such as ``"site"`` or ``"sex"``; ``None``: no stratification.

Within each stratum (in sorted order) the subjects, sorted, are shuffled with
``numpy.random.default_rng(seed)``: the same cases and seed give the same split whatever
their order. Splits are ``Case.fold`` values, which :func:`jaxbrain.data.layouts.split_fold`
turns into (training, validation) lists:

  * :func:`kfold`: folds 0..k-1, dealt round robin within strata (a stratum starts where the
    previous one stopped, so fold sizes differ by at most one subject);
  * :func:`site_split`: fold :data:`HELD_OUT` (1) for the scans at the held-out sites, 0 else;
  * :func:`subset`: not a fold: the scans of a stratified fraction of the subjects (label
    budgets); for one seed, a smaller fraction's subjects are a subset of a larger one's.

:func:`write_split` / :func:`read_split` store a split in the JSON format of training's
``folds.json`` (``{"training": [{"id", "subject", "fold", "image": [...]}, ...], **info}``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from jaxbrain.data import layouts
from jaxbrain.data.nifti import DataError

HELD_OUT = 1


def subject(case) -> str:
    """The subject of a case: ``meta["subject"]``, else from its id."""
    meta = case.meta or {}
    return str(meta["subject"]) if meta.get("subject") else layouts.subject_of(case.id)


def by_subject(cases: Sequence) -> dict[str, list]:
    """{subject: its cases, baseline first (sorted by session, then id)}."""
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"duplicate case ids {dup[:5]}: cannot split")
    groups = {}
    for c in cases:
        groups.setdefault(subject(c), []).append(c)
    for members in groups.values():
        members.sort(key=lambda c: (str((c.meta or {}).get("session") or ""), c.id))
    return groups


def strata(groups: dict[str, list], stratify: str | None = "auto", bins: int = 5) -> dict:
    """{subject: stratum} by ``stratify`` (see the module docstring)."""
    baseline = {s: members[0] for s, members in groups.items()}
    if stratify is None:
        return {s: 0 for s in groups}
    if stratify not in ("auto", "class", "bins"):
        missing = [c.id for c in baseline.values() if not c.meta or stratify not in c.meta]
        if missing:
            raise DataError(f"cases {missing[:5]} have no meta field {stratify!r} to stratify by")
        return {s: str(c.meta[stratify]) for s, c in baseline.items()}
    # Several targets per scan (a multi-task table): stratified by the first.
    targets = {s: c.target[0] if isinstance(c.target, (tuple, list)) else c.target
               for s, c in baseline.items()}
    if any(t is None for t in targets.values()):
        if stratify != "auto":
            none = [baseline[s].id for s, t in targets.items() if t is None][:5]
            raise DataError(f"cases {none} have no target to stratify by ({stratify!r})")
        return {s: 0 for s in groups}
    values = np.asarray(list(targets.values()), np.float64)
    if stratify == "auto":
        integer = np.all(values == np.round(values)) and len(np.unique(values)) <= 10
        stratify = "class" if integer else "bins"
    if stratify == "class":
        return {s: int(t) for s, t in targets.items()}
    n_bins = max(1, min(int(bins), len(values) // 2))
    edges = np.quantile(values, np.arange(1, n_bins) / n_bins)
    return {s: int(np.searchsorted(edges, t, side="right")) for s, t in targets.items()}


def _shuffled_strata(groups, stratify, bins, seed):
    """[(stratum, subjects in shuffled order)] in sorted stratum order."""
    of = strata(groups, stratify, bins)
    rng = np.random.default_rng(seed)
    out = []
    for key in sorted(set(of.values()), key=lambda k: (str(type(k)), k)):
        members = sorted(s for s in groups if of[s] == key)
        out.append((key, [members[j] for j in rng.permutation(len(members))]))
    return out


def kfold(cases: Sequence, num_folds: int = 5, seed: int = 0, *,
          stratify: str | None = "auto", bins: int = 5) -> list:
    """``cases`` with ``fold`` set: a stratified ``num_folds``-fold split by subject."""
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    groups = by_subject(cases)
    if len(groups) < num_folds:
        raise DataError(f"{len(groups)} subjects cannot fill {num_folds} folds")
    fold_of, start = {}, 0
    for _, members in _shuffled_strata(groups, stratify, bins, seed):
        for k, s in enumerate(members):
            fold_of[s] = (start + k) % num_folds
        start = (start + len(members)) % num_folds
    return [dataclasses.replace(c, fold=fold_of[subject(c)]) for c in cases]


def site_split(cases: Sequence, held_out: str | Sequence[str]) -> list:
    """``cases`` with fold :data:`HELD_OUT` at the ``held_out`` site(s) and 0 elsewhere.

    Sites are ``meta["site"]``. A subject scanned at a held-out site and elsewhere keeps only
    its held-out scans (its other scans are left out, and counted in a printed line), so no
    subject is on both sides.
    """
    held = {held_out} if isinstance(held_out, str) else {str(s) for s in held_out}
    missing = [c.id for c in cases if not (c.meta or {}).get("site")]
    if missing:
        raise DataError(f"cases {missing[:5]} have no site (meta['site']; a table's site column)")
    sites = sorted({str(c.meta["site"]) for c in cases})
    unknown = sorted(held - set(sites))
    if unknown:
        raise DataError(f"held-out sites {unknown} not in the data; sites are {sites}")
    if held == set(sites):
        raise DataError(f"holding out every site {sites} leaves nothing to train on")
    groups = by_subject(cases)
    out, left_out = [], 0
    for c in cases:
        at_held = [str(m.meta["site"]) in held for m in groups[subject(c)]]
        here = str(c.meta["site"]) in held
        if any(at_held) and not here:
            left_out += 1
            continue
        out.append(dataclasses.replace(c, fold=HELD_OUT if here else 0))
    if left_out:
        print(f"site split: left out {left_out} scans at training sites of subjects also "
              f"scanned at held-out sites {sorted(held)}", flush=True)
    return out


def subset(cases: Sequence, fraction: float, seed: int = 0, *,
           stratify: str | None = "auto", bins: int = 5) -> list:
    """The scans of a stratified ``fraction`` of the subjects, in the order of ``cases``.

    Each stratum keeps ``max(1, round(fraction * size))`` of its subjects (all of them at
    fraction 1), the first ones of its shuffled order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    groups = by_subject(cases)
    keep = set()
    for _, members in _shuffled_strata(groups, stratify, bins, seed):
        n = len(members) if fraction == 1.0 else max(1, int(round(fraction * len(members))))
        keep.update(members[:n])
    return [c for c in cases if subject(c) in keep]


def write_split(path: str, cases: Sequence, **info) -> str:
    """Writes ``cases`` with their folds as ``folds.json`` does (absolute image paths, the
    subject, the target when set, ``info`` at the top level), atomically. Returns ``path``."""
    entries = []
    for c in cases:
        if c.fold is None:
            raise DataError(f"case {c.id} has no fold: make a split before writing it")
        entry = {"id": c.id, "subject": subject(c), "fold": int(c.fold),
                 "image": [os.path.abspath(p) for p in c.images]}
        if c.label is not None:
            entry["label"] = os.path.abspath(c.label)
        if c.target is not None:
            entry["target"] = float(c.target)
        entries.append(entry)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"training": entries, **info}, f, indent=1)
    os.replace(tmp, path)
    return path


def read_split(path: str, cases: Sequence) -> list:
    """``cases`` with the folds saved in ``path`` (by case id). Every saved case must be among
    ``cases``; cases the file does not list are left out (a printed count), so a split stays
    the one it was made as when data are added."""
    try:
        with open(path) as f:
            data = json.load(f)
        saved = {str(e["id"]): int(e["fold"]) for e in data["training"]}
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a split file ({e!r}); expected "
                        "{'training': [{'id': ..., 'fold': ...}, ...]}") from e
    by_id = {c.id: c for c in cases}
    missing = [i for i in saved if i not in by_id]
    if missing:
        raise DataError(f"{path}: {len(missing)} cases of the saved split are not in the data "
                        f"({missing[:5]})")
    extra = len(by_id) - len(saved)
    if extra:
        print(f"{path}: {extra} cases not in the saved split are left out", flush=True)
    return [dataclasses.replace(c, fold=saved[c.id]) for c in cases if c.id in saved]
