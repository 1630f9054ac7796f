"""The data a config asks for: training, validation and test cases, synthetic data for demos.

    data.layout        "brats" | "atlas" | "datalist" | "subjects" | "table"
    data.root          dataset folder (or datalist / subject list / label table); None with
                       data.synthetic
    data.datalist      MONAI-style JSON with folds (relative paths: in root); given, it must exist
    data.datalist_if_present  a datalist used when root has it (brats: brats21_folds.json)
    data.fold          validation fold
    data.num_folds, data.split_seed   layouts brats and atlas without a datalist: the run makes
                       a num_folds-fold split (default 5) by subject from the sorted case ids,
                       shuffled with split_seed (default 0), saves it as workdir/folds.json and
                       reads it back from there on resume (and in evaluation)
    data.subject_list  layout "subjects" with a folder as root: its CSV/JSON list (subjects.csv)
    data.val_every     instead of folds: every k-th case (by sorted id) is held out (0: off)
    data.synthetic     {"kind": "brats"|"atlas"|"unlabeled"|"cohort"|"brats_sequences", "n",
                       "shape", "anatomy", ...}: write synthetic data under workdir/data once
                       and use it (cohort also takes sites, groups, ages, pd, followup,
                       workers: :func:`jaxbrain.data.cohort.write_cohort`; brats_sequences:
                       BraTS cases and their sequence-type table, one row per image)
    data.train_fraction  train on this fraction of the training cases (a fixed random subset
                       drawn with data.subset_seed), for label-efficiency studies; layout
                       "table": a stratified fraction of the training *subjects*
                       (:func:`jaxbrain.data.splits.subset`)
    data.cache         cache folder (built on first use), or None to decode .nii.gz

Training starts with :func:`check_before_training`: every case found and read once (headers,
label maps; :mod:`jaxbrain.data.check`), every problem listed at once, before anything is
compiled; cases unchanged since they passed are not read again.

Layout "table" (:mod:`jaxbrain.data.tables`: ADNI / PPMI / UK Biobank label tables):

    data.root          the CSV / TSV file, or a folder holding labels.csv / labels.tsv /
                       participants.tsv (image paths relative to it unless data.image_root),
                       or a BIDS dataset (its folder or participants.tsv: images found by
                       their names, :mod:`jaxbrain.data.bids`)
    data.task          "diagnosis" | "sex" | "age" | another numeric column (Case.target) |
                       another column with data.classes (categorical, e.g. "sequence"),
                       or several, e.g. ("age", "sex", "diagnosis"): Case.target is then the
                       tuple of the scan's targets in that order (batch["target"] (B, T)),
                       data.classes None or {task: class order}; folds are stratified by
                       the first task
    data.classes       class order of a classification task, e.g. ("CN", "AD") (other rows
                       are dropped); None: the classes present
    data.images        image column(s), one per channel (None: t1 / t1w / image / path);
                       BIDS: the suffixes (None: T1w)
    data.bids_select   BIDS: entities the image must have among several of a session, e.g.
                       "acq-mprage" or "run-2" (None: the plain one, lowest run)
    data.columns, data.vocabulary, data.drop_missing   load_table's columns=,
                       vocabulary_extra=, drop_missing=
    data.num_folds     a stratified (class, or target quantile bins) subject-level k-fold
                       split with data.split_seed (kfold); data.fold is validated (0 / None:
                       no folds)
    data.held_out_site instead of folds (num_folds is then ignored): validation is that site
                       (or list of sites), the other sites train (out-of-distribution)
    data.test_fold     k-fold only: a second fold kept out of training and validation, the
                       test split of eval.py --split test
    data.test_table    a separate label table (same options) as the test split
    Neither num_folds nor held_out_site: every scan trains, nothing is validated. The split is
    saved as workdir/folds.json (splits.write_split) with how it was made, and read back on
    resume and in evaluation; a config asking for another split there is an error.

Which split, in order: data.datalist; data.val_every; (brats, atlas) workdir/folds.json,
data.datalist_if_present in root, a new split; (table) as above; (subjects, datalist) no
validation cases.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import numpy as np

from jaxbrain import parallel
from jaxbrain.data import check as check_lib
from jaxbrain.data import cohort, layouts, pipeline, splits, synthetic, tables
from jaxbrain.data.nifti import DataError

def _write_brats_sequences(root: str, n: int, **kwargs) -> None:
    """Synthetic BraTS cases under ``root/brats`` and their sequence-type table
    ``root/labels.csv`` (one row per image: BrainDINO's sequence task)."""
    synthetic.write_brats(os.path.join(root, "brats"), n, **kwargs)
    tables.write_sequence_table(layouts.brats(os.path.join(root, "brats")),
                                os.path.join(root, "labels.csv"))


_WRITERS = {"brats": synthetic.write_brats, "atlas": synthetic.write_atlas,
            "unlabeled": synthetic.write_unlabeled, "cohort": cohort.write_cohort,
            "brats_sequences": _write_brats_sequences}


COHORT_OPTIONS = ("sites", "groups", "ages", "pd", "followup", "workers")


def _plain(value):
    """Config values as write_cohort takes them: dicts and tuples, not ConfigDicts and lists."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return tuple(value) if isinstance(value, list) else value


def _synthetic_root(cfg, workdir: str) -> str:
    spec = cfg.synthetic
    root = os.path.join(workdir, "data", spec.kind)
    done = os.path.join(root, ".complete")
    if jax.process_index() == 0 and not os.path.exists(done):
        kwargs = {"shape": tuple(spec.shape), "seed": spec.get("seed", 0),
                  "anatomy": spec.get("anatomy", "auto")}
        if spec.kind in ("brats", "brats_sequences"):
            kwargs["version"] = spec.get("version", 2021)
        if spec.kind == "cohort":
            kwargs.update({k: _plain(spec[k]) for k in COHORT_OPTIONS if spec.get(k) is not None})
        _WRITERS[spec.kind](root, int(spec.n), **kwargs)
        open(done, "w").close()
    parallel.barrier("synthetic data written")
    return root


FOLDS_FILE = "folds.json"
FOLD_LAYOUTS = ("brats", "atlas")  # without a datalist, the run makes folds for these


@dataclasses.dataclass(frozen=True)
class Split:
    """The cases of a config's data: training, validation and test (empty when the data has
    none), and the class names of a classification table (None otherwise)."""

    train: list
    val: list
    test: list
    classes: tuple[str, ...] | None = None


def cases(cfg, workdir: str) -> tuple[list, list]:
    """(training, validation) cases for the config's ``data`` section."""
    parts = split(cfg, workdir)
    return parts.train, parts.val


