"""Evaluating a training run: whole-volume predictions of the validation cases (or of files
given on the command line), written as NIfTI label maps in each input's own space, overlay
figures and metric tables.

Predictions and metrics come from the run's objective through the shared predictor
(:class:`jaxbrain.inference.Predictor`): the same code validation ran during training, so
``metrics.json``'s means are the numbers the best checkpoint was chosen on. Every metric is
that of the label map written, in the file's grid (:func:`jaxbrain.inference.segment_case`).
BraTS runs (objective ``regions="brats"``) write label maps with the regions nested (TC
within WT, ET within TC) in the case's BraTS convention and report Dice and HD95 of TC, WT
and ET of that map; one-channel sigmoid runs (ATLAS) report Dice, HD95, lesion-wise F1 and
volumes; softmax runs the Dice of each class.

Whole-scan runs (classification, regression: :func:`evaluate_scans`) predict every scan of
the validation (or test) split once through :class:`jaxbrain.inference.ScanPredictor`, the
validator's path, with the objective fitted to the run's training cases as in training, and
write ``predictions.csv`` (one row per scan: id, subject, session, site, target, the
prediction or class probabilities), ``metrics.json`` (the objective's scan metrics, the
numbers the best checkpoint was chosen on for the validation split) and a figure:
``roc.png`` (classification) or ``scatter.png`` (predicted vs true value, regression). With
``eval.age_bias=True`` a regression also reports the bias-corrected MAE
(:func:`jaxbrain.metrics.age_bias_correction`: Cole et al. 2018's correction fitted on the
validation predictions, applied to the split evaluated), or, in ``metrics.json`` and printed,
why it was refused (too few validation scans, a slope under 0.1, corrected values far
outside the training ages).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Sequence

import numpy as np

from jaxbrain import metrics as metrics_lib
from jaxbrain import objectives, runs
from jaxbrain.data import layouts, nifti, pipeline, splits
from jaxbrain.data.layouts import Case
from jaxbrain.evaluation import report
from jaxbrain.inference import Predictor, ScanPredictor, segment_case
from jaxbrain.inference import features
from jaxbrain.training import data as data_lib

SPLITS = ("val", "test")
PREDICTIONS_CSV = "predictions.csv"
METRICS_JSON = "metrics.json"


def makes_scan_predictions(config) -> bool:
    """Whether the config's objective predicts one value per scan (:func:`evaluate_scans`)."""
    return hasattr(objectives.create(**config.objective), "scan_metrics")


def run_labels(config, workdir: str) -> str:
    """The label convention a run's files are written in: the one its config.json records
    (training sets it from the data it found, :func:`jaxbrain.training.data.
    record_label_convention`), else ``config``'s ``data.labels``, else "binary"."""
    try:
        recorded = runs.load_config(workdir).data.get("labels")
    except (runs.RunError, AttributeError):
        recorded = None
    return recorded or config.data.get("labels") or "binary"


def channel_names(config) -> tuple[str, ...]:
    """The names of the image channels of the config's data, in order: BraTS's four
    contrasts, ``data.channels``, "t1" for ATLAS, else ``channel <i>``."""
    d = config.data
    if d.get("layout") == "brats" or str(d.get("labels", "")).startswith("brats"):
        return layouts.BRATS_CHANNELS
    if d.get("channels"):
        return tuple(d.channels)
    if d.get("layout") == "atlas":
        return ("t1",)
    return tuple(f"channel {i}" for i in range(int(config.model.get("in_channels", 1))))


