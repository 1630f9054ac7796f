"""Supervised segmentation: Dice (+ BCE) for sigmoid multi-label outputs such as BraTS
[TC, WT, ET], Dice + cross-entropy for softmax outputs (one label per voxel).

The Dice loss is MONAI's ``DiceLoss`` with its defaults: per sample and channel
``1 - (2 * sum(p * g) + 1e-5) / (sum(p) + sum(g) + 1e-5)``, averaged.

Whole-volume predictions (validation during training and eval.py alike) go through
:meth:`Segmentation.label_map` and :meth:`Segmentation.case_metrics`, scored with
:mod:`jaxbrain.metrics` (MONAI's conventions: a case whose target region is empty has a NaN
Dice for that region, left out of the means).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbrain import metrics as metrics_lib
from jaxbrain.data import labels as labels_lib

SMOOTH = 1e-5


def upsampled_outputs(outputs, spatial) -> tuple[jax.Array, ...]:
    """A model's output(s) as a tuple of logits at ``spatial`` size: deep-supervision outputs
    (a tuple, coarse scales after the first) are upsampled trilinearly (half-pixel centres,
    as ``F.interpolate(mode="trilinear", align_corners=False)``)."""
    outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
    out = []
    for o in outputs:
        if tuple(o.shape[1:4]) != tuple(spatial):
            o = jax.image.resize(o.astype(jnp.float32), (o.shape[0], *spatial, o.shape[-1]),
                                 "trilinear", antialias=False)
        out.append(o)
    return tuple(out)


def dice_loss(probs: jax.Array, onehot: jax.Array, include_background: bool = True,
              batch: bool = False) -> jax.Array:
    """Mean soft Dice loss over samples and channels; inputs (B, ..., K). ``batch``: the sums
    run over the batch too (one Dice per channel, nnU-Net's ``batch_dice``, as its 2D
    configurations use: slices without foreground do not each count as a sample)."""
    if not include_background:
        probs, onehot = probs[..., 1:], onehot[..., 1:]
    axes = tuple(range(0 if batch else 1, probs.ndim - 1))
    inter = jnp.sum(probs * onehot, axis=axes)
    denom = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
    return jnp.mean(1.0 - (2.0 * inter + SMOOTH) / (denom + SMOOTH))


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """Segmentation loss and batch metrics.

    Attributes:
      kind: "sigmoid" (labels (B, ..., K) of 0/1 channels, e.g. BraTS regions) or "softmax"
        (labels (B, ...) of class indices; logits (B, ..., K) include background).
      dice: weight of the Dice loss.
      ce: weight of binary (sigmoid) or categorical (softmax) cross-entropy.
      threshold: sigmoid probability above which a voxel counts as positive in metrics.
      channels: names of the output channels in metric names (default: their indices).
      deep_supervision: weights of a deep-supervision model's outputs (full size first; the
        coarse ones are upsampled to the label size), normalised to sum 1; default 1, 1/2,
        1/4, ... Metrics are those of the full-size output.
      batch_dice: the Dice loss sums over the whole batch (:func:`dice_loss`), for 2D slices.
    """

    kind: str = "sigmoid"
    dice: float = 1.0
    ce: float = 0.0
    threshold: float = 0.5
    channels: tuple[str, ...] | None = None
    deep_supervision: tuple[float, ...] | None = None
    regions: str | None = None
    batch_dice: bool = False

    def __post_init__(self):
        if self.kind not in ("sigmoid", "softmax"):
            raise ValueError(f"objective.kind must be 'sigmoid' or 'softmax', got {self.kind!r}")
        if self.regions not in (None, "brats"):
            raise ValueError(f"objective.regions must be None or 'brats', got {self.regions!r}")
        if self.regions and self.kind != "sigmoid":
            raise ValueError("objective.regions='brats' needs kind='sigmoid' (one channel per "
                             "overlapping region)")

    # -- whole volumes (host NumPy): the predictions and metrics the reports show ----------

    def has_label_map(self, channels: int) -> bool:
        """Whether ``channels`` outputs make one label map: softmax classes, BraTS regions or
        one sigmoid channel (several independent sigmoid channels do not)."""
        return self.kind == "softmax" or self.regions == "brats" or channels == 1

    def label_map(self, probs: np.ndarray, convention: str = "binary") -> np.ndarray:
        """(X, Y, Z, K) probabilities -> uint8 label map in the data's own convention (BraTS
        regions, nested ET in TC in WT, back to 1/2/4 (2021) or 1/2/3 (2023) labels:
        :func:`jaxbrain.data.labels.regions_to_brats`). The map eval.py writes and the one
        :meth:`case_metrics` scores."""
        probs = np.asarray(probs)
        if self.kind == "softmax":
            return np.argmax(probs, -1).astype(np.uint8)
        if self.regions == "brats":
            return labels_lib.regions_to_brats(probs, convention, self.threshold)
        if not self.has_label_map(probs.shape[-1]):
            raise ValueError(f"{probs.shape[-1]} independent sigmoid channels have no single "
                             "label map: set objective.regions='brats' (nested BraTS regions) "
                             "or kind='softmax'")
        return (probs[..., 0] > self.threshold).astype(np.uint8)

    def case_metrics(self, probs: np.ndarray, label: np.ndarray, convention: str = "binary",
                     spacing=None) -> dict[str, float]:
        """Metrics of one case from its probabilities and ground-truth label map (X, Y, Z):
        :meth:`map_metrics` of :meth:`label_map`, the map that is written, so that the file
        and the numbers agree (several independent sigmoid channels, which have no one map:
        the Dice of each channel thresholded)."""
        probs, label = np.asarray(probs), np.asarray(label)
        if self.has_label_map(probs.shape[-1]):
            return self.map_metrics(self.label_map(probs, convention), label, convention,
                                    spacing, classes=probs.shape[-1])
        if label.ndim == probs.ndim and label.shape[-1] == 1:
            label = label[..., 0]
        pred = (probs > self.threshold).astype(np.uint8)  # several independent sigmoid channels
        dice = metrics_lib.dice_per_channel(pred, label)
        names = self.channels or [str(c) for c in range(probs.shape[-1])]
        out = {f"dice_{names[c]}": float(d) for c, d in enumerate(dice)}
        out["dice_mean"] = metrics_lib.nanmean(out.values())
        return out

    def map_metrics(self, pred: np.ndarray, label: np.ndarray, convention: str = "binary",
                    spacing=None, classes: int | None = None) -> dict[str, float]:
        """Metrics of a label map as :meth:`label_map` makes it (X, Y, Z) against the
        ground-truth label map, on one grid of voxel size ``spacing``.

        BraTS regions: Dice and HD95 of TC, WT, ET (the regions of each map) and
        ``dice_mean``. One sigmoid channel: Dice, HD95, lesion-wise F1 and volumes. Softmax:
        Dice of each foreground class (``classes`` of them with background) and
        ``dice_mean``. Empty targets follow :mod:`jaxbrain.metrics` (NaN, skipped by the
        means).
        """
        pred, label = np.asarray(pred), np.asarray(label)
        if label.ndim == pred.ndim + 1 and label.shape[-1] == 1:
            label = label[..., 0]
        if self.regions == "brats":
            return metrics_lib.brats_region_metrics(
                labels_lib.brats_to_regions(pred, convention),
                labels_lib.brats_to_regions(label, convention), spacing=spacing)
        if self.kind == "softmax":
            k = classes or len(self.channels or ()) or int(max(pred.max(), label.max())) + 1
            dice = metrics_lib.dice_per_channel(np.eye(k, dtype=np.uint8)[pred][..., 1:],
                                                np.eye(k, dtype=np.uint8)[label][..., 1:])
            names = self.channels or [str(c) for c in range(k)]
            out = {f"dice_{names[c + 1]}": float(d) for c, d in enumerate(dice)}
            out["dice_mean"] = metrics_lib.nanmean(out.values())
            return out
        out = metrics_lib.binary_metrics(pred > 0, label > 0, spacing=spacing)
        return {**out, "dice_mean": out["dice"]}

    def targets(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """Labels as float one-hot / multi-label channels matching ``logits``."""
        if self.kind == "softmax":
            return jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
        if labels.ndim == logits.ndim - 1 and logits.shape[-1] == 1:  # one binary channel
            labels = labels[..., None]
        if labels.shape != logits.shape:
            raise ValueError(f"sigmoid segmentation needs labels shaped like the logits "
                             f"{logits.shape}, got {labels.shape}")
        return labels.astype(jnp.float32)

    def probabilities(self, logits: jax.Array) -> jax.Array:
        logits = logits.astype(jnp.float32)
        return jax.nn.sigmoid(logits) if self.kind == "sigmoid" else jax.nn.softmax(logits, -1)

    def compute(self, apply, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        """Loss and metrics of ``apply`` (the model in training mode) on a batch."""
        del key  # no augmentation on device
        return self.loss(apply(batch["image"]), batch["label"])

    def loss(self, logits, labels: jax.Array) -> tuple[jax.Array, dict]:
        if isinstance(logits, (tuple, list)):
            outputs = upsampled_outputs(logits, labels.shape[1:4])
            weights = self.deep_supervision or tuple(0.5 ** i for i in range(len(outputs)))
            if len(weights) != len(outputs):
                raise ValueError(f"objective.deep_supervision has {len(weights)} weights for "
                                 f"{len(outputs)} outputs")
            parts = [self.loss(o, labels) for o in outputs]
            loss = sum(w * p[0] for w, p in zip(weights, parts)) / sum(weights)
            return loss, {**parts[0][1], "loss": loss}
        logits = logits.astype(jnp.float32)
        target = self.targets(logits, labels)
        probs = self.probabilities(logits)
        terms = {}
        if self.dice:
            terms["dice_loss"] = dice_loss(probs, target, batch=self.batch_dice)
        if self.ce:
            if self.kind == "sigmoid":
                terms["ce_loss"] = optax.sigmoid_binary_cross_entropy(logits, target).mean()
            else:
                terms["ce_loss"] = optax.softmax_cross_entropy(logits, target).mean()
        loss = self.dice * terms.get("dice_loss", 0.0) + self.ce * terms.get("ce_loss", 0.0)
        return loss, {"loss": loss, **terms, **self.metrics(probs, target)}

    def metrics(self, probs: jax.Array, target: jax.Array) -> dict:
        """Hard Dice per channel over the batch (channels without any positive voxel in both
        prediction and target count as 1)."""
        if self.kind == "sigmoid":
            pred = (probs > self.threshold).astype(jnp.float32)
        else:
            pred = jax.nn.one_hot(jnp.argmax(probs, -1), probs.shape[-1], dtype=jnp.float32)
        axes = tuple(range(pred.ndim - 1))
        inter = jnp.sum(pred * target, axis=axes)
        denom = jnp.sum(pred, axis=axes) + jnp.sum(target, axis=axes)
        dice = jnp.where(denom > 0, 2 * inter / jnp.maximum(denom, 1), 1.0)
        first = 0 if self.kind == "sigmoid" else 1  # softmax: skip background
        names = self.channels or [str(k) for k in range(dice.shape[0])]
        out = {f"dice_{names[k]}": dice[k] for k in range(first, dice.shape[0])}
        out["dice_mean"] = jnp.mean(dice[first:])
        return out
