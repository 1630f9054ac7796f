"""Whole-scan supervised objectives: one class (Alzheimer's vs control, sex) or one number
(brain age) per scan, or several such targets at once (:class:`Multitask`: e.g. a synthetic
cohort's age, sex and diagnosis, for supervised pretraining).

Batches hold ``image`` (B, D, H, W, C), which the model reads, and ``target`` (B,) float32:
a class index 0..K-1 (classification) or the value in its own units, e.g. years
(regression). Models output logits (B, K) (classification) or one standardised value per
scan, (B, 1) or (B,) (regression).

Training: :meth:`compute` gives the loss and per-batch metrics (``loss``, ``accuracy`` /
``mae``). Validation and evaluation turn outputs into per-scan predictions with
:meth:`predict` (class probabilities (N, K); values in original units (N,)) and score all
scans at once with :meth:`scan_metrics` (host NumPy, :mod:`jaxbrain.metrics`): AUC and
balanced accuracy are not means of per-batch numbers. ``best_metric`` / ``best_mode`` say
which scan metric picks the best checkpoint and whether higher ("max") or lower ("min") wins.

Settings read off the training data (the loop's optional ``fit`` hook, called once with the
training scans' targets before training and again, on the same scans, by eval.py):
``class_weights="balanced"`` becomes inverse class frequencies; a regression's
``target_mean`` / ``target_std`` left None become the training targets' mean and standard
deviation. ``fit`` returns a new objective (these are frozen dataclasses) and is a pure
function of the targets, so a resumed run and its evaluation get the same objective.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxbrain import metrics as metrics_lib


def _per_scan(name: str, x: jax.Array, batch_size: int | None = None) -> jax.Array:
    """``x`` (B,) or (B, 1) as float32 (B,); other shapes raise, naming ``name``."""
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1 or (batch_size is not None and x.shape[0] != batch_size):
        expected = f"({batch_size},)" if batch_size is not None else "(B,)"
        raise ValueError(f"{name} must be one value per scan, {expected} or (B, 1), "
                         f"got shape {tuple(x.shape)}")
    return x.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Classification:
    """Softmax cross-entropy over ``num_classes`` classes, as PyTorch's
    ``F.cross_entropy(logits, target, weight=class_weights, label_smoothing=eps)``.

    With log-probabilities ``lp = log_softmax(logits)``, class weights ``w`` (ones when
    ``class_weights`` is None) and y_i the class of scan i::

        loss = (1 - eps) * sum_i w[y_i] * -lp[i, y_i] / sum_i w[y_i]
             + eps / K   * sum_i sum_c w[c] * -lp[i, c] / sum_i w[y_i]

    Without weights this is the cross-entropy against ``(1 - eps) * onehot + eps / K``
    averaged over scans. A target that is not a class index in [0, K) makes the loss NaN
    (the training loop then stops and names the step).

    Attributes:
      num_classes: K, the width of the logits (2 for a binary task; class 1 is positive).
      class_weights: one weight per class, None (or "none": all 1), or ``"balanced"``:
        ``N / (K * n_k)`` for class k with n_k of the N training scans (scikit-learn's
        "balanced"), set by :meth:`fit`.
      label_smoothing: eps in [0, 1).
    """

    num_classes: int = 2
    class_weights: tuple[float, ...] | None = None
    label_smoothing: float = 0.0

    best_metric: ClassVar[str] = "auc"
    best_mode: ClassVar[str] = "max"

    def __post_init__(self):
        if int(self.num_classes) < 2:
            raise ValueError(f"objective.num_classes must be >= 2, got {self.num_classes}")
        if isinstance(self.class_weights, str) and self.class_weights.lower() == "none":
            object.__setattr__(self, "class_weights", None)  # as a command line spells None
        if isinstance(self.class_weights, str):
            if self.class_weights != "balanced":
                raise ValueError(f"objective.class_weights: expected None, 'balanced' or one "
                                 f"weight per class, got {self.class_weights!r}")
        elif self.class_weights is not None:
            w = np.asarray(self.class_weights, dtype=np.float64)
            if w.shape != (self.num_classes,) or np.any(w < 0) or not np.all(np.isfinite(w)):
                raise ValueError(f"objective.class_weights must be {self.num_classes} finite "
                                 f"non-negative numbers (one per class), got {self.class_weights}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"objective.label_smoothing must be in [0, 1), got "
                             f"{self.label_smoothing}")

    def fit(self, targets) -> "Classification":
        """This objective with ``class_weights="balanced"`` made numbers from the training
        targets (class indices (N,)); unchanged otherwise. Every class must be present and
        every target a class index below ``num_classes``."""
        y = np.asarray(targets, np.float64).reshape(-1)
        k = self.num_classes
        bad = y[(y != np.round(y)) | (y < 0) | (y >= k)]
        if bad.size:
            raise ValueError(f"training target {bad[0]:g} is not a class index 0..{k - 1} "
                             f"(objective.num_classes={k}); data.classes and "
                             "objective.num_classes must agree")
        if self.class_weights != "balanced":
            return self
        counts = np.bincount(y.astype(np.int64), minlength=k)
        if np.any(counts == 0):
            raise ValueError(f"class_weights='balanced': the training data has no scan of "
                             f"class {int(np.argmin(counts))} (counts per class {counts.tolist()})")
        weights = tuple(float(w) for w in y.size / (k * counts))
        return dataclasses.replace(self, class_weights=weights)

    def _logits(self, outputs: jax.Array) -> jax.Array:
        if outputs.ndim != 2 or outputs.shape[1] != self.num_classes:
            raise ValueError(f"classification needs logits (B, num_classes={self.num_classes}), "
                             f"got shape {tuple(outputs.shape)}")
        return outputs.astype(jnp.float32)

    def probabilities(self, logits: jax.Array) -> jax.Array:
        """Class probabilities (B, K): the softmax of the logits, in float32."""
        return jax.nn.softmax(self._logits(logits), axis=-1)

    def predict(self, outputs: jax.Array) -> jax.Array:
        """Per-scan predictions: class probabilities (B, K) (jittable)."""
        return self.probabilities(outputs)

    def loss_and_metrics(self, logits: jax.Array, target: jax.Array) -> tuple[jax.Array, dict]:
        """Loss and batch metrics (``loss``, ``accuracy``) of logits (B, K), targets (B,)."""
        logits = self._logits(logits)
        target = _per_scan("batch['target']", target, logits.shape[0])
        k = self.num_classes
        if isinstance(self.class_weights, str):
            raise ValueError("objective.class_weights='balanced' is set from the training data by "
                             "fit(targets), which the training loop calls; call it first")
        valid = jnp.all((target >= 0) & (target < k) & (target == jnp.round(target)))
        y = jnp.clip(jnp.round(target), 0, k - 1).astype(jnp.int32)
        log_p = jax.nn.log_softmax(logits, axis=-1)
        w = (jnp.ones((k,), jnp.float32) if self.class_weights is None
             else jnp.asarray(self.class_weights, jnp.float32))
        w_y = w[y]
        nll = -jnp.take_along_axis(log_p, y[:, None], axis=1)[:, 0]
        total = jnp.sum(w_y)
        loss = jnp.sum(w_y * nll) / total
        if self.label_smoothing:
            eps = self.label_smoothing
            smooth = -jnp.sum(log_p * w, axis=-1)
            loss = (1.0 - eps) * loss + eps / k * jnp.sum(smooth) / total
        loss = jnp.where(valid, loss, jnp.nan)
        accuracy = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
        return loss, {"loss": loss, "accuracy": accuracy}

    def compute(self, apply, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        """Loss and metrics of ``apply`` (the model in training mode) on a batch."""
        del key  # no augmentation on device
        return self.loss_and_metrics(apply(batch["image"]), batch["target"])

    def scan_metrics(self, predictions, targets) -> dict[str, float]:
        """Metrics over all scans from probabilities (N, K) and class indices (N,): ``auc``
        (binary: ROC AUC of class 1's probability; K > 2: one-vs-rest macro AUC), ``accuracy``
        and ``balanced_accuracy`` of the most probable class, and for K = 2 ``sensitivity``
        and ``specificity`` (class 1 positive). Conventions: :mod:`jaxbrain.metrics`."""
        probs = np.asarray(predictions, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"predictions must be probabilities (N, num_classes="
                             f"{self.num_classes}), got shape {probs.shape}")
        targets = np.asarray(targets).reshape(-1)
        if targets.shape != probs.shape[:1]:
            raise ValueError(f"targets must be one class index per scan ({probs.shape[0]},), "
                             f"got shape {np.shape(targets)}")
        pred = np.argmax(probs, axis=-1)
        if self.num_classes == 2:
            auc = metrics_lib.roc_auc(targets, probs[:, 1])
        else:
            auc = metrics_lib.roc_auc_ovr(targets, probs)
        out = {"auc": auc, "accuracy": metrics_lib.accuracy(targets, pred),
               "balanced_accuracy": metrics_lib.balanced_accuracy(targets, pred)}
        if self.num_classes == 2:
            out["sensitivity"] = metrics_lib.sensitivity(targets, pred)
            out["specificity"] = metrics_lib.specificity(targets, pred)
        return out


@dataclasses.dataclass(frozen=True)
class Regression:
    """One value per scan, learned standardised: the model predicts
    ``z = (t(target) - target_mean) / target_std`` and is trained with the mean squared
    (``loss="mse"``), absolute (``"l1"``) or Huber (``"huber"``, PyTorch's ``HuberLoss``
    with ``huber_delta``) error of z. ``transform`` t is the identity (``"none"``) or
    ``"log1p"`` (BrainDINO's days-post-stroke target: log(1 + days)). Predictions and
    metrics are in the target's own units (``prediction = t^-1(output * target_std +
    target_mean)``).

    Attributes:
      loss: "mse", "l1" or "huber".
      target_mean, target_std: the standardisation (of t(target)); None is set by
        :meth:`fit` to the training targets' mean and (population) standard deviation, and
        means 0 and 1 for an objective that was never fitted.
      transform: "none" or "log1p" (targets must then be > -1).
      huber_delta: the Huber loss's switch from quadratic to linear (in z units).
    """

    loss: str = "mse"
    target_mean: float | None = None
    target_std: float | None = None
    transform: str = "none"
    huber_delta: float = 1.0

    best_metric: ClassVar[str] = "mae"
    best_mode: ClassVar[str] = "min"

    def __post_init__(self):
        if self.loss not in ("mse", "l1", "huber"):
            raise ValueError(f"objective.loss must be 'mse', 'l1' or 'huber', got {self.loss!r}")
        if self.transform not in ("none", "log1p"):
            raise ValueError(f"objective.transform must be 'none' or 'log1p', got "
                             f"{self.transform!r}")
        if not self.huber_delta > 0:
            raise ValueError(f"objective.huber_delta must be > 0, got {self.huber_delta}")
        if not np.isfinite(self.mean):
            raise ValueError(f"objective.target_mean must be finite, got {self.target_mean}")
        if not (np.isfinite(self.std) and self.std > 0):
            raise ValueError(f"objective.target_std must be finite and > 0, got "
                             f"{self.target_std}")

    @property
    def mean(self) -> float:
        return 0.0 if self.target_mean is None else float(self.target_mean)

    @property
    def std(self) -> float:
        return 1.0 if self.target_std is None else float(self.target_std)

    def fit(self, targets) -> "Regression":
        """This objective with the ``target_mean`` / ``target_std`` left None set from the
        training targets (N,); the ones the config gives are kept."""
        y = np.asarray(targets, np.float64).reshape(-1)
        if y.size == 0 or not np.all(np.isfinite(y)):
            raise ValueError(f"regression fit: expected finite training targets, got {y.size} "
                             f"values{'' if y.size == 0 else ' with NaN or Inf among them'}")
        if self.transform == "log1p":
            if not np.all(y > -1):
                raise ValueError(f"regression fit: transform='log1p' needs targets > -1, got "
                                 f"minimum {y.min():g}")
            y = np.log1p(y)
        changes = {}
        if self.target_mean is None:
            changes["target_mean"] = float(y.mean())
        if self.target_std is None:
            if not y.std() > 0:
                raise ValueError(f"regression fit: every training target is {y[0]:g}; "
                                 "nothing to learn (and no spread to standardise by)")
            changes["target_std"] = float(y.std())
        return dataclasses.replace(self, **changes) if changes else self

    def _forward(self, y):
        return jnp.log1p(y) if self.transform == "log1p" else y

    def _inverse(self, y):
        return jnp.expm1(y) if self.transform == "log1p" else y

    def predict(self, outputs: jax.Array) -> jax.Array:
        """Per-scan predictions in the target's units (B,) (jittable)."""
        return self._inverse(_per_scan("model output", outputs) * self.std + self.mean)

    def loss_and_metrics(self, outputs: jax.Array, target: jax.Array) -> tuple[jax.Array, dict]:
        """Loss (standardised units) and ``mae`` (target units) of outputs and targets (B,)."""
        z_pred = _per_scan("model output", outputs)
        target = _per_scan("batch['target']", target, z_pred.shape[0])
        error = z_pred - (self._forward(target) - self.mean) / self.std
        if self.loss == "mse":
            loss = jnp.mean(error * error)
        elif self.loss == "l1":
            loss = jnp.mean(jnp.abs(error))
        else:
            a, d = jnp.abs(error), self.huber_delta
            loss = jnp.mean(jnp.where(a <= d, 0.5 * error * error, d * (a - 0.5 * d)))
        mae = jnp.mean(jnp.abs(self._inverse(z_pred * self.std + self.mean) - target))
        return loss, {"loss": loss, "mae": mae}

    def compute(self, apply, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        """Loss and metrics of ``apply`` (the model in training mode) on a batch."""
        del key  # no augmentation on device
        return self.loss_and_metrics(apply(batch["image"]), batch["target"])

    def scan_metrics(self, predictions, targets) -> dict[str, float]:
        """Metrics over all scans from predictions and targets (N,), in the target's units:
        ``mae``, ``rmse``, ``pearson_r`` and ``mean_error`` (mean of prediction - target)."""
        mae = metrics_lib.mae(targets, predictions)  # checks both: (N,), finite, same N
        predictions, targets = np.ravel(predictions), np.ravel(targets)
        return {"mae": mae, "rmse": metrics_lib.rmse(targets, predictions),
                "pearson_r": metrics_lib.pearson_r(predictions, targets),
                "mean_error": float(np.mean(predictions.astype(np.float64) - targets))}


@dataclasses.dataclass(frozen=True)
class Multitask:
    """Several per-scan targets from one scan, e.g. a synthetic cohort's known variables (age,
    sex, diagnosis): one model output block per task, the weighted sum of the tasks' losses.

    Batches hold ``target`` (B, T), column t the target of ``tasks[t]`` (a label table read
    with ``data.task = tasks``). The model outputs (B, sum(num_classes)): task t reads the next
    ``num_classes[t]`` columns, one standardised value for a regression (``num_classes[t] ==
    1``: :class:`Regression`, mean squared error of the standardised target) or logits of
    ``num_classes[t] >= 2`` classes (:class:`Classification`). ``loss = sum_t weights[t] *
    loss_t``; metrics ``<task>_loss`` and ``<task>_mae`` (regression, target units) or
    ``<task>_accuracy``.

    Attributes:
      tasks: the tasks' names, in the order of the target columns (``data.task``).
      num_classes: per task, 1 (regression) or the number of classes.
      weights: per task (None: all 1).
      target_mean, target_std: per task, the regression standardisation (None, or None
        entries: set by :meth:`fit` from the training targets; classification entries are
        unused, 0 and 1).
    """

    tasks: tuple[str, ...] = ("age", "sex", "diagnosis")
    num_classes: tuple[int, ...] = (1, 2, 2)
    weights: tuple[float, ...] | None = None
    target_mean: tuple[float | None, ...] | None = None
    target_std: tuple[float | None, ...] | None = None

    def __post_init__(self):
        t = len(self.tasks)
        for name in ("num_classes", "weights", "target_mean", "target_std"):
            value = getattr(self, name)
            if value is not None and len(value) != t:
                raise ValueError(f"objective.{name} has {len(value)} entries for {t} tasks "
                                 f"{tuple(self.tasks)}")
        if t == 0 or any(int(k) < 1 for k in self.num_classes):
            raise ValueError(f"objective.num_classes: one entry >= 1 per task (1: regression), "
                             f"got {self.num_classes}")
        self.heads()  # checks the standardisation

    def heads(self) -> list:
        """Per task, its :class:`Regression` or :class:`Classification` objective."""
        out = []
        for t, k in enumerate(self.num_classes):
            if int(k) == 1:
                mean = None if self.target_mean is None else self.target_mean[t]
                std = None if self.target_std is None else self.target_std[t]
                out.append(Regression(loss="mse", target_mean=mean, target_std=std))
            else:
                out.append(Classification(num_classes=int(k)))
        return out

    @property
    def width(self) -> int:
        return int(sum(int(k) for k in self.num_classes))

    def _targets(self, targets, n_rows=None) -> np.ndarray:
        y = np.asarray(targets, np.float64)
        if y.ndim != 2 or y.shape[1] != len(self.tasks):
            raise ValueError(f"multitask targets must be one column per task {tuple(self.tasks)}"
                             f" (N, {len(self.tasks)}), got shape {y.shape}; set data.task to "
                             "the same tasks")
        return y

    def fit(self, targets) -> "Multitask":
        """The standardisation of each regression task from its training targets; class
        indices of each classification task checked."""
        y = self._targets(targets)
        means, stds = [], []
        for t, head in enumerate(self.heads()):
            fitted = head.fit(y[:, t])
            if isinstance(fitted, Regression):
                means.append(float(fitted.mean))
                stds.append(float(fitted.std))
            else:
                means.append(0.0)
                stds.append(1.0)
        return dataclasses.replace(self, target_mean=tuple(means), target_std=tuple(stds))

    def loss_and_metrics(self, outputs: jax.Array, target: jax.Array) -> tuple[jax.Array, dict]:
        if outputs.ndim != 2 or outputs.shape[1] != self.width:
            raise ValueError(f"multitask needs outputs (B, {self.width}) (num_classes "
                             f"{tuple(self.num_classes)} summed): set model.num_classes="
                             f"{self.width}; got shape {tuple(outputs.shape)}")
        if target.ndim != 2 or target.shape[1] != len(self.tasks):
            raise ValueError(f"batch['target'] must be (B, {len(self.tasks)}) for tasks "
                             f"{tuple(self.tasks)}, got shape {tuple(target.shape)}")
        weights = self.weights or (1.0,) * len(self.tasks)
        total, metrics, start = 0.0, {}, 0
        for t, (name, head) in enumerate(zip(self.tasks, self.heads())):
            k = int(self.num_classes[t])
            loss, m = head.loss_and_metrics(outputs[:, start:start + k], target[:, t])
            start += k
            total = total + float(weights[t]) * loss
            for key, value in m.items():
                metrics[f"{name}_{key}"] = value
        metrics["loss"] = total
        return total, metrics

    def compute(self, apply, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        del key  # no augmentation on device
        return self.loss_and_metrics(apply(batch["image"]), batch["target"])
