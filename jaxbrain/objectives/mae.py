"""Masked-autoencoder pretraining (MAE / VideoMAE): reconstruct masked patches from visible ones.

Per step and per sample, ``round(mask_ratio * N)`` of the N patches of the crop are masked,
chosen uniformly without replacement from the step's key (MAE's random masking: the order of
independent uniform noise, the first ``N - round(mask_ratio * N)`` kept). The model
(:class:`jaxbrain.models.mae.MAE`) gets the visible indices as ``keep`` and predicts every
patch's pixels; the loss is the mean squared error over the masked patches only::

    loss = sum_i,p m[i, p] * mean_j (pred[i, p, j] - t[i, p, j]) ** 2 / sum_i,p m[i, p]

with m = 1 on masked patches and t the patch's pixels (:func:`~jaxbrain.models.vit.patchify`
order), normalised per patch when ``norm_pix_loss`` (MAE's choice: minus the patch mean,
divided by sqrt(unbiased variance + 1e-6)). ``patch_size`` must be the model's.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbrain.models.vit import patchify


def num_masked(n: int, ratio: float) -> int:
    """round(ratio * n), at least 1 and at most n - 1 (one patch stays visible)."""
    return int(min(max(round(ratio * n), 1), n - 1))


def random_masking(key: jax.Array, batch: int, n: int, ratio: float):
    """(keep (B, K) visible patch indices, mask (B, N) 1.0 on masked patches), exactly
    ``num_masked(n, ratio)`` masked per sample."""
    masked = num_masked(n, ratio)
    order = jnp.argsort(jax.random.uniform(key, (batch, n)), axis=1)
    keep = order[:, :n - masked].astype(jnp.int32)
    mask = jnp.ones((batch, n), jnp.float32)
    mask = jax.vmap(lambda m, k: m.at[k].set(0.0))(mask, keep)
    return keep, mask


def patch_targets(x: jax.Array, patch: Sequence[int], norm_pix_loss: bool) -> jax.Array:
    """(B, *spatial, C) -> per-patch targets (B, N, prod(patch) * C), float32."""
    t = patchify(x.astype(jnp.float32), tuple(patch))
    t = t.reshape(t.shape[0], -1, t.shape[-1])
    if norm_pix_loss:
        mean = t.mean(-1, keepdims=True)
        var = t.var(-1, keepdims=True, ddof=1)
        t = (t - mean) / jnp.sqrt(var + 1e-6)
    return t


@dataclasses.dataclass(frozen=True)
class MAE:
    """Masked patch reconstruction (see the module docstring)."""

    patch_size: int | tuple[int, ...] = 16
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True

    def __post_init__(self):
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"objective.mask_ratio must be in (0, 1), got {self.mask_ratio}")

    def patch(self, ndim: int) -> tuple[int, ...]:
        p = self.patch_size
        p = (int(p),) * ndim if isinstance(p, (int, np.integer)) else tuple(int(v) for v in p)
        if len(p) != ndim:
            raise ValueError(f"objective.patch_size {self.patch_size} has {len(p)} axes, the "
                             f"images {ndim}")
        return p

    def masking(self, x: jax.Array, key: jax.Array):
        """(keep, mask) for a batch of images (B, *spatial, C)."""
        patch = self.patch(x.ndim - 2)
        grid = [s // p for s, p in zip(x.shape[1:-1], patch)]
        n = int(np.prod(grid))
        if n < 2:
            raise ValueError(f"objective mae: crops {x.shape[1:-1]} hold {n} patch of "
                             f"{patch}; masking needs at least 2")
        return random_masking(key, x.shape[0], n, self.mask_ratio)

    def loss(self, pred: jax.Array, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict]:
        target = patch_targets(x, self.patch(x.ndim - 2), self.norm_pix_loss)
        if pred.shape != target.shape:
            raise ValueError(f"objective mae: model predicts {tuple(pred.shape)} but the patch "
                             f"targets are {tuple(target.shape)}; objective.patch_size "
                             f"{self.patch_size} must be the model's patch_size")
        per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
        loss = jnp.sum(per_patch * mask) / jnp.sum(mask)
        visible = jnp.sum(per_patch * (1 - mask)) / jnp.maximum(jnp.sum(1 - mask), 1.0)
        return loss, {"loss": loss, "reconstruction_loss": loss, "visible_loss": visible,
                      "mask_ratio": jnp.mean(mask)}

    def compute(self, apply, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        x = batch["image"]
        keep, mask = self.masking(x, key)
        return self.loss(apply(x, keep=keep), x, mask)
