"""Helpers shared by the tests: random Flax parameters, torch <-> NumPy state dicts, layouts."""

from __future__ import annotations

import functools

import numpy as np
import jax
from flax import traverse_util

from jaxbrain.convert.core import target_shapes
from jaxbrain.convert import family_of


def random_params(model, seed: int = 0) -> dict:
    """Random parameters of the right shapes with sensible scales (not the model's own init,
    so that export tests start from values no PyTorch initialiser produced)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in target_shapes(model, family_of(model)).items():
        shape = tuple(leaf.shape)
        name = path[-1]
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            a = rng.normal(0, 1 / np.sqrt(fan_in), shape)
        elif name == "scale":
            a = 1 + 0.1 * rng.normal(size=shape)
        elif name == "bias":
            a = 0.1 * rng.normal(size=shape)
        else:
            a = 0.05 * rng.normal(size=shape)
        out[path] = a.astype(np.float32)
    return traverse_util.unflatten_dict(out)


def torch_state(state: dict):
    import torch
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def numpy_state(module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def to_torch_input(x: np.ndarray):
    """(B, D, H, W, C) NumPy -> (B, C, D, H, W) torch tensor."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))


def from_torch_output(y) -> np.ndarray:
    return y.detach().numpy().transpose(0, 2, 3, 4, 1)


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@functools.lru_cache(maxsize=None)
def jitted_apply(model):
    """One compiled forward per model configuration (Flax modules hash by their fields)."""
    return jax.jit(lambda params, x: model.apply({"params": params}, x))


def head_volume(shape, channels: int, seed: int = 0) -> np.ndarray:
    """A smooth head-like test input, (1, D, H, W, C): an ellipsoid with noise per channel."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(sum(g ** 2 for g in grids))
    base = np.clip(1.2 - r, 0, 1)
    x = np.stack([base * (0.5 + 0.5 * c) + 0.1 * rng.normal(size=shape) for c in range(channels)], -1)
    return x[None].astype(np.float32)


def timm_module(name: str):
    """``timm.models.<name>`` through :func:`jaxbrain.convert.timm_import.timm_module`
    (placeholders answer timm's torchvision imports while it loads); skips the test when timm
    is not installed (``pip install --no-deps timm``)."""
    import pytest
    from jaxbrain.convert.timm_import import timm_module as load
    try:
        return load(name)
    except ImportError as e:
        pytest.skip(str(e))


__all__ = ["from_torch_output", "head_volume", "jitted_apply", "numpy_state", "random_params",
           "rel_l2", "timm_module", "to_torch_input", "torch_state"]
