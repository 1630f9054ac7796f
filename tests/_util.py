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


# ----------------------------------------------------------------------------------------
# timm without torchvision: no torchvision wheel matches the CPU torch, and timm's package
# reads a few torchvision names at import time that its ViT, ResNet and DenseNet never use.


class _Placeholder(type):
    """Stands in for any torchvision name read while timm imports (a class such as
    ``FrozenBatchNorm2d``, an enum member such as ``InterpolationMode.BILINEAR``); its
    attributes stand in too."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{cls.__name__}.{name}", (), {})


class _PlaceholderModule(type(functools)):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{self.__name__}.{name}", (), {})


class _TorchvisionFinder:
    """An import finder answering ``torchvision`` and its submodules with placeholder modules."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision" and not name.startswith("torchvision."):
            return None
        import importlib.machinery
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


@functools.lru_cache(maxsize=None)
def timm_module(name: str):
    """``timm.models.<name>`` (timm's own code, e.g. "vision_transformer", "resnet",
    "densenet"). Without torchvision, placeholders answer its imports while timm's package
    loads and are removed right after, so nothing else sees a torchvision. Skips the test
    when timm is not installed (``pip install --no-deps timm``)."""
    import importlib
    import importlib.util
    import sys
    import pytest
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (pip install --no-deps timm: its ViT, ResNet and "
                    "DenseNet need no torchvision)")
    finder = None
    if importlib.util.find_spec("torchvision") is None:
        finder = _TorchvisionFinder()
        sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(f"timm.models.{name}")
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
            for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[mod]


__all__ = ["from_torch_output", "head_volume", "jitted_apply", "numpy_state", "random_params",
           "rel_l2", "timm_module", "to_torch_input", "torch_state"]
