"""Model registry: ``create(name, **kwargs)`` builds a model by name, as configs refer to them."""

from __future__ import annotations

from jaxbrain.models.pctnet import PCTNet
from jaxbrain.models.ssl_head import SSLHead
from jaxbrain.models.swin_unetr import MERGE_ORDERS, SwinTransformer, SwinUNETR, count_params

REGISTRY = {
    "swin_unetr": SwinUNETR,
    "swin_transformer": SwinTransformer,
    "ssl_head": SSLHead,
    "pctnet": PCTNet,
}


def create(name: str, **kwargs):
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name](**kwargs)


__all__ = ["MERGE_ORDERS", "PCTNet", "REGISTRY", "SSLHead", "SwinTransformer", "SwinUNETR", "count_params", "create"]