def evaluate(config, workdir: str, output: str, *, images: Sequence[str] | None = None,
             step: int | None = None, overlays: int = 3,
             overlay_channel: str | int | None = None) -> list[dict]:
    """Segments the validation cases (or one case given as ``images``, one file per channel)
    and writes ``output/<case>_seg.nii.gz``, ``<case>_overlay.png`` and metrics.csv/json.

    The metrics are those of the label map written, scored in the source file's grid
    against the case's own label file (:func:`jaxbrain.inference.segment_case`, as validation
    during training scores it). ``images`` are written in the run's label convention
    (:func:`run_labels`). The overlays show ``overlay_channel`` (a channel name or index; default
    ``eval.overlay_channel``, else :func:`jaxbrain.evaluation.report.overlay_channel`'s
    choice: T1c for BraTS regions)."""
    run = runs.load_run(workdir, step)
    objective = objectives.create(**config.objective)
    if hasattr(objective, "scan_metrics"):
        raise ValueError(f"objective {config.objective.name!r} predicts one value per scan: "
                         "use evaluate_scans (eval.py chooses it)")
    if not hasattr(objective, "case_metrics"):
        raise ValueError(f"objective {config.objective.name!r} makes no whole-volume predictions "
                         "to evaluate; its validation loss is logged in metrics.jsonl")
    predictor = Predictor.from_config(config, run.model, objective)
    if images:
        name = os.path.basename(images[0]).split(".nii")[0]
        cases = [Case(id=name, images=tuple(images), labels=run_labels(config, workdir))]
    else:
        _, cases = data_lib.cases(config.data, workdir)
        if not cases:
            raise ValueError("the config's data has no validation cases; pass --images")
    dataset = pipeline.eval_dataset(cases, preprocess=config.data.preprocess, shard=(0, 1))
    names = channel_names(config)
    if overlay_channel is None:
        overlay_channel = config.get("eval", {}).get("overlay_channel")
    shown = report.overlay_channel(names, overlay_channel,
                                   brats=getattr(objective, "regions", None) == "brats")
    os.makedirs(output, exist_ok=True)
    label_files = {c.id: c.label for c in cases}
    rows = []
    for record in dataset:
        probs = predictor.probabilities(run.variables, record["image"])
        pred, scores = segment_case(objective, probs, record, label_files.get(record["id"]))
        if pred is None:
            raise ValueError(f"objective: {probs.shape[-1]} independent sigmoid channels make "
                             "no one label map to write; set objective.regions='brats' or "
                             "kind='softmax'")
        geometry = record["geometry"]
        nifti.write_volume(os.path.join(output, f"{record['id']}_seg.nii.gz"), pred, geometry,
                           mode="nearest", dtype=np.uint8)
        report.overlay_png(os.path.join(output, f"{record['id']}_overlay.png"),
                           record["image"][..., shown], pred, slices=overlays,
                           ground_truth=record.get("label"), geometry=geometry,
                           modality=report.modality_name(names[shown]))
        row = {"case": record["id"], "step": run.step}
        row.update(scores or {})
        rows.append(row)
    if any(len(r) > 2 for r in rows):
        report.write_metrics(rows, output)
    return rows


