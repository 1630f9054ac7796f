"""Model registry: models are built by name from a config's ``model`` section.

    model = models.from_config({"name": "swin_unetr", "in_channels": 4, "out_channels": 3})

``register(name)`` adds a model class (a new family, or a test's toy model). Every model
names its input layer (``input_layer()``, the path adapted to another channel count when
pretrained weights are loaded) and, where it has one, its encoder subtree
(``encoder_name``), so that initialisation from pretrained weights needs no per-model code.
A model built for one input size says so with an ``input_size`` attribute; a segmentation
model that works on 2D slices says ``spatial_dims = 2`` (``dino_seg``), and volumes are then
predicted slice by slice (:class:`jaxbrain.inference.Predictor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from jaxbrain.models.cnn3d import DENSENETS, RESNETS
from jaxbrain.models.contrastive import CONTRASTIVE
from jaxbrain.models.dino import DINOHead, DinoViT, dino_preset
from jaxbrain.models.dino_heads import DinoStudent
from jaxbrain.models.dino_seg import DinoSeg
from jaxbrain.models.mae import MAE
from jaxbrain.models.pctnet import PCTNet
from jaxbrain.models.slice_heads import SliceHead, SliceScanViT
from jaxbrain.models.ssl_head import SSLHead
from jaxbrain.models.swin_unetr import MERGE_ORDERS, SwinTransformer, SwinUNETR, count_params
from jaxbrain.models.vit import ViT, ViTEncoder

REGISTRY: dict[str, type] = {
    "swin_unetr": SwinUNETR,
    "swin_transformer": SwinTransformer,
    "ssl_head": SSLHead,
    "pctnet": PCTNet,
    "slice_head": SliceHead,  # whole-scan head over a frozen slice encoder's features
    "slice_scan": SliceScanViT,  # slice encoder + whole-scan head end to end (LoRA probes)
    "vit": ViT,
    "mae": MAE,
    "dino_vit": DinoViT,  # DINOv3 / DINOv2 / BrainDINO slice encoder (arguments: dino_preset)
    "dino_student": DinoStudent,  # the slice encoder with DINO / iBOT heads (self-distillation)
    "dino_seg": DinoSeg,
    **DENSENETS,  # "densenet" (any block_config), "densenet121" ... "densenet264"
    **RESNETS,  # "resnet" (any block / layers), "resnet10" ... "resnet200"
    **CONTRASTIVE,  # "contrastive_<cnn>": the CNN with a projection head
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def register(name: str):
    """Class decorator adding a model to the registry under ``name``."""
    def add(cls):
        REGISTRY[name] = cls
        return cls
    return add


def create(name: str, **kwargs):
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name](**kwargs)


def from_config(cfg: Mapping[str, Any], compute_dtype: str | None = None):
    """The model of a config's ``model`` section: ``name`` plus constructor arguments (dtype
    names such as "bfloat16" become dtypes, lists become tuples). ``compute_dtype`` (the
    config's ``compute_dtype``) becomes the model's ``dtype`` unless the section sets one."""
    kwargs = dict(cfg)
    name = kwargs.pop("name")
    fields = getattr(REGISTRY.get(name), "__dataclass_fields__", {})
    if compute_dtype and "dtype" not in kwargs and "dtype" in fields:
        kwargs["dtype"] = compute_dtype
    for key in ("dtype", "param_dtype"):
        if isinstance(kwargs.get(key), str):
            if kwargs[key] not in DTYPES:
                raise ValueError(f"model.{key}: unknown dtype {kwargs[key]!r}; known: "
                                 f"{sorted(DTYPES)}")
            kwargs[key] = DTYPES[kwargs[key]]
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    return create(name, **kwargs)


def encoder_name(model) -> str | None:
    """The name of the model's encoder subtree (taken alone with ``init.encoder_only``)."""
    return getattr(model, "encoder_name", None)


__all__ = ["DINOHead", "DTYPES", "DinoSeg", "DinoViT", "MAE", "MERGE_ORDERS", "PCTNet", "REGISTRY", "SSLHead", "SwinTransformer",
           "SwinUNETR", "ViT", "ViTEncoder", "count_params", "create", "dino_preset", "encoder_name",
           "from_config", "register"]
