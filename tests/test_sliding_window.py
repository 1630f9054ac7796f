"""Sliding-window inference equals MONAI's ``sliding_window_inference`` (constant and Gaussian
blending, several overlaps, non-cubic images and rois, images smaller than the roi), calls the
model with a fixed batch size, compiles once per shape, and runs a real SwinUNETR."""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F
from jax.tree_util import Partial
from monai.inferers import sliding_window_inference as monai_sliding_window

from jaxbrain.inference.sliding_window import (
    importance_map, scan_interval, sliding_window_inference, window_starts)


def _kernel(cin: int, cout: int, seed: int = 1) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).normal(size=(3, 3, 3, cin, cout))).astype(np.float32)


def _ramp(roi: tuple[int, ...], cout: int) -> np.ndarray:
    """A per-window positional ramp (*roi, K), so that the blending weights show in the output."""
    x, y, z = np.meshgrid(*(np.arange(n) / n for n in roi), indexing="ij")
    base = 1 + x + 2 * y + 3 * z
    return np.stack([(k + 1) * base for k in range(cout)], axis=-1).astype(np.float32)


def _conv_ramp(kernel: jax.Array, windows: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(windows, kernel, (1, 1, 1), "SAME",
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return jnp.tanh(y) + jnp.asarray(_ramp(windows.shape[1:-1], kernel.shape[-1]))


def _jax_model(kernel: np.ndarray) -> Callable[[jax.Array], jax.Array]:
    return lambda windows: _conv_ramp(jnp.asarray(kernel), windows)


def _torch_model(kernel: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
    weight = torch.from_numpy(kernel.transpose(4, 3, 0, 1, 2).copy())

    def apply(windows: torch.Tensor) -> torch.Tensor:
        ramp = torch.from_numpy(_ramp(tuple(windows.shape[2:]), kernel.shape[-1]))
        return torch.tanh(F.conv3d(windows, weight, padding=1)) + ramp.permute(3, 0, 1, 2)
    return apply


def _monai(image: np.ndarray, kernel: np.ndarray, roi, **kwargs) -> np.ndarray:
    x = torch.from_numpy(image.transpose(0, 4, 1, 2, 3).copy())
    with torch.no_grad():
        y = monai_sliding_window(x, roi, kwargs.pop("sw_batch_size"), _torch_model(kernel),
                                 **kwargs)
    return y.numpy().transpose(0, 2, 3, 4, 1)


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


CASES = [
    # shape (B, X, Y, Z, C), roi, overlap, mode, sw_batch_size, pad_value
    *[((1, 40, 36, 28, 1), (16, 16, 16), o, m, 3, 0.0)
      for m in ("constant", "gaussian") for o in (0.25, 0.5, 0.6)],
    ((1, 10, 36, 28, 1), (16, 16, 16), 0.5, "constant", 1, 0.0),
    ((1, 10, 36, 28, 1), (16, 16, 16), 0.6, "gaussian", 1, 0.0),
    ((2, 16, 20, 13, 2), (16, 12, 20), 0.25, "gaussian", 3, 0.5),
    ((1, 23, 17, 30, 1), (9, 17, 14), (0.5, 0.25, 0.6), "gaussian", 2, 0.0),
]


@pytest.mark.parametrize("shape,roi,overlap,mode,sw_batch_size,pad_value", CASES)
def test_matches_monai(shape, roi, overlap, mode, sw_batch_size, pad_value):
    image, kernel = _image(shape), _kernel(shape[-1], 2)
    ours = sliding_window_inference(_jax_model(kernel), image, roi, overlap=overlap, mode=mode,
                                    sw_batch_size=sw_batch_size, pad_value=pad_value)
    ref = _monai(image, kernel, roi, overlap=overlap, mode=mode, sw_batch_size=sw_batch_size,
                 cval=pad_value)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("roi,mode", [((16, 12, 9), "gaussian"), ((8, 8, 8), "constant")])
def test_importance_map_matches_monai(roi, mode):
    from monai.data.utils import compute_importance_map
    ref = compute_importance_map(roi, mode=mode, sigma_scale=0.125).numpy()
    np.testing.assert_allclose(np.asarray(importance_map(roi, mode, 0.125)), ref, rtol=1e-6)


@pytest.mark.parametrize("image_size,roi,overlap", [
    ((40, 36, 28), (16, 16, 16), (0.6, 0.6, 0.6)),
    ((16, 20, 33), (16, 7, 5), (0.0, 0.9, 0.25)),
])
def test_window_layout_matches_monai(image_size, roi, overlap):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval
    interval = scan_interval(image_size, roi, overlap)
    assert interval == _get_scan_interval(image_size, roi, 3, overlap)
    ref = [tuple(s.start for s in w) for w in dense_patch_slices(image_size, roi, interval)]
    assert [tuple(c) for c in window_starts(image_size, roi, interval).tolist()] == ref


def test_fixed_batch_and_single_trace():
    seen = []

    def apply(kernel: jax.Array, windows: jax.Array) -> jax.Array:
        seen.append(windows.shape)
        return _conv_ramp(kernel, windows)

    run = functools.partial(sliding_window_inference, roi_size=12, overlap=0.5, mode="gaussian",
                            sw_batch_size=4)
    images = [jnp.asarray(_image((1, 24, 20, 16, 1), seed)) for seed in (0, 1)]
    kernels = [jnp.asarray(_kernel(1, 2, seed)) for seed in (1, 2)]
    closure = functools.partial(apply, kernels[0])
    first = run(closure, images[0])
    traced = len(seen)
    second = run(closure, images[1])
    assert traced > 0 and len(seen) == traced
    assert isinstance(first, jax.Array) and first.shape == (1, 24, 20, 16, 2)
    assert not np.allclose(first, second)

    with_params = [run(Partial(apply, k), images[0]) for k in kernels]
    assert len(seen) == 2 * traced
    np.testing.assert_allclose(with_params[0], first, rtol=1e-6)
    assert not np.allclose(with_params[1], first)
    assert set(seen) == {(4, 12, 12, 12, 1)}


def test_rejects_bad_arguments():
    image = np.zeros((1, 8, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_inference(lambda w: w, image, 4, overlap=1.0)
    with pytest.raises(ValueError, match="mode"):
        sliding_window_inference(lambda w: w, image, 4, mode="cosine")
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window_inference(lambda w: w, image, (4, 4))


def test_swin_unetr_runs():
    from jaxbrain.models import SwinUNETR
    model = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(2, 2, 2, 2),
                      num_heads=(3, 6, 12, 24), downsample="merging")
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 32, 1)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: jnp.asarray(0.05 * rng.normal(size=s.shape), jnp.float32), shapes)
    image = jnp.asarray(_image((1, 40, 48, 32, 1)))
    out = sliding_window_inference(Partial(model.apply, variables), image, 32, sw_batch_size=2,
                                   mode="gaussian")
    assert out.shape == (1, 40, 48, 32, 2)
    assert bool(jnp.all(jnp.isfinite(out)))
