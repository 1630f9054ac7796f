"""timm without torchvision: building timm's 2D ViT, ResNet and DenseNet (the sources of
:mod:`jaxbrain.convert.inflate`) where no torchvision is installed.

No torchvision wheel may match the installed torch (a CPU build, say), and timm's package
reads a few torchvision names at import time that its ViT, ResNet and DenseNet never use.
:func:`timm_module` answers those imports with placeholders while timm's package loads and
removes them right after, so nothing else sees a torchvision.

    vision_transformer = timm_module("vision_transformer")
    net = vision_transformer.VisionTransformer(img_size=224, patch_size=16)
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import sys
import types


class _Placeholder(type):
    """Stands in for any torchvision name read while timm imports (a class such as
    ``FrozenBatchNorm2d``, an enum member such as ``InterpolationMode.BILINEAR``); its
    attributes stand in too."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{cls.__name__}.{name}", (), {})


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{self.__name__}.{name}", (), {})


class _TorchvisionFinder:
    """An import finder answering ``torchvision`` and its submodules with placeholder modules."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision" and not name.startswith("torchvision."):
            return None
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
    "densenet"). Raises ImportError naming the install command when timm is missing."""
    if importlib.util.find_spec("timm") is None:
        raise ImportError("timm is not installed (pip install --no-deps timm: its ViT, ResNet "
                          "and DenseNet need no torchvision)")
    finder = None
    if importlib.util.find_spec("torchvision") is None:
        finder = _TorchvisionFinder()
        sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(f"timm.models.{name}")
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
            for mod in [m for m in sys.modules
                        if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[mod]
