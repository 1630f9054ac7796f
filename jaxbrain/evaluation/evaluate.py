"""Evaluating a training run: whole-volume predictions of the validation cases (or of files
given on the command line), written as NIfTI label maps in each input's own space, overlay
figures and metric tables.

Predictions and metrics come from the run's objective through the shared predictor
(:class:`jaxbrain.inference.Predictor`): the same code validation ran during training, so
``metrics.json``'s means are the numbers the best checkpoint was chosen on. BraTS runs
(objective ``regions="brats"``) report Dice and HD95 of TC, WT and ET (each region
thresholded on its own output channel) and write label maps in the case's BraTS convention;
one-channel sigmoid runs (ATLAS) report Dice, HD95, lesion-wise F1 and volumes; softmax runs
the Dice of each class.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jaxbrain import objectives, runs
from jaxbrain.data import nifti, pipeline
from jaxbrain.data.layouts import Case
from jaxbrain.evaluation import report
from jaxbrain.inference import Predictor
from jaxbrain.training import data as data_lib


def evaluate(config, workdir: str, output: str, *, images: Sequence[str] | None = None,
             step: int | None = None, overlays: int = 3) -> list[dict]:
    """Segments the validation cases (or one case given as ``images``, one file per channel)
    and writes ``output/<case>_seg.nii.gz``, ``<case>_overlay.png`` and metrics.csv/json."""
    run = runs.load_run(workdir, step)
    objective = objectives.create(**config.objective)
    if not hasattr(objective, "case_metrics"):
        raise ValueError(f"objective {config.objective.name!r} makes no whole-volume predictions "
                         "to evaluate; its validation loss is logged in metrics.jsonl")
    predictor = Predictor.from_config(config, run.model, objective)
    if images:
        name = os.path.basename(images[0]).split(".nii")[0]
        cases = [Case(id=name, images=tuple(images), labels=config.data.get("labels", "binary"))]
    else:
        _, cases = data_lib.cases(config.data, workdir)
        if not cases:
            raise ValueError("the config's data has no validation cases; pass --images")
    dataset = pipeline.eval_dataset(cases, preprocess=config.data.preprocess, shard=(0, 1))
    os.makedirs(output, exist_ok=True)
    rows = []
    for record in dataset:
        convention = record.get("labels", "binary")
        probs = predictor.probabilities(run.variables, record["image"])
        pred = objective.label_map(probs, convention)
        geometry = record["geometry"]
        nifti.write_volume(os.path.join(output, f"{record['id']}_seg.nii.gz"), pred, geometry,
                           mode="nearest", dtype=np.uint8)
        report.overlay_png(os.path.join(output, f"{record['id']}_overlay.png"),
                           record["image"][..., 0], pred, slices=overlays,
                           ground_truth=record.get("label"))
        row = {"case": record["id"], "step": run.step}
        if "label" in record:
            row.update(objective.case_metrics(probs, record["label"], convention,
                                              tuple(geometry.spacing)))
        rows.append(row)
    if any(len(r) > 2 for r in rows):
        report.write_metrics(rows, output)
    return rows
