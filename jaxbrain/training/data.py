"""The data a config asks for: training and validation cases, synthetic data for demos.

    data.layout        "brats" | "atlas" | "datalist" | "subjects"
    data.root          dataset folder (or datalist / subject list); None with data.synthetic
    data.datalist      MONAI-style JSON with folds, relative to root (brats: brats21_folds.json)
    data.fold          validation fold of the datalist
    data.subject_list  layout "subjects" with a folder as root: its CSV/JSON list (subjects.csv)
    data.val_every     without folds: every k-th case (by sorted id) is held out for validation
    data.synthetic     {"kind": "brats"|"atlas"|"unlabeled", "n", "shape", "anatomy"}: write
                       synthetic data under workdir/data once and use it
    data.train_fraction  train on this fraction of the training cases (a fixed random subset
                       drawn with data.subset_seed), for label-efficiency studies
    data.cache         cache folder (built on first use), or None to decode .nii.gz
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxbrain import parallel
from jaxbrain.data import layouts, pipeline, synthetic

_WRITERS = {"brats": synthetic.write_brats, "atlas": synthetic.write_atlas,
            "unlabeled": synthetic.write_unlabeled}


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


def cases(cfg, workdir: str) -> tuple[list, list]:
    """(training, validation) cases for the config's ``data`` section."""
    root = cfg.root
    if root is None:
        if not cfg.get("synthetic"):
            raise ValueError("config.data.root is not set (pass --config.data.root=/path/to/data)")
        root = _synthetic_root(cfg, workdir)
    datalist = cfg.get("datalist")
    if datalist:
        path = datalist if os.path.isabs(datalist) else os.path.join(root, datalist)
        labels = cfg.get("labels", "brats2021")
        train, val = layouts.split_fold(layouts.datalist(path, labels=labels), int(cfg.fold))
    else:
        kwargs, source = {}, root
        if cfg.layout == "subjects":
            kwargs = {"channels": tuple(cfg.channels)}
            if os.path.isdir(root):
                source = os.path.join(root, cfg.get("subject_list") or "subjects.csv")
        found = layouts.find_cases(cfg.layout, source, **kwargs)
        every = int(cfg.get("val_every", 0))
        if every:
            val = [c for i, c in enumerate(found) if i % every == every - 1]
            train = [c for i, c in enumerate(found) if i % every != every - 1]
        else:
            train, val = found, []
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
