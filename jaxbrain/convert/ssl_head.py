"""BrainSegFounder SSL model <-> PyTorch: the published self-supervised checkpoint layout.

Keys: ``swinViT.*`` (MONAI's SwinTransformer names, as in SwinUNETR), ``rotation_head``,
``contrastive_head`` and ``conv.{0,4,8,12,16,20}`` (the reconstruction decoder's convs in its
``nn.Sequential``). Files are read with or without the ``module.`` prefix, ``swin_vit`` as an
alias of ``swinViT`` and any {"state_dict": ...} wrapper; .pt files are written as the original
training script saved them: {"state_dict": {"module." + key: tensor}, "global_step": 0}.
"""

from __future__ import annotations

import re

from jaxbrain.convert import swin_unetr
from jaxbrain.convert.core import Family, Path


def torch_key(model, path: Path) -> str:
    key = re.sub(r"^conv_(\d+)\.", r"conv.\1.", ".".join(path))
    return swin_unetr.torch_key(model, tuple(key.split(".")))


def dummy_input(model) -> tuple:
    unit = model.patch_size ** 5
    return (1, 2 * unit, unit, unit, model.in_channels)  # two tokens at the last stage


def wrap(tensors: dict) -> dict:
    return {"state_dict": {"module." + k: v for k, v in tensors.items()}, "global_step": 0}


FAMILY = Family(
    name="SSLHead",
    torch_key=torch_key,
    buffers=swin_unetr.buffers,
    canonicalize=swin_unetr.canonicalize,
    dummy_input=dummy_input,
    encoder_prefix=swin_unetr.ENCODER,
    hints=swin_unetr.hints,
    wrap=wrap,
    detect=lambda state: "rotation_head.weight" in state or "contrastive_head.weight" in state,
    model_names=("ssl_head",),
    config_for=swin_unetr.config_for,
    missing=swin_unetr.missing,
    note=swin_unetr.NOTE,
)
