"""Whole-volume prediction: one object used by validation during training and by eval.py,
so that the numbers the two report come from the same code.

    predictor = Predictor.from_config(config, model, objective)
    probs = predictor.probabilities(variables, record["image"])     # (X, Y, Z, K)
    pred, row = segment_case(objective, probs, record, case.label)  # map, its metrics

The model runs window by window (MONAI's layout and blending, see :mod:`.sliding_window`) on
windows of the evaluation ROI (``config.eval.roi``, by default the training ROI
``config.data.roi``); the objective turns logits into probabilities, probabilities into a
label map and, with a ground truth, into the case's metrics. :func:`segment_case` scores the
label map as it is written: taken to the source file's grid and compared with the case's own
label file there, whatever the preprocessing resampled or cropped.

A 2D model (one whose ``spatial_dims`` is 2, e.g. ``dino_seg``) segments a volume slice by
slice: the slices across ``config.eval.slice_axis`` (default 2, axial in canonical RAS) are
one batch of 2D images, each tiled by 2D windows of the ROI (``sw_batch_size`` windows a
model call, from any slices), and the slices' probabilities are stacked back into the
volume, which is then scored and written as any other prediction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.tree_util import Partial

from jaxbrain import models
from jaxbrain.data import nifti
from jaxbrain.inference.sliding_window import sliding_window_inference


def model_dims(model) -> int:
    """The number of spatial axes a model works on: its ``spatial_dims``, 3 without one."""
    return int(getattr(model, "spatial_dims", 3))


def eval_roi(config) -> tuple[int, ...]:
    """The sliding-window size: ``eval.roi`` when a config sets it, else ``data.roi``."""
    roi = config.get("eval", {}).get("roi") or config.data.get("roi")
    if not roi:
        raise ValueError("config: neither eval.roi nor data.roi is set (the sliding-window size)")
    return tuple(int(r) for r in roi)


@dataclasses.dataclass
class Predictor:
    """Sliding-window probabilities of ``model`` under ``objective``'s output activation."""

    model: Any
    objective: Any
    roi: tuple[int, ...]
    overlap: float = 0.5
    mode: str = "gaussian"
    sw_batch_size: int = 2
    dtype: Any = np.float32
    slice_axis: int | None = None  # 2D models: the volume axis whose slices they segment

    @classmethod
    def from_config(cls, config, model, objective) -> "Predictor":
        e = config.get("eval", {})
        axis = int(e.get("slice_axis") if e.get("slice_axis") is not None else 2)
        return cls(model, objective, eval_roi(config), overlap=e.get("overlap", 0.5),
                   mode=e.get("mode", "gaussian"), sw_batch_size=e.get("sw_batch_size", 2),
                   dtype=models.DTYPES[config.get("compute_dtype", "float32")],
                   slice_axis=axis if model_dims(model) == 2 else None)

    def __post_init__(self):
        model, objective, dtype = self.model, self.objective, self.dtype
        if self.slice_axis is not None:
            if self.slice_axis not in (0, 1, 2):
                raise ValueError(f"eval.slice_axis={self.slice_axis}: expected 0, 1 or 2 (a "
                                 "volume axis; 2 is axial)")
            if len(self.roi) != 2:
                raise ValueError(f"eval.roi / data.roi = {self.roi}: a 2D model segments "
                                 "volumes slice by slice with 2D windows; give 2 sizes")

        def predict(variables, windows):
            return objective.probabilities(model.apply(variables, windows.astype(dtype)))

        self._predict = predict  # one function object: the compiled pass is reused

    def probabilities(self, variables, image) -> np.ndarray:
        """(X, Y, Z, C) preprocessed image -> (X, Y, Z, K) float32 probabilities."""
        image = np.asarray(image, np.float32)
        if self.slice_axis is not None:  # the slices are the batch of a 2D model
            slices = np.moveaxis(image, self.slice_axis, 0)
            return np.moveaxis(self._windows(variables, slices), 0, self.slice_axis)
        return self._windows(variables, image[None])[0]

    def _windows(self, variables, image: np.ndarray) -> np.ndarray:
        """(B, *spatial, C) -> (B, *spatial, K): sliding-window probabilities."""
        leaf = jax.tree_util.tree_leaves(variables)[0]
        if isinstance(leaf, jax.Array) and isinstance(leaf.sharding, jax.sharding.NamedSharding):
            # parameters placed on a mesh (training): the image goes whole to every device
            image = jax.device_put(image, jax.sharding.NamedSharding(
                leaf.sharding.mesh, jax.sharding.PartitionSpec()))
        probs = sliding_window_inference(Partial(self._predict, variables), image, self.roi,
                                         overlap=self.overlap, mode=self.mode,
                                         sw_batch_size=self.sw_batch_size)
        return np.asarray(jax.device_get(probs))


def segment_case(objective, probs: np.ndarray, record: dict, label_file: str | None = None
                 ) -> tuple[np.ndarray | None, dict | None]:
    """(the label map of ``probs`` on the record's grid, the case's metrics or None).

    The metrics are those of the map as :func:`jaxbrain.data.nifti.write_volume` writes it:
    with the case's ``label_file``, the map taken to the source file's grid and scored
    against that file's label map at its voxel size (``objective.map_metrics``); without one,
    the map on the record's grid against ``record["label"]`` (None without that either).
    Outputs that make no one label map (several independent sigmoid channels) give None
    for the map and the objective's ``case_metrics`` on the record's grid.
    """
    convention = record.get("labels", "binary")
    geometry = record.get("geometry")
    has_map = getattr(objective, "has_label_map", lambda k: True)(probs.shape[-1])
    pred = objective.label_map(probs, convention) if has_map else None
    if has_map and label_file is not None and geometry is not None \
            and hasattr(objective, "map_metrics"):
        truth, truth_geometry = nifti.read_volume(label_file, dtype=np.int32)
        truth = nifti.to_source(truth, truth_geometry)
        written = nifti.to_source(pred, geometry)
        if written.shape != truth.shape:
            raise nifti.DataError(f"{label_file}: label map of shape {truth.shape}, but the "
                                  f"case's image grid is {written.shape}")
        spacing = tuple(np.sqrt((truth_geometry.source_affine[:3, :3] ** 2).sum(axis=0)))
        return pred, objective.map_metrics(written, truth, convention, spacing,
                                           classes=probs.shape[-1])
    if "label" not in record:
        return pred, None
    return pred, objective.case_metrics(probs, record["label"], convention,
                                        tuple(geometry.spacing) if geometry else None)
