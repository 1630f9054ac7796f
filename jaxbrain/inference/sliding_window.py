"""Sliding-window inference over channels-last volumes, blended exactly as MONAI blends.

``sliding_window_inference(apply_fn, image, roi_size)`` tiles a (B, X, Y, Z, C) image with
windows laid out like MONAI's ``sliding_window_inference`` (``dense_patch_slices`` with its
scan intervals), runs ``apply_fn`` on ``sw_batch_size`` windows at a time and averages the
overlapping predictions with constant or Gaussian importance weights in float32. An image
smaller than the window along an axis is padded symmetrically with ``pad_value`` and the
prediction is cropped back to the image.

The whole pass is one jitted computation per image shape, dtype and window configuration:
windows are cut with ``dynamic_slice`` and summed with ``dynamic_update_slice`` inside a
``lax.scan`` over groups of ``sw_batch_size`` windows, so only one group is ever held in memory
and ``apply_fn`` always sees the same batch size (the last group is filled with copies whose
predictions are dropped). Repeated calls with the same ``apply_fn`` object and shapes reuse
the compiled computation. Pass ``jax.tree_util.Partial(model.apply, variables)`` to make the
variables inputs of that computation rather than constants baked into it:

    predict = Partial(model.apply, variables)
    logits = sliding_window_inference(predict, image, (96, 96, 96), mode="gaussian")
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax
from jax.tree_util import Partial

ApplyFn = Callable[[jax.Array], jax.Array]

MODES = ("constant", "gaussian")
MIN_WEIGHT = 1e-3


def _per_axis(value: float | Sequence[float], ndim: int, name: str) -> tuple:
    values = tuple(np.ravel(value)) if np.ndim(value) else (value,) * ndim
    if len(values) != ndim:
        raise ValueError(f"{name}={value!r}: need one value or {ndim} values")
    return values


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int],
                  overlap: Sequence[float]) -> tuple[int, ...]:
    """MONAI's step between windows per axis: ``int(roi * (1 - overlap))``, at least 1, or a
    single window where the roi spans the (padded) image."""
    return tuple(r if r == s else max(int(r * (1 - o)), 1)
                 for s, r, o in zip(image_size, roi_size, overlap))


def _axis_starts(size: int, roi: int, step: int) -> list[int]:
    count = -(-(size - roi) // step) + 1
    return [min(k * step, size - roi) for k in range(count)]


def window_starts(image_size: Sequence[int], roi_size: Sequence[int],
                  interval: Sequence[int]) -> np.ndarray:
    """Start corners (n, ndim) of MONAI's windows, last axis fastest; along each axis the
    windows step by ``interval`` until one reaches the border, and that one ends on it."""
    axes = [_axis_starts(s, r, i) for s, r, i in zip(image_size, roi_size, interval)]
    grids = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=-1)


def importance_map(roi_size: Sequence[int], mode: str = "constant",
                   sigma_scale: float | Sequence[float] = 0.125) -> jax.Array:
    """MONAI's ``compute_importance_map``: ones, or the product of 1-D Gaussians
    ``exp(-x**2 / (2 * sigma**2))`` with ``x`` measured from the window centre and
    ``sigma = sigma_scale * roi`` (not rescaled, so its peak is below 1 for even sizes);
    either map is then floored at ``MIN_WEIGHT``."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: must be one of {MODES}")
    if mode == "constant":
        return jnp.ones(tuple(roi_size), jnp.float32)
    weights = jnp.ones((), jnp.float32)
    for n, scale in zip(roi_size, _per_axis(sigma_scale, len(roi_size), "sigma_scale")):
        x = jnp.arange(n, dtype=jnp.float32) - (n - 1) / 2
        weights = weights[..., None] * jnp.exp(x ** 2 / (-2 * (scale * n) ** 2))
    return jnp.maximum(weights, MIN_WEIGHT)