def data_root(cfg, workdir: str) -> str:
    """``data.root``, or the folder of ``data.synthetic`` (written under workdir/data once):
    several runs can then read one copy (``data.root`` = this, ``data.synthetic`` = None)."""
    if cfg.root is not None:
        return cfg.root
    if not cfg.get("synthetic"):
        raise ValueError("config.data.root is not set (pass --config.data.root=/path/to/data)")
    return _synthetic_root(cfg, workdir)


def label_convention(cfg, workdir: str, default: str = "binary") -> str:
    """The label convention of the config's data (:mod:`jaxbrain.data.labels`): layout
    "brats" follows its case folders' names (BraTS 2021 or 2023, whatever ``data.labels``
    says); other layouts (and a brats root without such folders, e.g. one datalist's) take
    ``data.labels``, else ``default``."""
    if cfg.get("layout") == "brats":
        try:
            return layouts.brats_version(data_root(cfg, workdir))
        except DataError:
            pass
    return cfg.get("labels") or default


def record_label_convention(cfg, workdir: str) -> str | None:
    """Layout "brats": sets ``data.labels`` to :func:`label_convention` (saying so when it
    changes), so that the run's config.json records the convention of its data, the one
    eval.py writes label maps in. Returns ``data.labels``."""
    if cfg.get("layout") != "brats":
        return cfg.get("labels")
    labels = label_convention(cfg, workdir, "brats2021")
    if cfg.get("labels") != labels:
        if cfg.get("labels") and jax.process_index() == 0:
            print(f"data: labels {labels} (the case folders' naming), not the config's "
                  f"{cfg.labels}", flush=True)
        with cfg.unlocked():
            cfg.labels = labels
    return labels


