"""SwinUNETR / Swin encoder <-> PyTorch state dicts.

Canonical naming is MONAI's ``SwinUNETR.state_dict()``. Also read:

- BrainSegFounder / research-contributions SSL checkpoints: ``swinViT.*`` (or ``swin_vit.*``)
  plus ``rotation_head``, ``contrastive_head`` and ``conv.N`` heads; load their encoder into a
  SwinUNETR with ``encoder_only=True`` (the heads are reported as ignored).
- MONAI's ``model_swinvit.pt``: the encoder without a prefix (``layers1.0.blocks...``) and with
  ``mlp.fc1`` / ``mlp.fc2`` for ``mlp.linear1`` / ``mlp.linear2``.

``module.`` (DataParallel / DDP) prefixes and {"state_dict": ...} wrappers are removed first.
"""

from __future__ import annotations

import re

import numpy as np

from jaxbrain.convert.core import Family, Path, State, rename
from jaxbrain.models.swin_unetr import SwinTransformer, SwinUNETR, relative_position_index

ENCODER = "swinViT."

_FLAX_TO_TORCH = [
    (r"^swinViT\.layers(\d)c\.", r"swinViT.layers\1c.0.layer."),
    (r"^swinViT\.layers(\d)\.", r"swinViT.layers\1.0."),
    (r"\.blocks_(\d+)\.", r".blocks.\1."),
    (r"^(encoder\d+)\.", r"\1.layer."),
    (r"\.(conv\d|transp_conv)\.kernel$", r".\1.conv.weight"),
    (r"^out\.(kernel|bias)$", r"out.conv.conv.\1"),
    (r"\.patch_embed\.", r".patch_embed.proj."),
    (r"\.(kernel|scale)$", r".weight"),
]


def _as_unetr_path(model, path: Path) -> Path:
    return ("swinViT",) + path if isinstance(model, SwinTransformer) else path


def torch_key(model, path: Path) -> str:
    key = ".".join(_as_unetr_path(model, path))
    for pattern, repl in _FLAX_TO_TORCH:
        key = re.sub(pattern, repl, key)
    return key


def _encoder(model) -> SwinTransformer:
    return model if isinstance(model, SwinTransformer) else SwinTransformer(**model.encoder_kwargs())


def buffers(model) -> State:
    enc = _encoder(model)
    index = relative_position_index(enc._windows())
    return {f"{ENCODER}layers{i + 1}.0.blocks.{j}.attn.relative_position_index": index.copy()
            for i, depth in enumerate(enc.depths) for j in range(depth)}


def canonicalize(state: State) -> tuple[State, str]:
    keys = list(state)
    if any(k.startswith("swin_vit.") for k in keys):
        state = rename(state, [(r"^swin_vit\.", ENCODER)])
    # A bare Swin encoder has its stages (layers1..4) at the top; a ViT's patch_embed alone
    # (timm, MCG-NJU VideoMAE) is not one.
    bare = any(re.match(r"^layers\d\.", k) for k in state)
    if bare:
        state = rename(state, [(r"^(patch_embed|layers\d)", ENCODER + r"\1")])
    fc_named = any(".mlp.fc1." in k for k in state)
    state = rename(state, [(r"\.mlp\.fc1\.", ".mlp.linear1."), (r"\.mlp\.fc2\.", ".mlp.linear2.")])
    if "rotation_head.weight" in state or "contrastive_head.weight" in state:
        fmt = "SwinUNETR SSL head (BrainSegFounder / research-contributions)"
    elif bare:
        fmt = "MONAI model_swinvit.pt" if fc_named else "bare Swin encoder"
    elif "encoder1.layer.conv1.conv.weight" in state:
        fmt = "MONAI SwinUNETR"
    else:
        fmt = "Swin encoder"
    return state, fmt


def dummy_input(model) -> tuple:
    enc = _encoder(model)
    return (1,) + (enc.patch_size ** 5,) * 3 + (enc.in_channels,)


def is_transposed_conv(path: Path) -> bool:
    return "transp_conv" in path


