"""The data a config asks for: training and validation cases, synthetic data for demos.

    data.layout        "brats" | "atlas" | "datalist" | "subjects"
    data.root          dataset folder (or datalist / subject list); None with data.synthetic
    data.datalist      MONAI-style JSON with folds (relative paths: in root); given, it must exist
    data.datalist_if_present  a datalist used when root has it (brats: brats21_folds.json)
    data.fold          validation fold
    data.num_folds, data.split_seed   layouts brats and atlas without a datalist: the run makes
                       a num_folds-fold split (default 5) by subject from the sorted case ids,
                       shuffled with split_seed (default 0), saves it as workdir/folds.json and
                       reads it back from there on resume (and in evaluation)
    data.subject_list  layout "subjects" with a folder as root: its CSV/JSON list (subjects.csv)
    data.val_every     instead of folds: every k-th case (by sorted id) is held out (0: off)
    data.synthetic     {"kind": "brats"|"atlas"|"unlabeled"|"cohort", "n", "shape",
                       "anatomy"}: write synthetic data under workdir/data once and use it
    data.train_fraction  train on this fraction of the training cases (a fixed random subset
                       drawn with data.subset_seed), for label-efficiency studies
    data.cache         cache folder (built on first use), or None to decode .nii.gz

Which split, in order: data.datalist; data.val_every; (brats, atlas) workdir/folds.json,
data.datalist_if_present in root, a new split; (subjects, datalist) no validation cases.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from jaxbrain import parallel
from jaxbrain.data import cohort, layouts, pipeline, synthetic
from jaxbrain.data.nifti import DataError

_WRITERS = {"brats": synthetic.write_brats, "atlas": synthetic.write_atlas,
            "unlabeled": synthetic.write_unlabeled, "cohort": cohort.write_cohort}


def _synthetic_root(cfg, workdir: str) -> str:
    spec = cfg.synthetic
    root = os.path.join(workdir, "data", spec.kind)
    done = os.path.join(root, ".complete")
    if jax.process_index() == 0 and not os.path.exists(done):
        kwargs = {"shape": tuple(spec.shape), "seed": spec.get("seed", 0),
                  "anatomy": spec.get("anatomy", "auto")}
        if spec.kind == "brats":
            kwargs["version"] = spec.get("version", 2021)
        _WRITERS[spec.kind](root, int(spec.n), **kwargs)
        open(done, "w").close()
    parallel.barrier("synthetic data written")
    return root


FOLDS_FILE = "folds.json"
FOLD_LAYOUTS = ("brats", "atlas")  # without a datalist, the run makes folds for these


def cases(cfg, workdir: str) -> tuple[list, list]:
    """(training, validation) cases for the config's ``data`` section."""
    root = cfg.root
    if root is None:
        if not cfg.get("synthetic"):
            raise ValueError("config.data.root is not set (pass --config.data.root=/path/to/data)")
        root = _synthetic_root(cfg, workdir)
    datalist = cfg.get("datalist")
    every = int(cfg.get("val_every") or 0)
    if datalist:
        path = datalist if os.path.isabs(datalist) else os.path.join(root, datalist)
        labels = cfg.get("labels", "brats2021")
        train, val = layouts.split_fold(layouts.datalist(path, labels=labels), int(cfg.fold))
    elif every:
        found = _find(cfg, root)
        val = [c for i, c in enumerate(found) if i % every == every - 1]
        train = [c for i, c in enumerate(found) if i % every != every - 1]
    elif cfg.layout in FOLD_LAYOUTS:
        train, val = layouts.split_fold(folds(cfg, root, workdir), int(cfg.fold))
    else:
        train, val = _find(cfg, root), []
    if not train:
        raise ValueError(f"config.data: no training cases under {root}")
    fraction = float(cfg.get("train_fraction", 1.0))
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"config.data.train_fraction must be in (0, 1], got {fraction}")
    if fraction < 1.0:
        keep = max(1, int(round(fraction * len(train))))
        chosen = np.random.default_rng(int(cfg.get("subset_seed", 0))).permutation(len(train))[:keep]
        train = [train[i] for i in sorted(chosen)]
    return train, val


def _find(cfg, root: str) -> list:
    kwargs, source = {}, root
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
        return layouts.datalist(os.path.join(root, present), labels=cfg.get("labels", "brats2021"))
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
