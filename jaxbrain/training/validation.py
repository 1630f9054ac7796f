"""Validation during training, decided by the objective.

Objectives that make one prediction per scan (``predict`` and ``scan_metrics``:
classification, regression) are validated on the whole preprocessed scans, every held-out
scan predicted once and the metrics (AUC, balanced accuracy, MAE) computed over all of them
together, as eval.py does. Objectives that make whole-volume predictions (``case_metrics``:
segmentation) are validated
exactly as eval.py evaluates them: the same :class:`jaxbrain.inference.Predictor`, the same
per-case metric functions (:func:`jaxbrain.inference.segment_case`: the label map eval.py
writes, scored in the source file's grid against the case's label file) and the same means
(NaN cases left out), so the checkpoint chosen as best carries the number the reports show. Other objectives (self-supervised, Volume
Fusion) are validated with their own loss on held-out cases: fixed crops and fixed on-device
augmentation, in evaluation mode, so successive validations are comparable.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxbrain import metrics as metrics_lib
from jaxbrain import parallel
from jaxbrain.data import pipeline
from jaxbrain.inference import Predictor, ScanPredictor, segment_case

VALIDATION_SEED = 12345  # crops and augmentation of the loss validation, the same every time


def make_validator(config, model, objective, cases, mesh, dtype):
    """A function ``variables[, objective_state] -> {metric: value}``, or None when there is
    nothing to validate on."""
    if not cases or not int(config.get("eval_every", 0)):
        return None
    limit = config.get("eval", {}).get("max_cases")
    cases = cases[:limit] if limit else cases
    if hasattr(objective, "scan_metrics"):
        return ScanValidator(config, model, objective, cases, dtype)
    if hasattr(objective, "case_metrics"):
        return PredictionValidator(config, model, objective, cases)
    return LossValidator(config, model, objective, cases, mesh, dtype)


class PredictionValidator:
    """Whole-volume predictions scored per case (eval.py's numbers)."""

    def __init__(self, config, model, objective, cases):
        self.objective = objective
        self.predictor = Predictor.from_config(config, model, objective)
        self.dataset = pipeline.eval_dataset(cases, preprocess=config.data.preprocess,
                                             shard=(0, 1))
        self.label_files = {c.id: getattr(c, "label", None) for c in cases}

    def rows(self, variables) -> list[dict]:
        out = []
        for record in self.dataset:
            probs = self.predictor.probabilities(variables, record["image"])
            _, scores = segment_case(self.objective, probs, record,
                                     self.label_files.get(record["id"]))
            out.append(scores)
        return out

    def __call__(self, variables, objective_state=None) -> dict:
        summary = metrics_lib.summarize(self.rows(variables))
        return {k: float(v["mean"]) for k, v in summary.items()}


class ScanValidator:
    """One prediction per whole scan (:class:`jaxbrain.inference.ScanPredictor`, as eval.py);
    metrics over all held-out scans at once."""

    def __init__(self, config, model, objective, cases, dtype):
        missing = [c.id for c in cases if c.target is None]
        if missing:
            raise ValueError(f"validation cases without a target (label table value): "
                             f"{missing[:5]}")
        self.objective = objective
        self.dataset = pipeline.eval_dataset(cases, preprocess=config.data.preprocess,
                                             shard=(0, 1))
        self.predictor = ScanPredictor(model, objective, dtype)

    def predictions(self, variables) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(scan ids, predictions (N, ...) in the objective's units, targets (N,))."""
        return self.predictor(variables, self.dataset)

    def __call__(self, variables, objective_state=None) -> dict:
        _, preds, targets = self.predictions(variables)
        return {k: float(v) for k, v in self.objective.scan_metrics(preds, targets).items()}


class LossValidator:
    """The objective's loss and metrics on fixed crops of the held-out cases."""

    def __init__(self, config, model, objective, cases, mesh, dtype):
        d = config.data
        crops = int(d.get("crops_per_volume", 1))
        batch = int(config.batch_size)
        self.batches = max(1, math.ceil(len(cases) * crops / batch))
        self.dataset = pipeline.training_dataset(
            cases, preprocess=d.preprocess, augment=d.augment, global_batch_size=batch,
            seed=VALIDATION_SEED, crops_per_volume=crops,
            roi=tuple(d.roi) if d.get("roi") else None)  # as the training batches
        self.mesh = mesh
        key = jax.random.key(VALIDATION_SEED)

        def evaluate(variables, objective_state, batch):
            def apply(x, override=None, *, train=False, **inputs):
                v = variables if override is None else {**variables, **override}
                return model.apply(v, x.astype(dtype), train=train, **inputs)
            kwargs = {}
            if hasattr(objective, "init_state"):
                kwargs = {"state": objective_state, "step": jnp.zeros((), jnp.int32)}
            out = objective.compute(apply, batch, key, **kwargs)
            return dict(out[1])

        self.evaluate = jax.jit(evaluate)

    def __call__(self, variables, objective_state=None) -> dict:
        rows = []
        for i in range(self.batches):
            batch = parallel.global_batch(self.dataset[i], self.mesh)
            rows.append(jax.device_get(self.evaluate(variables, objective_state, batch)))
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