def hints(model, source: State, expected: dict) -> list[str]:
    out = []
    key = f"{ENCODER}patch_embed.proj.weight"
    enc = _encoder(model)
    if key in source:
        w = source[key]
        if w.ndim == 5 and w.shape[1] != enc.in_channels:
            out.append(f"the checkpoint has in_channels={w.shape[1]}, the model in_channels="
                       f"{enc.in_channels}")
        if w.ndim == 5 and w.shape[0] != enc.embed_dim:
            out.append(f"the checkpoint has feature_size={w.shape[0]}, the model {enc.embed_dim}")
    have = infer_config(source)
    if have.get("depths") and tuple(have["depths"]) != tuple(enc.depths):
        out.append(f"the checkpoint has depths={tuple(have['depths'])}, the model {tuple(enc.depths)}")
    if "use_v2" in have and have["use_v2"] != enc.use_v2 and "encoder1.layer.conv1.conv.weight" in source:
        out.append(f"the checkpoint has use_v2={have['use_v2']}, the model use_v2={enc.use_v2}")
    w = source.get("out.conv.conv.weight")
    if w is not None and isinstance(model, SwinUNETR) and w.shape[0] != model.out_channels:
        out.append(f"the checkpoint has out_channels={w.shape[0]}, the model {model.out_channels}")
    return out


def infer_config(state: State) -> dict:
    """SwinUNETR constructor arguments read off a canonical state dict's shapes. The
    PatchMerging order cannot be read from shapes: choose ``downsample`` yourself."""
    cfg: dict = {}
    w = state.get(f"{ENCODER}patch_embed.proj.weight")
    if w is None:
        return cfg
    cfg.update(in_channels=int(w.shape[1]), feature_size=int(w.shape[0]), patch_size=int(w.shape[2]))
    depths, heads = [], []
    for i in range(1, 5):
        blocks = {int(m.group(1)) for k in state
                  if (m := re.match(rf"^{ENCODER}layers{i}\.0\.blocks\.(\d+)\.", k))}
        depths.append(len(blocks))
        table = state.get(f"{ENCODER}layers{i}.0.blocks.0.attn.relative_position_bias_table")
        if table is not None:
            heads.append(int(table.shape[1]))
            if i == 1:
                cfg["window_size"] = int(round(table.shape[0] ** (1 / 3) + 1) // 2)
    cfg["depths"] = tuple(depths)
    if len(heads) == 4:
        cfg["num_heads"] = tuple(heads)
    lin = state.get(f"{ENCODER}layers1.0.blocks.0.mlp.linear1.weight")
    if lin is not None:
        cfg["mlp_ratio"] = lin.shape[0] / lin.shape[1]
    cfg["qkv_bias"] = f"{ENCODER}layers1.0.blocks.0.attn.qkv.bias" in state
    cfg["use_v2"] = any(k.startswith(f"{ENCODER}layers1c.") for k in state)
    out = state.get("out.conv.conv.weight")
    if out is not None:
        cfg["out_channels"] = int(out.shape[0])
    return cfg


def config_for(state: State, model_name: str) -> dict:
    """``infer_config`` for one of the models this family serves."""
    cfg = infer_config(state)
    if model_name == "swin_transformer":
        return {("embed_dim" if k == "feature_size" else k): v for k, v in cfg.items()
                if k != "out_channels"}
    if model_name == "ssl_head":
        cfg.pop("out_channels", None)
    return cfg


def missing(model_name: str, kwargs: dict) -> str | None:
    if "downsample" not in kwargs:
        return ("say which PatchMerging order the checkpoint was trained with: "
                "--set downsample=merging_legacy (MONAI < 1.5, BrainSegFounder) or "
                "--set downsample=merging (MONAI >= 1.5) or mergingv2")
    if model_name == "swin_unetr" and "out_channels" not in kwargs:
        return "the checkpoint has no output layer: give --set out_channels=N"
    return None


def detect(state: State) -> bool:
    return any(k.startswith(ENCODER) for k in state)


NOTE = ("the PatchMerging order is not visible in shapes; checkpoints trained with MONAI < 1.5 "
        "(BrainSegFounder's among them) need downsample=merging_legacy")

FAMILY = Family(
    name="SwinUNETR",
    torch_key=torch_key,
    buffers=buffers,
    canonicalize=canonicalize,
    dummy_input=dummy_input,
    is_transposed_conv=is_transposed_conv,
    encoder_prefix=ENCODER,
    hints=hints,
    detect=detect,
    model_names=("swin_unetr", "swin_transformer"),
    config_for=config_for,
    missing=missing,
    note=NOTE,
)
