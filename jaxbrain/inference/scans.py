"""Whole-scan prediction: one prediction per preprocessed scan, the one path shared by
validation during training and by eval.py (Alzheimer's / Parkinson's classification, brain
age).

    predict = ScanPredictor.from_config(config, model, objective)
    ids, predictions, targets = predict(variables, pipeline.eval_dataset(cases, ...))
    metrics = objective.scan_metrics(predictions, targets)

Each record's whole ``image`` (X, Y, Z, C), preprocessed by the config's ``data.preprocess``
(e.g. ``"resample(spacing=(2, 2, 2)), robust_scale, center_crop_or_pad(shape=(96, 96, 96))"``),
goes through the model as a batch of one, in evaluation mode (``train=False``: no dropout,
BatchNorm's running statistics), and the objective's ``predict`` turns the output into the
scan's prediction: class probabilities (K,) or a value in the target's units. A fixed-shape
step in the preprocessing lets one compiled program serve every scan (each new shape
compiles once more).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import jax
import numpy as np

from jaxbrain import models


@dataclasses.dataclass
class ScanPredictor:
    """Per-scan predictions of ``model`` under ``objective`` (its ``predict``), computed in
    ``dtype``."""

    model: Any
    objective: Any
    dtype: Any = np.float32

    @classmethod
    def from_config(cls, config, model, objective) -> "ScanPredictor":
        return cls(model, objective, models.DTYPES[config.get("compute_dtype", "float32")])

    def __post_init__(self):
        model, objective, dtype = self.model, self.objective, self.dtype

        def predict(variables, x):
            return objective.predict(model.apply(variables, x.astype(dtype), train=False))

        self._predict = jax.jit(predict)  # one function object: compiled once per shape

    def scan(self, variables, image) -> np.ndarray:
        """The prediction of one preprocessed scan (X, Y, Z, C)."""
        x = np.asarray(image, np.float32)[None]
        leaf = jax.tree_util.tree_leaves(variables)[0]
        if isinstance(leaf, jax.Array) and isinstance(leaf.sharding, jax.sharding.NamedSharding):
            # parameters placed on a mesh (training): the scan goes whole to every device
            x = jax.device_put(x, jax.sharding.NamedSharding(leaf.sharding.mesh,
                                                             jax.sharding.PartitionSpec()))
        return np.asarray(jax.device_get(self._predict(variables, x)))[0]

    def __call__(self, variables, records: Iterable[dict]
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(scan ids, predictions (N, ...) in the objective's units, targets (N,) float32;
        NaN where a record has no ``target``) of the records, in their order."""
        ids, preds, targets = [], [], []
        for record in records:
            ids.append(str(record["id"]))
            preds.append(self.scan(variables, record["image"]))
            targets.append(float(record["target"]) if "target" in record else np.nan)
        if not ids:
            raise ValueError("no scans to predict")
        return ids, np.stack(preds), np.asarray(targets, np.float32)