def evaluate_scans(config, workdir: str, output: str, *, split: str = "val",
                   step: int | None = None) -> dict:
    """Predicts every scan of the ``split`` ("val" or "test") and writes predictions.csv,
    metrics.json and roc.png / scatter.png to ``output``. Returns the metrics.json content."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    run = runs.load_run(workdir, step)
    parts = data_lib.split(config.data, workdir)
    cases = parts.val if split == "val" else parts.test
    if not cases:
        hint = ("data.num_folds or data.held_out_site" if split == "val"
                else "data.test_fold (with num_folds) or data.test_table")
        raise ValueError(f"the config's data has no {split} scans; set {hint}")
    objective = data_lib.fit_objective(objectives.create(**config.objective), parts.train)
    predict = ScanPredictor.from_config(config, run.model, objective)

    def predictions(of):
        source = config.data.get("source")
        if source in features.CASE_CACHES:  # a probe: the scans' cached features or slice stacks
            (of,) = features.CASE_CACHES[source](config, workdir, [of])
        return predict(run.variables, pipeline.eval_dataset(
            of, preprocess=config.data.preprocess, shard=(0, 1)))

    ids, preds, targets = predictions(cases)
    if np.isnan(targets).any():
        raise ValueError(f"{split} scans without a target: "
                         f"{[i for i, t in zip(ids, targets) if np.isnan(t)][:5]}")
    summary = {"split": split, "step": run.step, "scans": len(ids),
               "subjects": len({splits.subject(c) for c in cases}),
               "metrics": objective.scan_metrics(preds, targets),
               "objective": {k: v for k, v in vars(objective).items()}}
    os.makedirs(output, exist_ok=True)
    rows = [_scan_row(c, t) for c, t in zip(cases, targets)]
    if hasattr(objective, "num_classes"):
        names = _class_names(parts.classes, objective.num_classes)
        summary["classes"] = list(names)
        for row, p in zip(rows, preds):
            row["target_class"] = names[int(row["target"])]
            row.update({f"prob_{n}": float(v) for n, v in zip(names, p)})
            row["predicted_class"] = names[int(np.argmax(p))]
        summary["figure"] = report.roc_png(os.path.join(output, "roc.png"), targets, preds,
                                           names, title=f"{split}: {len(ids)} scans")
    else:
        train_targets = np.asarray([c.target for c in parts.train], np.float64)
        summary["metrics"]["mae_of_training_mean"] = metrics_lib.mae(
            targets, np.full(targets.shape, train_targets.mean()))
        corrected = None
        if config.get("eval", {}).get("age_bias"):
            corrected = _age_bias(summary, preds, targets, split, parts, predictions)
        for i, (row, p) in enumerate(zip(rows, preds)):
            row["prediction"] = float(p)
            if corrected is not None:
                row["prediction_corrected"] = float(corrected[i])
        task = config.data.get("task") or "target"
        summary["figure"] = report.scatter_png(
            os.path.join(output, "scatter.png"), targets, preds, corrected=corrected,
            quantity=task, unit="years" if task == "age" else "")
    summary["predictions"] = _write_rows(os.path.join(output, PREDICTIONS_CSV), rows)
    with open(os.path.join(output, METRICS_JSON), "w") as f:
        json.dump(report.json_ready(summary), f, indent=2, allow_nan=False)
        f.write("\n")
    return summary


def _age_bias(summary, preds, targets, split, parts, predictions) -> np.ndarray | None:
    """The bias-corrected predictions of the split (the bias fitted on the validation
    predictions), or None with the reason printed where the fit is refused
    (:func:`jaxbrain.metrics.age_bias_correction`); adds the fit or the reason, and the
    corrected MAE, to ``summary``."""
    if split == "val":
        val_preds, val_targets = preds, targets
    elif parts.val:
        _, val_preds, val_targets = predictions(parts.val)
    else:
        raise ValueError("eval.age_bias: the bias is fitted on the validation predictions, "
                         "but the config's data has no validation scans")
    train = np.asarray([c.target for c in parts.train], np.float64)
    info = metrics_lib.age_bias_correction(val_preds, val_targets, preds,
                                           (train.min(), train.max()))
    corrected = info.pop("corrected", None)
    summary["age_bias"] = {"fitted_on": "val", **info}
    if corrected is None:
        print(f"eval.age_bias: no bias correction: {info['reason']}")
        return None
    summary["metrics"]["mae_bias_corrected"] = metrics_lib.mae(targets, corrected)
    return corrected


def _class_names(classes, k: int) -> tuple[str, ...]:
    names = tuple(classes) if classes else ()
    return names if len(names) == k else tuple(f"class{i}" for i in range(k))


def _scan_row(case, target: float) -> dict:
    meta = case.meta or {}
    return {"id": case.id, "subject": splits.subject(case), "session": meta.get("session"),
            "site": meta.get("site"), "target": float(target)}


def _write_rows(path: str, rows: list[dict]) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
