"""Evaluating a training run: sliding-window segmentation of whole volumes, predictions
written as NIfTI label maps in each input's own space, overlay PNGs and metric tables.

BraTS runs (``eval.label_transform == "brats_regions"``) report Dice and HD95 for TC, WT and
ET, each region thresholded on its own output channel, and write label maps in the case's
BraTS convention (WT -> 2, TC -> 1, ET -> 4 or 3).
Single-channel sigmoid runs (ATLAS) report Dice, HD95, lesion-wise F1 and volumes. Softmax
runs write the argmax class map and report per-class Dice.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxbrain import objectives
from jaxbrain.data import labels as labels_lib
from jaxbrain.data import nifti, pipeline
from jaxbrain.data.layouts import Case
from jaxbrain.evaluation import metrics as metrics_lib
from jaxbrain.evaluation import report
from jaxbrain.evaluation.sliding_window import sliding_window_inference
from jaxbrain.training import data as data_lib
from jaxbrain.training.loop import DTYPES, build_model


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not a training run (no saved config); pass --config")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_variables(workdir: str, step: int | None = None):
    """Model variables ({"params": ..., and e.g. "batch_stats"}) of the run's best checkpoint
    (by its validation metric), else its latest, or of ``step``."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
    if step is None:
        step = manager.best_step() if manager.best_step() is not None else manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{directory}: no checkpoint")
    state = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "state"))
    return {"params": state["params"], **state.get("model_state", {})}, step


class Segmenter:
    """Whole-volume prediction with a trained model."""

    def __init__(self, config, variables):
        self.config = config
        self.model = build_model(config.model)
        self.objective = objectives.create(**config.objective)
        self.brats = config.eval.get("label_transform") == "brats_regions"
        dtype = DTYPES[config.get("compute_dtype", "float32")]

        def predict(v, windows):
            return self.objective.probabilities(self.model.apply(v, windows.astype(dtype)))

        self._predict = predict
        self.variables = variables

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """(X, Y, Z, C) preprocessed image -> (X, Y, Z, K) probabilities."""
        e = self.config.eval
        probs = sliding_window_inference(jax.tree_util.Partial(self._predict, self.variables),
                                         image[None], tuple(e.roi), overlap=e.get("overlap", 0.5),
                                         mode=e.get("mode", "gaussian"),
                                         sw_batch_size=e.get("sw_batch_size", 2))
        return np.asarray(probs)[0]

    def label_map(self, probs: np.ndarray, convention: str) -> np.ndarray:
        threshold = self.objective.threshold
        if self.objective.kind == "softmax":
            return np.argmax(probs, -1).astype(np.uint8)
        if self.brats:
            return labels_lib.regions_to_brats(probs, convention, threshold)
        return (probs[..., 0] > threshold).astype(np.uint8)

    def case_metrics(self, probs: np.ndarray, pred: np.ndarray, target: np.ndarray,
                     convention: str, spacing) -> dict:
        if self.brats:  # each region thresholded on its own channel, as BraTS models are scored
            regions = (probs > self.objective.threshold).astype(np.uint8)
            return metrics_lib.brats_region_metrics(regions,
                                                    labels_lib.brats_to_regions(target, convention),
                                                    spacing=spacing)
        if self.objective.kind == "softmax":
            k = self.config.model.out_channels
            dice = metrics_lib.dice_per_channel(np.eye(k)[pred][..., 1:], np.eye(k)[target][..., 1:])
            return {f"dice_{c + 1}": float(d) for c, d in enumerate(dice)}
        return metrics_lib.binary_metrics(pred, target > 0, spacing=spacing)


def evaluate(config, workdir: str, output: str, *, images: Sequence[str] | None = None,
             step: int | None = None, overlays: int = 3) -> list[dict]:
    """Segments the validation cases (or one case given as ``images``, one file per channel)
    and writes ``output/<case>_seg.nii.gz``, ``<case>_overlay.png`` and metrics.csv/json."""
    variables, step = load_variables(workdir, step)
    segmenter = Segmenter(config, variables)
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
        probs = segmenter.probabilities(record["image"])
        pred = segmenter.label_map(probs, convention)
        geometry = record["geometry"]
        nifti.write_volume(os.path.join(output, f"{record['id']}_seg.nii.gz"), pred, geometry,
                           mode="nearest", dtype=np.uint8)
        report.overlay_png(os.path.join(output, f"{record['id']}_overlay.png"),
                           record["image"][..., 0], pred, slices=overlays,
                           ground_truth=record.get("label"))
        row = {"case": record["id"], "step": step}
        if "label" in record:
            row.update(segmenter.case_metrics(probs, pred, record["label"], convention,
                                              tuple(geometry.spacing)))
        rows.append(row)
    if any(len(r) > 2 for r in rows):
        report.write_metrics(rows, output)
    return rows