def split(cfg, workdir: str) -> Split:
    """The training, validation and test cases of the config's ``data`` section."""
    root = data_root(cfg, workdir)
    datalist = cfg.get("datalist")
    every = int(cfg.get("val_every") or 0)
    test, classes = [], None
    if datalist:
        path = datalist if os.path.isabs(datalist) else os.path.join(root, datalist)
        train, val = layouts.split_fold(
            layouts.datalist(path, labels=label_convention(cfg, workdir, "brats2021")),
            int(cfg.fold))
    elif every:
        found = _find(cfg, root)
        val = [c for i, c in enumerate(found) if i % every == every - 1]
        train = [c for i, c in enumerate(found) if i % every != every - 1]
    elif cfg.layout in FOLD_LAYOUTS:
        train, val = layouts.split_fold(folds(cfg, root, workdir), int(cfg.fold))
    elif cfg.layout == "table":
        train, val, test, classes = _table_split(cfg, root, workdir)
    else:
        train, val = _find(cfg, root), []
    if not train:
        raise ValueError(f"config.data: no training cases under {root}")
    fraction = float(cfg.get("train_fraction", 1.0))
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"config.data.train_fraction must be in (0, 1], got {fraction}")
    if fraction < 1.0 and cfg.layout == "table":
        train = splits.subset(train, fraction, int(cfg.get("subset_seed", 0)))
    elif fraction < 1.0:
        keep = max(1, int(round(fraction * len(train))))
        rng = np.random.default_rng(int(cfg.get("subset_seed", 0)))
        chosen = rng.permutation(len(train))[:keep]
        train = [train[i] for i in sorted(chosen)]
    return Split(train, val, test, classes)


def fit_objective(objective, train_cases: Sequence):
    """The objective fitted to the training targets (its optional ``fit(targets)`` hook: class
    weights, target standardisation), or ``objective`` itself when it has no hook. The same
    training cases give the same objective (in training, on resume and in evaluation)."""
    if not hasattr(objective, "fit"):
        return objective
    missing = [c.id for c in train_cases if c.target is None]
    if missing:
        raise ValueError(f"training cases without a target: {missing[:5]} ({len(missing)} of "
                         f"{len(train_cases)}); objective {type(objective).__name__} needs one "
                         "per scan (data.task of a label table)")
    fitted = objective.fit(np.asarray([c.target for c in train_cases], np.float64))
    changed = {f.name: getattr(fitted, f.name) for f in dataclasses.fields(fitted)
               if getattr(fitted, f.name) != getattr(objective, f.name)}
    if changed and jax.process_index() == 0:
        text = ", ".join(f"{k}={_short(v)}" for k, v in changed.items())
        print(f"objective: {text} (from {len(train_cases)} training scans)", flush=True)
    return fitted


def _short(value):
    if isinstance(value, tuple):
        return "(" + ", ".join(f"{v:.4g}" for v in value) + ")"
    return f"{value:.4g}" if isinstance(value, float) else value


def _find(cfg, root: str) -> list:
    kwargs, source = {}, root
    if cfg.layout == "datalist":
        kwargs = {"labels": cfg.get("labels") or "brats2021"}
    if cfg.layout == "subjects":
        kwargs = {"channels": tuple(cfg.channels)}
        if os.path.isdir(root):
            source = os.path.join(root, cfg.get("subject_list") or "subjects.csv")
    return layouts.find_cases(cfg.layout, source, **kwargs)


def folds(cfg, root: str, workdir: str) -> list:
    """The cases under ``root`` with folds, for a layout without a datalist given: the split
    saved in ``workdir/folds.json`` (an earlier run of this workdir), else
    ``data.datalist_if_present`` when ``root`` has it, else a new split
    (:func:`jaxbrain.data.layouts.make_folds`), written to ``workdir/folds.json``."""
    num_folds = int(cfg.get("num_folds") or 5)
    seed = int(cfg.get("split_seed") or 0)
    saved = os.path.join(workdir, FOLDS_FILE)
    if os.path.exists(saved):
        return _saved_folds(saved, _find(cfg, root), root, num_folds, seed)
    present = cfg.get("datalist_if_present")
    if present and os.path.exists(os.path.join(root, present)):
        return layouts.datalist(os.path.join(root, present),
                                labels=label_convention(cfg, workdir, "brats2021"))
    found = layouts.make_folds(_find(cfg, root), num_folds, seed)
    if jax.process_index() == 0:
        layouts.write_datalist(saved, found, num_folds=num_folds, split_seed=seed,
                               root=os.path.abspath(root))
        sizes = [sum(c.fold == k for c in found) for k in range(num_folds)]
        subjects = len({layouts.subject_of(c.id) for c in found})
        print(f"data: no datalist with folds in {root}: made a {num_folds}-fold split of "
              f"{len(found)} cases ({subjects} subjects, split_seed {seed}), fold sizes "
              f"{', '.join(map(str, sizes))}: {saved}", flush=True)
    return found


