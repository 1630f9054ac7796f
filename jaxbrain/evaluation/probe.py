"""kNN probing of a frozen slice encoder on whole scans (BrainDINO's kNN protocol), and the
label-budget sweep of the probes.

    python -m jaxbrain.evaluation.probe knn --workdir runs/probe_demo
    python -m jaxbrain.evaluation.probe knn --config configs/braindino_probe.py:ad,demo \
        --workdir runs/knn_ad [--config.probe.orbax=...] [--split test] [--k 1,5,20]
    python -m jaxbrain.evaluation.probe budgets --config configs/braindino_probe.py:ad,demo \
        --workdir runs/budgets_ad --encoder random= --encoder pretrained=runs/braindino \
        [--fractions 0.1,0.2,0.4,0.6,0.8,1.0] [--seeds 0,1,2] [--k 20]

Each scan's cached per-slice features (:mod:`jaxbrain.inference.features`: normalised CLS of
every axial slice) are averaged over slices and L2-normalised; the held-out scans' neighbours
are the k training scans of highest cosine similarity. Classification uses DINO's weighted
vote (DINOv2's ``eval/knn.py``, Wu et al. 2018): neighbour j adds ``exp(s_j / T)`` (T = 0.07)
to its class, the normalised votes are the class probabilities (macro one-vs-rest AUC, binary:
class 1's AUC; accuracy of the top vote). Regression predicts the mean of the neighbours'
targets (MAE). k in 1, 3, 5, 10, 20, 50 (capped at the number of training scans).

The training scans are the config's training split with its label budget
(``data.train_fraction``), the evaluated ones its validation (or ``--split test``) scans, so
kNN and the trained heads see the same scans. Output: ``knn.csv`` (one row per k) and
``knn.md`` in the workdir (or ``--output``).

``budgets`` (:func:`budget_sweep`) runs, for each encoder (``--encoder name=orbax_run``,
empty for a random one), label fraction (BrainDINO's regimes 10 / 20 / 40 / 60 / 80 / 100%,
``data.train_fraction``, a stratified subset of the training subjects drawn with
``data.subset_seed``) and seed, the config's head through the loop and kNN on the same
training scans, and scores both on the held-out scans (the config's test split when it has
one, else its validation fold, on which the head's checkpoint is also chosen). The features
are computed once per encoder (one cache folder for every run). Written to the workdir:
``budgets.csv`` (one row per run), ``budgets.md`` (mean +- std over seeds) and
``budgets.png`` (the metric against the label fraction, one line per encoder and method).
A finished run keeps its ``result.json`` and is skipped on a rerun.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Mapping, Sequence

import numpy as np

from jaxbrain import metrics as metrics_lib
from jaxbrain import runs
from jaxbrain.inference import features as features_lib
from jaxbrain.training import data as data_lib

KS = (1, 3, 5, 10, 20, 50)
TEMPERATURE = 0.07


def pooled(features: Sequence[np.ndarray]) -> np.ndarray:
    """(N, D): each scan's (S, D) features averaged over slices, L2-normalised."""
    x = np.stack([np.asarray(f, np.float64).mean(axis=0) for f in features])
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbours(train_x: np.ndarray, test_x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (N_test, k), of the k most cosine-similar training rows
    (rows already L2-normalised), most similar first."""
    if not 1 <= k <= len(train_x):
        raise ValueError(f"k={k}: need 1 <= k <= {len(train_x)} training scans")
    sim = test_x @ train_x.T
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, idx, axis=1), idx


def knn_classify(train_x, train_y, test_x, k: int, num_classes: int,
                 temperature: float = TEMPERATURE) -> np.ndarray:
    """(N_test, K) class probabilities: the neighbours' votes ``exp(s / T)``, normalised."""
    sim, idx = neighbours(train_x, test_x, k)
    labels = np.asarray(train_y, np.int64)[idx]
    weights = np.exp((sim - 1.0) / temperature)  # exp(s / T) up to a factor per scan
    votes = np.zeros((len(test_x), num_classes))
    np.add.at(votes, (np.arange(len(test_x))[:, None], labels), weights)
    return votes / votes.sum(axis=1, keepdims=True)


def knn_regress(train_x, train_y, test_x, k: int) -> np.ndarray:
    """(N_test,) the mean target of the k nearest training scans."""
    _, idx = neighbours(train_x, test_x, k)
    return np.asarray(train_y, np.float64)[idx].mean(axis=1)


def _targets(cases) -> np.ndarray:
    missing = [c.id for c in cases if c.target is None]
    if missing:
        raise ValueError(f"kNN: scans without a target: {missing[:5]}")
    return np.asarray([c.target for c in cases], np.float64)


def knn_table(config, workdir: str, *, split: str = "val", ks: Sequence[int] = KS) -> list[dict]:
    """One row per k: the kNN metrics of the held-out scans (``split``: "val" or "test")."""
    parts = data_lib.split(config.data, workdir)
    held = parts.val if split == "val" else parts.test
    if not held:
        raise ValueError(f"kNN: the config's data has no {split} scans (data.num_folds / "
                         "data.held_out_site / data.test_fold)")
    train, held = features_lib.cached_features(config, workdir, [parts.train, held])
    train_x = pooled([c.load()["image"] for c in train])
    test_x = pooled([c.load()["image"] for c in held])
    train_y, test_y = _targets(train), _targets(held)
    regression = config.objective.name == "regression"
    rows = []
    for k in ks:
        k_used = min(int(k), len(train))
        row = {"k": int(k), "k_used": k_used, "train_scans": len(train), "scans": len(held)}
        if regression:
            pred = knn_regress(train_x, train_y, test_x, k_used)
            row.update(mae=metrics_lib.mae(test_y, pred),
                       pearson_r=metrics_lib.pearson_r(pred, test_y))
        else:
            n = int(config.objective.num_classes)
            probs = knn_classify(train_x, train_y, test_x, k_used, n)
            labels = test_y.astype(np.int64)
            auc = (metrics_lib.roc_auc(labels, probs[:, 1]) if n == 2
                   else metrics_lib.roc_auc_ovr(labels, probs))
            row.update(auc=auc, accuracy=metrics_lib.accuracy(labels, probs.argmax(axis=1)))
        rows.append(row)
    return rows


def compare_encoders(config, workdir: str, encoders: Mapping[str, Mapping], *,
                     split: str = "val", ks: Sequence[int] = KS) -> dict[str, list[dict]]:
    """:func:`knn_table` for each of ``encoders`` ({name: probe settings replacing the
    config's, e.g. {"orbax": None} for a random encoder, {"orbax": run} for a pretrained
    one}) on the same split of the same scans (one workdir; features cached per encoder)."""
    out = {}
    for name, changes in encoders.items():
        c = config.copy_and_resolve_references()
        with c.unlocked():
            for key, value in changes.items():
                c.probe[key] = value
        out[name] = knn_table(c, workdir, split=split, ks=ks)
    return out


def _write_csv(rows: list[dict], path: str) -> str:
    """``rows`` (dicts with the first row's keys) as a CSV file at ``path``, its folder made."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_table(rows: list[dict], output: str) -> tuple[str, str]:
    """knn.csv and knn.md under ``output``."""
    path = _write_csv(rows, os.path.join(output, "knn.csv"))
    md = os.path.join(output, "knn.md")
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])
                                       for k in keys) + " |")
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, md


FRACTIONS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)


def budget_sweep(config, workdir: str, encoders: Mapping[str, str | None], *,
                 fractions: Sequence[float] = FRACTIONS, seeds: Sequence[int] = (0,),
                 k: int = 20, progress: bool = True) -> list[dict]:
    """Head and kNN probes of each encoder (``{name: orbax run or None}``) at each label
    fraction and seed (see the module docstring); returns the rows of budgets.csv."""
    from tqdm import tqdm

    from jaxbrain.evaluation import evaluate
    from jaxbrain.training import loop

    if not encoders:
        raise ValueError("budgets: give at least one --encoder name=run (empty: random)")
    bad = [f for f in fractions if not 0.0 < float(f) <= 1.0]
    if bad:
        raise ValueError(f"budgets: label fractions must be in (0, 1], got {bad}")
    regression = config.objective.name == "regression"
    metric = "mae" if regression else "auc"
    root = data_lib.data_root(config.data, workdir)  # synthetic data written once, here
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.root, config.data.synthetic = root, None
    parts = data_lib.split(config.data, workdir)
    split = "test" if parts.test else "val"
    cache = features_lib.settings(config)["cache"] or os.path.join(workdir, "features")
    jobs = [(name, float(f), int(seed)) for name in encoders for f in fractions for seed in seeds]
    rows = []
    bar = tqdm(jobs, desc="probe budgets", unit="run", disable=not progress)
    for name, fraction, seed in bar:
        bar.set_postfix_str(f"{name} {fraction:g} seed {seed}")
        run = os.path.join(workdir, "runs", name, f"f{fraction:g}", f"s{seed}")
        done = os.path.join(run, "result.json")
        if os.path.exists(done):
            with open(done) as f:
                rows.append(json.load(f))
            continue
        c = config.copy_and_resolve_references()
        with c.unlocked():
            c.seed = seed
            c.data.train_fraction, c.data.subset_seed = fraction, seed
            c.probe.orbax, c.probe.cache = encoders[name] or None, cache
            c.progress = False
            if c.model.name == "slice_head":  # the width of each encoder's features
                c.model.in_channels = None
        loop.train_and_evaluate(c, run)
        summary = evaluate.evaluate_scans(runs.load_config(run), run, os.path.join(run, "eval"),
                                          split=split)
        (knn,) = knn_table(c, run, split=split, ks=[k])
        row = {"encoder": name, "orbax": encoders[name] or "", "fraction": fraction,
               "seed": seed, "split": split, "train_scans": knn["train_scans"],
               "scans": summary["scans"], f"head_{metric}": summary["metrics"][metric],
               f"knn_{metric}": knn[metric], "k_used": knn["k_used"]}
        with open(done, "w") as f:
            json.dump(row, f, indent=1)
        rows.append(row)
    write_budgets(rows, workdir, metric)
    return rows


def write_budgets(rows: list[dict], output: str, metric: str) -> tuple[str, str, str]:
    """budgets.csv, budgets.md (mean +- std over seeds) and budgets.png under ``output``."""
    path = _write_csv(rows, os.path.join(output, "budgets.csv"))
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["encoder"], r["fraction"]), []).append(r)
    label = metric.upper()
    lines = [f"| encoder | label fraction | training scans | head {label} | kNN {label} | seeds |",
             "|---|---|---|---|---|---|"]
    curves: dict = {}
    for (name, fraction), group in sorted(groups.items()):
        cells = []
        for method in ("head", "knn"):
            values = np.asarray([g[f"{method}_{metric}"] for g in group], np.float64)
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
            curves.setdefault((name, method), []).append((fraction, values.mean(), values.std()))
        lines.append(f"| {name} | {fraction:g} | {group[0]['train_scans']} | {cells[0]} | "
                     f"{cells[1]} | {len(group)} |")
    md = os.path.join(output, "budgets.md")
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")

    from jaxbrain.evaluation.report import _plot_figure
    fig, ax = _plot_figure((640, 480))
    for (name, method), points in sorted(curves.items()):
        x, y, e = (np.asarray(v) for v in zip(*sorted(points)))
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, linestyle="-" if method == "head" else "--",
                    label=f"{name}, {'head' if method == 'head' else 'kNN'}")
    ax.set_xlabel("label fraction (training subjects)")
    ax.set_ylabel(f"{label} ({rows[0]['split']} scans)")
    ax.set_title(f"probes by label budget: {label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    png = os.path.join(output, "budgets.png")
    fig.savefig(png)
    return path, md, png


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m jaxbrain.evaluation.probe",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    knn = sub.add_parser("knn", help="kNN probe table of a probe config or run")
    knn.add_argument("--workdir", required=True)
    knn.add_argument("--config", help="config file[:presets] (default: the workdir's "
                                      "config.json)")
    knn.add_argument("--split", choices=("val", "test"), default="val")
    knn.add_argument("--k", default=",".join(map(str, KS)))
    knn.add_argument("--output", help="folder of knn.csv / knn.md (default: the workdir)")
    budgets = sub.add_parser("budgets", help="head and kNN probes over label fractions")
    budgets.add_argument("--workdir", required=True)
    budgets.add_argument("--config", required=True, help="config file[:presets]")
    budgets.add_argument("--encoder", action="append", default=[], metavar="NAME=RUN",
                         help="an encoder to probe: a pretraining run or converted directory "
                              "(empty: a random encoder); repeatable")
    budgets.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS))
    budgets.add_argument("--seeds", default="0")
    budgets.add_argument("--k", type=int, default=20, help="kNN neighbours")
    args, overrides = parser.parse_known_args(argv)
    if args.config:
        from jaxbrain.training.config import load_config_file
        path, _, arg = args.config.partition(":")
        config = load_config_file(path, arg)
    else:
        config = runs.load_config(args.workdir)
    for item in overrides:
        key, eq, value = item.removeprefix("--config.").partition("=")
        if not item.startswith("--config.") or not eq:
            parser.error(f"unrecognised argument {item!r} (overrides are --config.a.b=value)")
        _override(config, key, value)
    os.makedirs(args.workdir, exist_ok=True)
    if args.command == "budgets":
        encoders = {}
        for item in args.encoder:
            name, eq, run = item.partition("=")
            if not eq or not name:
                parser.error(f"--encoder {item!r}: expected NAME=RUN (RUN empty: random)")
            encoders[name] = run or None
        rows = budget_sweep(config, args.workdir, encoders,
                            fractions=[float(f) for f in args.fractions.split(",") if f],
                            seeds=[int(s) for s in args.seeds.split(",") if s], k=args.k)
        print(open(os.path.join(args.workdir, "budgets.md")).read(), end="")
        print(f"wrote budgets.csv, budgets.md, budgets.png in {args.workdir}")
        return rows
    rows = knn_table(config, args.workdir, split=args.split,
                     ks=[int(k) for k in args.k.split(",") if k])
    csv_path, md = write_table(rows, args.output or args.workdir)
    print(open(md).read(), end="")
    print(f"wrote {csv_path}, {md}")
    return rows


def _override(config, key: str, value: str) -> None:
    import ast
    node = config
    parts = key.split(".")
    for p in parts[:-1]:
        node = node[p]
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    with config.unlocked() if hasattr(config, "unlocked") else _nothing():
        node[parts[-1]] = parsed


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main(sys.argv[1:])