def _window_groups(batch: int, starts: np.ndarray,
                   sw_batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch index, start corner and validity of each window slot, shaped (groups, slots, ...),
    in MONAI's order (image-major); the slots after the last window repeat it and are invalid."""
    total = batch * len(starts)
    slots = -(-total // sw_batch_size) * sw_batch_size
    index = np.minimum(np.arange(slots), total - 1)
    shape = (-1, sw_batch_size)
    return ((index // len(starts)).reshape(shape),
            starts[index % len(starts)].reshape(*shape, starts.shape[1]),
            (np.arange(slots) < total).reshape(shape))


def _add_window(buffer: jax.Array, patch: jax.Array, start: Sequence) -> jax.Array:
    current = lax.dynamic_slice(buffer, tuple(start), patch.shape)
    return lax.dynamic_update_slice(buffer, current + patch, tuple(start))


def _output_channels(apply_fn: ApplyFn, windows: jax.ShapeDtypeStruct) -> int:
    out = jax.eval_shape(apply_fn, windows)
    if out.shape[:-1] != windows.shape[:-1]:
        raise ValueError(f"apply_fn maps windows {windows.shape} to {out.shape}; "
                         "it must keep the batch and spatial sizes")
    return out.shape[-1]


def _blend_windows(apply_fn: ApplyFn, image: jax.Array, starts: np.ndarray,
                   weights: jax.Array, sw_batch_size: int) -> jax.Array:
    """Sum over all windows of ``weights * apply_fn(window)``, a (B, X, Y, Z, K) float32 array."""
    roi, channels = weights.shape, image.shape[-1]
    spec = jax.ShapeDtypeStruct((sw_batch_size, *roi, channels), image.dtype)
    out = jnp.zeros((*image.shape[:-1], _output_channels(apply_fn, spec)), jnp.float32)

    def cut(b: jax.Array, corner: jax.Array) -> jax.Array:
        return lax.dynamic_slice(image, (b, *corner, 0), (1, *roi, channels))[0]

    def step(out: jax.Array, group: tuple) -> tuple[jax.Array, None]:
        batch_index, corners, valid = group
        preds = apply_fn(jax.vmap(cut)(batch_index, corners)).astype(jnp.float32)
        preds = preds * weights[..., None]
        for k in range(sw_batch_size):
            patch = jnp.where(valid[k], preds[k], 0.0)[None]
            out = _add_window(out, patch, (batch_index[k], *corners[k], 0))
        return out, None

    groups = tuple(map(jnp.asarray, _window_groups(image.shape[0], starts, sw_batch_size)))
    return lax.scan(step, out, groups)[0]


def _weight_sum(image_size: Sequence[int], starts: np.ndarray, weights: jax.Array) -> jax.Array:
    """Sum of the importance maps of all windows of one image, (X, Y, Z)."""
    corners = jnp.asarray(starts)

    def add(i: jax.Array, total: jax.Array) -> jax.Array:
        return _add_window(total, weights, tuple(corners[i]))

    return lax.fori_loop(0, len(starts), add, jnp.zeros(tuple(image_size), jnp.float32))


@functools.partial(jax.jit, static_argnames=("roi_size", "overlap", "mode", "sigma_scale",
                                             "sw_batch_size"))
def _sliding_window(apply_fn: Partial, image: jax.Array, pad_value: float | jax.Array, *,
                    roi_size: tuple[int, ...], overlap: tuple[float, ...], mode: str,
                    sigma_scale: tuple[float, ...], sw_batch_size: int) -> jax.Array:
    """Pad, blend all windows, normalise by the summed weights and crop back to the image."""
    spatial = image.shape[1:-1]
    before = [max(r - s, 0) // 2 for s, r in zip(spatial, roi_size)]
    after = [max(r - s, 0) - b for s, r, b in zip(spatial, roi_size, before)]
    widths = [(0, 0), *zip(before, after), (0, 0)]
    padded = jnp.pad(image, widths, constant_values=jnp.asarray(pad_value, image.dtype))
    size = padded.shape[1:-1]
    starts = window_starts(size, roi_size, scan_interval(size, roi_size, overlap))
    weights = importance_map(roi_size, mode, sigma_scale)
    blended = (_blend_windows(apply_fn, padded, starts, weights, sw_batch_size)
               / _weight_sum(size, starts, weights)[None, ..., None])
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial))
    return blended[(slice(None), *crop, slice(None))]


def sliding_window_inference(
        apply_fn: ApplyFn, image: jax.Array | np.ndarray, roi_size: int | Sequence[int], *,
        overlap: float | Sequence[float] = 0.5, mode: str = "constant",
        sigma_scale: float | Sequence[float] = 0.125, sw_batch_size: int = 4,
        pad_value: float = 0.0) -> jax.Array | np.ndarray:
    """Predict a whole (B, X, Y, Z, C) image window by window, as MONAI's
    ``sliding_window_inference`` does on the channels-first layout.

    ``apply_fn`` maps windows (sw_batch_size, *roi_size, C) to predictions
    (sw_batch_size, *roi_size, K) and is always called with exactly ``sw_batch_size`` windows.
    ``overlap`` and ``sigma_scale`` take one value or one per spatial axis; ``mode`` is
    ``"constant"`` or ``"gaussian"``. Returns the blended float32 prediction (B, X, Y, Z, K),
    as a NumPy array for a NumPy image and as a jax array otherwise.
    """
    ndim = image.ndim - 2
    roi = tuple(int(r) for r in _per_axis(roi_size, ndim, "roi_size"))
    overlaps = tuple(float(o) for o in _per_axis(overlap, ndim, "overlap"))
    if any(r < 1 for r in roi):
        raise ValueError(f"roi_size={roi_size!r}: sizes must be positive")
    if any(not 0 <= o < 1 for o in overlaps):
        raise ValueError(f"overlap={overlap!r}: must be in [0, 1)")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: must be one of {MODES}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size={sw_batch_size}: must be positive")
    fn = apply_fn if isinstance(apply_fn, Partial) else Partial(apply_fn)
    out = _sliding_window(
        fn, jnp.asarray(image), pad_value, roi_size=roi, overlap=overlaps, mode=mode,
        sigma_scale=tuple(float(s) for s in _per_axis(sigma_scale, ndim, "sigma_scale")),
        sw_batch_size=int(sw_batch_size))
    return np.asarray(out) if isinstance(image, np.ndarray) else out