def _saved_folds(path: str, found: list, root: str, num_folds: int, seed: int) -> list:
    """The cases ``found`` on disk with the folds saved in ``path``; every saved case must be
    there (cases added since are left out, so the split stays the one the run started with)."""
    try:
        with open(path) as f:
            data = json.load(f)
        saved = {str(e["id"]): int(e["fold"]) for e in data["training"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a folds file written by this project ({e!r}); "
                        "delete it to make the split again") from e
    made_with = (data.get("num_folds"), data.get("split_seed"))
    if made_with != (num_folds, seed):
        raise ValueError(f"{path}: the run's split was made with num_folds {made_with[0]}, "
                         f"split_seed {made_with[1]}, but the config asks for num_folds "
                         f"{num_folds}, split_seed {seed}; keep those or use a new workdir")
    by_id = {c.id: c for c in found}
    missing = [i for i in saved if i not in by_id]
    if missing:
        raise DataError(f"{path}: case {missing[0]} of the run's saved split is not in "
                        f"{root} ({len(missing)} missing: {missing[:5]}); point data.root at "
                        "the data the run started with, or use a new workdir")
    return [dataclasses.replace(by_id[i], fold=fold) for i, fold in saved.items()]


# --- label tables ---------------------------------------------------------------------------


def _table_options(cfg) -> dict:
    """load_table's keyword arguments from the data section."""
    def plain(key):
        value = cfg.get(key)
        return _plain(value) if value is not None else None
    return {"task": cfg.get("task", "diagnosis"), "classes": plain("classes"),
            "images": plain("images"), "root": cfg.get("image_root"),
            "columns": plain("columns"), "vocabulary_extra": plain("vocabulary"),
            "drop_missing": bool(cfg.get("drop_missing", False)),
            "select": cfg.get("bids_select")}


def tasks_of(cfg) -> tuple[str, ...] | None:
    """``data.task`` as a tuple of tasks when it names several (a multi-task table), else
    None."""
    task = cfg.get("task", "diagnosis")
    if task is None or isinstance(task, str):
        return None
    task = tuple(task)
    if not task or len(set(task)) != len(task):
        raise ValueError(f"config.data.task: expected one task or several different ones, "
                         f"got {task}")
    return task


def _read_table(cfg, source: str):
    multi = tasks_of(cfg)
    if multi is not None:
        return _read_multitask_table(cfg, source, multi)
    table = tables.load_table(source, **_table_options(cfg))
    if jax.process_index() == 0:
        print(table.summary(), flush=True)
    return table


def _read_multitask_table(cfg, source: str, tasks: tuple[str, ...]):
    """A table read for several tasks at once: each scan's ``Case.target`` is the tuple of
    its targets in ``tasks`` order (class indices, numbers), from one read of the table per
    task; a row dropped for one task (another class, a missing value with drop_missing) is
    dropped for all. ``data.classes`` is then None or {task: class order}."""
    options = _table_options(cfg)
    classes = options.pop("classes") or {}
    if not isinstance(classes, dict):
        raise ValueError(f"config.data.classes: with several tasks {tasks}, give None or "
                         f"{{task: class order}}, got {classes!r}")
    unknown = sorted(set(classes) - set(tasks))
    if unknown:
        raise ValueError(f"config.data.classes names {unknown}, which are not among the tasks "
                         f"{tasks}")
    read = [tables.load_table(source, **dict(options, task=t, classes=classes.get(t)))
            for t in tasks]
    if jax.process_index() == 0:
        for table in read:
            print(table.summary(), flush=True)
    targets = [{c.id: c.target for c in table.cases} for table in read]
    kept = [c for c in read[0].cases if all(c.id in t for t in targets)]
    if not kept:
        raise DataError(f"{source}: no scan has a value for every task {tasks}")
    cases_list = [dataclasses.replace(c, target=tuple(float(t[c.id]) for t in targets))
                  for c in kept]
    dropped = {}
    for table in read:
        for why, n in table.dropped.items():
            dropped[why] = max(dropped.get(why, 0), n)
    return tables.Table(read[0].path, cases_list, tasks, None, read[0].rows, dropped)


def _table_split(cfg, root: str, workdir: str) -> tuple[list, list, list, tuple | None]:
    """(train, val, test, classes) of a label table, by subject (see the module docstring)."""
    table = _read_table(cfg, root)
    held = cfg.get("held_out_site")
    num_folds = cfg.get("num_folds")
    test_fold = cfg.get("test_fold")
    if held:
        num_folds = None  # the site split takes the place of folds
    if test_fold is not None and not num_folds:
        raise ValueError("config.data.test_fold needs a k-fold split (data.num_folds, without "
                         "data.held_out_site)")
    test = _read_table(cfg, cfg.test_table).cases if cfg.get("test_table") else []
    if not held and not num_folds:
        return table.cases, [], test, table.classes
    if held:
        held = [held] if isinstance(held, str) else [str(s) for s in held]
        how = {"split": "site", "held_out_site": sorted(held)}
        make = lambda: splits.site_split(table.cases, held)  # noqa: E731
        val_fold = splits.HELD_OUT
    else:
        how = {"split": "kfold", "num_folds": int(num_folds),
               "split_seed": int(cfg.get("split_seed") or 0)}
        make = lambda: splits.kfold(table.cases, how["num_folds"], how["split_seed"])  # noqa: E731
        val_fold = int(cfg.fold)
    found = _saved_split(os.path.join(workdir, FOLDS_FILE), table.cases, make, how, root)
    present = sorted({c.fold for c in found})
    for name, fold in (("fold", val_fold), ("test_fold", test_fold)):
        if fold is not None and fold not in present:
            raise ValueError(f"config.data.{name}={fold}: the split has folds {present}")
    if test_fold is not None:
        if int(test_fold) == val_fold:
            raise ValueError(f"config.data.test_fold equals data.fold ({val_fold}); the test "
                             "fold must be another fold")
        test = test + [c for c in found if c.fold == int(test_fold)]
    val = [c for c in found if c.fold == val_fold]
    train = [c for c in found if c.fold != val_fold and c.fold != test_fold]
    return train, val, test, table.classes


def _saved_split(path: str, found: list, make, how: dict, root: str) -> list:
    """``found`` with the folds saved in ``path`` by an earlier run of the workdir (made as
    ``how`` says, else an error), or with the folds of ``make()``, saved there."""
    if os.path.exists(path):
        try:
            with open(path) as f:
                info = json.load(f)
            saved = {k: info.get(k) for k in how}
        except (OSError, ValueError, AttributeError) as e:
            raise DataError(f"{path}: not a split file written by this project ({e!r}); "
                            "delete it to make the split again") from e
        if saved != how:
            raise ValueError(f"{path}: the run's split was made with {saved}, but the config "
                             f"asks for {how}; keep those or use a new workdir")
        return splits.read_split(path, found)
    made = make()
    if jax.process_index() == 0:
        splits.write_split(path, made, **how, root=os.path.abspath(root))
        sizes = {k: sum(c.fold == k for c in made) for k in sorted({c.fold for c in made})}
        subjects = len({splits.subject(c) for c in made})
        print(f"data: {how} split of {len(made)} scans ({subjects} subjects), scans per fold "
              f"{sizes}: {path}", flush=True)
    parallel.barrier("split written")
    return made


def cached(cfg, cases_list: list, preprocess: str, split: str) -> list:
    """``cases_list`` read from the config's cache, ``<cache>/<split>`` (built by process 0
    on first use)."""
    if not cfg.get("cache") or not cases_list:
        return cases_list
    folder = os.path.join(cfg.cache, split)
    if jax.process_index() == 0 and not os.path.exists(os.path.join(folder, pipeline.CACHE_INDEX)):
        pipeline.build_cache(cases_list, preprocess, folder, workers=int(cfg.get("workers", 0)))
    parallel.barrier("cache built")
    return pipeline.open_cache(folder, preprocess, cases_list)


# --- the data check at the start of training ---------------------------------------------------


def check(cfg, workdir: str, *, voxels: bool = False, progress: bool = True) -> check_lib.Report:
    """Every case of the config's data found and read once (:mod:`jaxbrain.data.check`):
    the problems of all of them, the notes (the table's summary, config fields the
    preprocessing leaves unused). Cases unchanged since they last passed are not read."""
    root = data_root(cfg, workdir)
    datalist = cfg.get("datalist")
    kwargs, layout, source = {}, cfg.layout, root
    if datalist:
        layout = "datalist"
        source = datalist if os.path.isabs(datalist) else os.path.join(root, datalist)
        kwargs = {"labels": cfg.get("labels") or "brats2021"}
    elif cfg.layout == "table":
        options = _table_options(cfg)
        tasks = tasks_of(cfg) or (options["task"],)
        classes = options.pop("classes")
        found, problems, notes = [], [], []
        for task in tasks:
            per_task = classes.get(task) if isinstance(classes, dict) else classes
            cases_t, problems_t, notes_t = check_lib.find(
                "table", root, **dict(options, task=task, classes=per_task))
            found = found or cases_t
            problems += [p for p in problems_t if p not in problems]
            notes += notes_t
        if cfg.get("test_table"):
            test, problems_t, notes_t = check_lib.find("table", cfg.test_table, **options)
            found, problems, notes = found + test, problems + problems_t, notes + notes_t
        return _checked(cfg, root, found, problems, notes, voxels, progress)
    elif cfg.layout == "subjects":
        kwargs = {"channels": tuple(cfg.channels)}
        if os.path.isdir(root):
            source = os.path.join(root, cfg.get("subject_list") or "subjects.csv")
    elif cfg.layout == "datalist":
        kwargs = {"labels": cfg.get("labels") or "brats2021"}
    found, problems, notes = check_lib.find(layout, source, **kwargs)
    return _checked(cfg, root, found, problems, notes, voxels, progress)


def _checked(cfg, root, found, problems, notes, voxels, progress) -> check_lib.Report:
    read_problems, read = check_lib.check_cases(found, root, voxels=voxels, progress=progress)
    notes = [*check_lib.unused_fields(cfg), *notes]
    return check_lib.Report(str(root), len(found), read, tuple(problems + read_problems),
                            tuple(notes))


def check_before_training(cfg, workdir: str) -> None:
    """The data check at the start of training: prints what the config leaves unused and
    raises :class:`jaxbrain.data.check.DataProblems` (every problem, one line each) before
    anything is compiled. Cases that passed before, unchanged, are not read again."""
    is_main = jax.process_index() == 0
    report = check(cfg, workdir, progress=is_main)
    if is_main:
        for line in check_lib.unused_fields(cfg):
            print(line, flush=True)
    if not report.ok:
        raise check_lib.DataProblems(report)
    if is_main and report.read:
        print(report.summary(), flush=True)


def batch_spec(config, global_batch: int | None = None) -> dict:
    """Shapes and dtypes of one training batch of the config (``{field: ShapeDtypeStruct}``,
    batch axis first, ``global_batch`` rows, default ``config.batch_size``), from the config
    alone: no case is read. ``data.source`` "volumes": the augment transforms run on a
    stand-in record of ``data.roi`` (image of ``model.in_channels`` channels, a label for
    the labelled layouts, the task's target for a label table); "slices": ``slice_size``
    RGB slices. The feature caches need their data to know their shapes and say so."""
    dcfg = config.data
    batch = int(config.batch_size if global_batch is None else global_batch)
    source = dcfg.get("source") or "volumes"
    if source == "slices":
        from jaxbrain.data import slices
        size = slices.options_of(dcfg)["slice_size"]
        size = (size, size) if np.isscalar(size) else tuple(int(s) for s in size)
        return {"image": jax.ShapeDtypeStruct((batch, *size, 3), np.float32),
                "collection": jax.ShapeDtypeStruct((batch,), np.int32),
                "slice": jax.ShapeDtypeStruct((batch,), np.int32)}
    if source != "volumes":
        raise ValueError(f"config.data.source={source!r}: the batch shapes of a cache of "
                         "per-scan arrays follow from the cached data (its encoder and scan "
                         "depth); the batch spec needs data.source 'volumes' or 'slices'")
    if not dcfg.get("roi"):
        raise ValueError("config.data.roi: the batch shape needs the crop (or whole-scan) size")
    roi = tuple(int(s) for s in dcfg.roi)
    channels = int(config.model.get("in_channels", len(dcfg.get("channels") or ()) or 1))
    crops = int(dcfg.get("crops_per_volume", 1))
    if batch % crops:
        raise ValueError(f"batch {batch} must be divisible by data.crops_per_volume ({crops})")
    grid = roi if len(roi) == 3 else (*roi, 1)  # a 2D crop is cut from a slice of a volume
    record = {"id": "spec", "image": np.ones((*grid, channels), np.float32),
              "labels": dcfg.get("labels") or "binary"}
    if dcfg.get("layout", "brats") in ("brats", "atlas", "datalist"):
        record["label"] = np.zeros(grid, np.uint8)
    if dcfg.get("layout") == "table" and dcfg.get("task", "diagnosis") is not None:
        tasks = tasks_of(dcfg)
        record["target"] = np.zeros((len(tasks),) if tasks else (), np.float32)
    augmented = pipeline._Augment(pipeline._canonical(dcfg.augment), crops, roi).random_map(
        record, np.random.default_rng(0))
    return {k: jax.ShapeDtypeStruct((batch, *np.shape(v)[1:]), np.asarray(v).dtype)
            for k, v in augmented.items()}
