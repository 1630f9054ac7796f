"""Contrastive pretraining of 3D CNNs (SimCLR, Chen et al., 2020) on unlabeled scans.

Each scan of the batch gives two views, made on device inside the jitted step, vectorised
over the batch, each view from its own key (so the two differ):

1. a random crop of ``crop`` times each spatial axis (rounded; the same static size for
   every view, the offset uniform per sample);
2. a flip of each axis in ``flip_axes`` with probability ``flip_prob``;
3. intensity: ``x * s + t`` with s uniform in [1 - ``intensity_scale``, 1 +
   ``intensity_scale``] and t uniform in [-``intensity_shift``, ``intensity_shift``] per
   sample, plus Gaussian noise of standard deviation ``noise_std``.

Both views of all scans go through the model in one pass (BatchNorm statistics over 2B
crops); the model (``contrastive_<cnn>``, :mod:`jaxbrain.models.contrastive`) returns
projections (2B, F). The loss is NT-Xent (:func:`jaxbrain.objectives.ssl.nt_xent`, cosine
similarity, ``temperature``) with the other 2N - 1 projections as negatives: N the global
batch (``negatives="global"``) or each device's samples (``"local"``). ``accuracy`` is the
fraction of the 2N projections whose most similar other projection is their partner view.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxbrain.objectives.ssl import nt_xent


def crop_shape(spatial, crop: float) -> tuple[int, ...]:
    return tuple(max(1, int(round(crop * n))) for n in spatial)


def augment_one(x: jax.Array, key: jax.Array, *, size, flip_axes, flip_prob: float,
                intensity_scale: float, intensity_shift: float, noise_std: float) -> jax.Array:
    """One view of one sample (*spatial, C)."""
    spatial = x.shape[:-1]
    k_crop, k_flip, k_scale, k_shift, k_noise = jax.random.split(key, 5)
    starts = [jax.random.randint(jax.random.fold_in(k_crop, a), (), 0, n - s + 1)
              for a, (n, s) in enumerate(zip(spatial, size))]
    v = jax.lax.dynamic_slice(x, (*starts, 0), (*size, x.shape[-1]))
    flips = jax.random.bernoulli(k_flip, flip_prob, (len(flip_axes),))
    for i, axis in enumerate(flip_axes):
        v = jnp.where(flips[i], jnp.flip(v, axis), v)
    v = v.astype(jnp.float32)
    scale = jax.random.uniform(k_scale, (), minval=1 - intensity_scale, maxval=1 + intensity_scale)
    shift = jax.random.uniform(k_shift, (), minval=-intensity_shift, maxval=intensity_shift)
    v = v * scale + shift
    if noise_std:
        v = v + noise_std * jax.random.normal(k_noise, v.shape)
    return v


@dataclasses.dataclass(frozen=True)
class Contrastive:
    """Two augmented views per scan, NT-Xent over their projections (module docstring)."""

    temperature: float = 0.1
    negatives: str = "global"
    crop: float = 0.75
    flip_axes: tuple[int, ...] = (0, 1, 2)
    flip_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.05
    shards: int = 1  # devices the batch is split over (set by the training loop)

    def __post_init__(self):
        if self.negatives not in ("global", "local"):
            raise ValueError(f"objective.negatives: expected 'global' or 'local', got "
                             f"{self.negatives!r}")
        if not 0.0 < self.crop <= 1.0:
            raise ValueError(f"objective.crop must be in (0, 1] (a fraction of each axis), "
                             f"got {self.crop}")
        if not self.temperature > 0:
            raise ValueError(f"objective.temperature must be > 0, got {self.temperature}")

    def for_mesh(self, batch_shards: int) -> "Contrastive":
        return dataclasses.replace(self, shards=batch_shards)

    def model_input(self, spec: dict) -> jax.ShapeDtypeStruct:
        """The model sees crops of ``crop`` times the data's size."""
        x = spec["image"]
        size = crop_shape(x.shape[1:-1], self.crop)
        return jax.ShapeDtypeStruct((x.shape[0], *size, x.shape[-1]), x.dtype)

    def views(self, x: jax.Array, key: jax.Array) -> jax.Array:
        """Two views of every sample of (B, *spatial, C), interleaved: (B, 2, *crop, C)."""
        spatial = x.shape[1:-1]
        bad = [a for a in self.flip_axes if not 0 <= a < len(spatial)]
        if bad:
            raise ValueError(f"objective.flip_axes {self.flip_axes}: axis {bad[0]} is not one "
                             f"of the {len(spatial)} spatial axes")
        kw = dict(size=crop_shape(spatial, self.crop), flip_axes=tuple(self.flip_axes),
                  flip_prob=self.flip_prob, intensity_scale=self.intensity_scale,
                  intensity_shift=self.intensity_shift, noise_std=self.noise_std)
        b = x.shape[0]
        keys = jax.random.split(key, 2 * b).reshape(b, 2)
        one = lambda v, k: augment_one(v, k, **kw)  # noqa: E731
        return jax.vmap(lambda v, ks: jax.vmap(lambda k: one(v, k))(ks))(x, keys)

    def loss(self, z: jax.Array) -> tuple[jax.Array, dict]:
        """NT-Xent of projections (2B, F), the views of a scan adjacent."""
        z = z.astype(jnp.float32).reshape(-1, 2, z.shape[-1])
        groups = self.shards if self.negatives == "local" else 1
        loss = nt_xent(z[:, 0], z[:, 1], self.temperature, groups)
        flat = z.reshape(-1, z.shape[-1])
        flat = flat / jnp.maximum(jnp.linalg.norm(flat, axis=-1, keepdims=True), 1e-12)
        sim = flat @ flat.T
        m = sim.shape[0]
        sim = jnp.where(jnp.eye(m, dtype=bool), -jnp.inf, sim)
        partner = jnp.arange(m) ^ 1  # rows 2i and 2i + 1 are one scan's views
        accuracy = jnp.mean(jnp.argmax(sim, -1) == partner)
        return loss, {"loss": loss, "contrastive_loss": loss, "accuracy": accuracy}

    def compute(self, apply, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        x = batch["image"]
        views = self.views(x, key)
        z = apply(views.reshape((-1,) + views.shape[2:]))
        return self.loss(z)
