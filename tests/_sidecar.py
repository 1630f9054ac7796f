"""Builds the PyTorch model an export's sidecar names, from the sidecar alone, as a user would:
import the class by name, construct it with the recorded arguments (transformers: from the
written config.json), load the weights with the recorded strictness."""

from __future__ import annotations

import importlib
import json
import os

from jaxbrain.convert.sidecar import sidecar_path


def resolve(dotted: str):
    module, name = dotted.rsplit(".", 1)
    if module.startswith("timm."):  # timm through the placeholders for torchvision
        from _util import timm_module
        return getattr(timm_module(module.split(".")[-1]), name)
    return getattr(importlib.import_module(module), name)


def read_weights(path) -> dict:
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    import torch
    return torch.load(path, weights_only=True)


def build(weights):
    """(torch module in eval mode with the weights loaded, sidecar dict)."""
    with open(sidecar_path(weights)) as f:
        info = json.load(f)
    cls = resolve(info["class"])
    if "config_class" in info:
        folder = os.path.dirname(os.path.abspath(weights))
        net = cls(resolve(info["config_class"]).from_pretrained(folder))
    else:
        net = cls(**info["kwargs"])
    state = read_weights(weights)
    prefix = info.get("state_dict_prefix")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    net.load_state_dict(state, strict=info.get("strict", True))
    return net.eval(), info
