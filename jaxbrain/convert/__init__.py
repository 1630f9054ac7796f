"""PyTorch weight interchange.

    params, report = load_torch("model.pt", SwinUNETR(4, 3, feature_size=48,
                                                      downsample="merging_legacy"))
    save_torch(params, model, "exported.pt")        # MONAI loads it with strict=True

``load_torch`` is strict by default: keys the model lacks, parameters the checkpoint lacks and
shape mismatches are all listed, by name and shape, in one ``CheckpointMismatchError``. With
``strict=False`` the same ``LoadReport`` is returned beside the parameters. Parameters are
returned as a nested dict of NumPy arrays in the model's ``param_dtype``.

The command line (``python -m jaxbrain.convert --help``) converts between PyTorch files and
Orbax checkpoints. Initialising a model from any pretrained source (a PyTorch file, a training
run, a converted directory), with channel adaptation, new heads and encoder-only loads, is
:func:`jaxbrain.convert.pretrained.load_pretrained`; 2D image networks (timm ViT, torchvision /
timm ResNet and DenseNet) and VideoMAE go into the 3D models through it, inflated
(:mod:`jaxbrain.convert.inflate`; their family names, ``init.from``, are :data:`SOURCES`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from jaxbrain.convert import core, densenet, dino, pctnet, resnet, ssl_head, swin_unetr, videomae, vit
from jaxbrain.convert import dino_seg, inflate, slice_probe
from jaxbrain.convert import sidecar
from jaxbrain.convert.inflate import SOURCES
from jaxbrain.convert.core import CheckpointMismatchError, LoadReport, read_state_dict
from jaxbrain.models import DinoSeg, DinoViT, PCTNet, SSLHead, SwinTransformer, SwinUNETR, ViT, ViTEncoder
from jaxbrain.models.cnn3d import DenseNet, ResNet
from jaxbrain.models.dino_heads import DinoStudent
from jaxbrain.models.slice_heads import SliceHead, SliceScanViT
from jaxbrain.models.vit import scans_blocks, stack_blocks, unstack_blocks

# Model class -> its family. Detection (``detect``) tries the families most specific first:
# the order of this table, newest registrations first.
FAMILIES = {
    DinoSeg: dino_seg.FAMILY,  # before ViTEncoder, its base class
    DinoStudent: dino.STUDENT_FAMILY,  # before DinoViT, its base class
    SliceScanViT: slice_probe.FAMILY,  # likewise
    SliceHead: slice_probe.FAMILY,
    DinoViT: dino.FAMILY,  # before ViTEncoder, its base class
    ViT: vit.FAMILY,
    ViTEncoder: vit.FAMILY,
    DenseNet: densenet.FAMILY,
    ResNet: resnet.FAMILY,
    PCTNet: pctnet.FAMILY,
    SSLHead: ssl_head.FAMILY,
    SwinUNETR: swin_unetr.FAMILY,
    SwinTransformer: swin_unetr.FAMILY,
}


# Further layouts of a class above (one whose family shares their model_names), by name.
# ``load_torch`` reads a state dict in one of them when its keys show it; ``save_torch`` and
# ``to-torch`` write the FAMILIES layout (``jaxbrain.convert.videomae.save_torch`` writes
# VideoMAE's, ``jaxbrain.convert.vit.save_timm`` timm's).
FROM_FAMILIES = {"timm": vit.TIMM_FAMILY, "videomae": videomae.FAMILY}


def register(model_class: type, family: core.Family) -> None:
    """Adds a new family's PyTorch interchange for ``model_class`` (tried first by ``detect``)."""
    global FAMILIES
    FAMILIES = {model_class: family, **{k: v for k, v in FAMILIES.items() if k is not model_class}}


def families() -> list[core.Family]:
    return list(dict.fromkeys([*FAMILIES.values(), *FROM_FAMILIES.values()], None))


def family_for(model_name: str) -> core.Family:
    """The family serving a model registry name (``--model``)."""
    for family in families():
        if model_name in family.model_names:
            return family
    known = [n for f in families() for n in f.model_names]
    raise SystemExit(f"--model {model_name!r}: no PyTorch conversion; known: {known}")


def detect(state: Mapping) -> tuple[core.Family, dict, str]:
    """(family, canonical state dict, format name) of a PyTorch state dict, or ValueError
    naming what was looked for."""
    for family in families():
        try:
            canonical, fmt = family.canonicalize(dict(state))
        except ValueError:
            continue
        if family.detect(canonical):
            return family, canonical, fmt
    raise ValueError("not a state dict of a known family (" + ", ".join(
        f"{f.name}: {'/'.join(f.model_names)}" for f in families()) + "): "
        f"first keys {sorted(state)[:5]}")


def _layouts(model: Any) -> list[core.Family]:
    """The FROM_FAMILIES layouts of ``model``'s class."""
    names = set(family_of(model).model_names)
    return [f for f in FROM_FAMILIES.values() if names & set(f.model_names)]


def _shows(family: core.Family, state: Mapping) -> bool:
    try:
        canonical, _ = family.canonicalize(dict(state))
    except ValueError:
        return False
    return family.detect(canonical)


def family_of(model: Any, state: Mapping | None = None) -> core.Family:
    """The family of ``model``; given a state dict, the FROM_FAMILIES layout its keys show,
    if any."""
    if state is not None:
        for family in _layouts(model):
            if _shows(family, state):
                return family
    for cls, family in FAMILIES.items():
        if isinstance(model, cls):
            return family
    raise TypeError(f"no PyTorch conversion for {type(model).__name__}; supported: "
                    f"{sorted(c.__name__ for c in FAMILIES)}")


def family_for_source(model: Any, source: str | os.PathLike | Mapping,
                      trust_pickle: bool = False) -> core.Family:
    """The family that reads ``source`` (a PyTorch file or state dict) into ``model``: the
    FROM_FAMILIES layout its keys show (the file is read for them when the model's class has
    such layouts, e.g. a ViT with VideoMAE's), else the model's family."""
    if _layouts(model):
        return family_of(model, read_state_dict(source, trust_pickle)[0])
    return family_of(model)


def load_torch(source: str | os.PathLike | Mapping, model: Any, strict: bool = True, *,
               params: Any = None, encoder_only: bool = False,
               trust_pickle: bool = False, new_head: bool = False,
               layout: str | None = None) -> tuple[dict, LoadReport]:
    """Reads a PyTorch checkpoint (a path to .pt/.pth/.bin/.safetensors, or a state dict) into
    Flax parameters for ``model``.

    Args:
      strict: raise ``CheckpointMismatchError`` on any missing, unused or mismatched key.
      params: values for the parameters the checkpoint does not fill (required whenever some
        are left unfilled: ``encoder_only`` or a non-strict partial load).
      encoder_only: exchange only the Swin encoder (``swinViT.*``); other checkpoint keys (SSL
        heads, a decoder) are reported as ignored, other model parameters kept from ``params``.
      trust_pickle: allow arbitrary pickled objects in a .pt file (only for trusted files).
      new_head: output layers whose shape differs (another class count) are reported and
        kept from ``params`` instead of failing the load.
      layout: a FROM_FAMILIES name (e.g. "videomae") to read; default: the one the keys show,
        else the model's family.

    Models with running statistics (PCT-Net's BatchNorm) return their variables,
    ``{"params": ..., "batch_stats": ...}``, and take them as ``params=``.

    A model with ``scan_blocks=True`` reads the same files: the blocks are converted one by
    one and returned stacked (``params=`` in either layout).
    """
    if scans_blocks(model):
        params = None if params is None else unstack_blocks(nn.meta.unbox(params))
        loaded, report = load_torch(source, unscanned(model), strict, params=params,
                                    encoder_only=encoder_only, trust_pickle=trust_pickle,
                                    new_head=new_head, layout=layout)
        return stack_blocks(loaded), report
    if layout is not None:
        if layout not in FROM_FAMILIES:
            raise ValueError(f"layout={layout!r}: expected one of {sorted(FROM_FAMILIES)}")
        family = FROM_FAMILIES[layout]
    else:  # the keys decide (a file with other layouts is read twice)
        family = family_for_source(model, source, trust_pickle)
    if family is dino_seg.FAMILY:  # to3's rows past in_channels (convert.dino_seg)
        return dino_seg.load_torch(source, model, strict, params=params, encoder_only=encoder_only,
                                   trust_pickle=trust_pickle, new_head=new_head)
    return core.load(source, model, family, strict=strict, params=params,
                     encoder_only=encoder_only, trust_pickle=trust_pickle, new_head=new_head)


def save_torch(params: Any, model: Any, path: str | os.PathLike | None, *,
               template: str | os.PathLike | Mapping | None = None) -> dict:
    """Writes ``params`` as the PyTorch state dict of the matching PyTorch model (.pt, .pth,
    .bin or .safetensors), buffers such as ``relative_position_index`` included. Returns the
    state dict as NumPy arrays (``path=None`` only returns it). Tensors the original holds
    beyond the model (PCT-Net's other resolution modes) are taken from ``template`` (a
    checkpoint) where it has them, else initialised as PyTorch would. A model with
    ``scan_blocks=True`` writes the file of the same model without it."""
    if scans_blocks(model):
        model, params = unscanned(model), unstack_blocks(nn.meta.unbox(params))
    if template is not None:
        template, _ = read_state_dict(template)
    if path is not None and family_of(model) in (swin_unetr.FAMILY, ssl_head.FAMILY) and \
            _encoder_downsample(model) == sidecar.LEGACY:
        import warnings
        warnings.warn(f"{os.fspath(path)}: downsample='merging_legacy'; " + sidecar.LEGACY_NOTE,
                      stacklevel=2)
    if family_of(model) is dino_seg.FAMILY:
        return dino_seg.save_torch(params, model, path, template=template)
    return core.save(params, model, family_of(model), path, template)


def unscanned(model: Any) -> Any:
    """``model`` with ``scan_blocks=False`` (the layout the converters read and write)."""
    return model.clone(scan_blocks=False) if scans_blocks(model) else model


def _encoder_downsample(model: Any) -> str | None:
    return getattr(model, "downsample", None)


def export(variables: Any, model: Any, path: str | os.PathLike, *, layout: str | None = None,
           template: str | os.PathLike | Mapping | None = None, block_chunks: int = 0,
           model_config: Mapping | None = None) -> tuple[dict, dict]:
    """``to-torch``: writes ``variables`` as the state dict of ``layout`` (default: the
    family's first, :func:`jaxbrain.convert.sidecar.layouts`) and, beside it, the sidecar
    naming the class and constructor arguments that load it (``<path stem>.json``; with
    transformers' layout also its ``config.json``). Returns (state dict, sidecar).
    A layout that cannot represent the model raises ``sidecar.NotRepresentable`` (a
    ValueError) before anything is written. A model with ``scan_blocks=True`` writes the
    files of the same model without it."""
    if scans_blocks(model):
        model, variables = unscanned(model), unstack_blocks(nn.meta.unbox(variables))
    family = family_of(model)
    info = sidecar.describe(model, family, layout)
    layout = info["layout"]
    if block_chunks and family is not dino.FAMILY:
        raise sidecar.NotRepresentable("block_chunks: DINOv2 backbones only")
    if family is dino.FAMILY:
        state = dino.save_torch(variables, model, path, layout=layout, block_chunks=block_chunks)
    elif layout == "timm":
        state = vit.save_timm(variables, model, path)
    elif layout == "videomae":
        state = videomae.save_torch(variables, model, path)
    else:
        state = save_torch(variables, model, path, template=template)
    info["jaxbrain_model"] = sidecar.plain(dict(model_config)) if model_config else {
        "class": type(model).__name__, **sidecar.model_config(model)}
    info["tensors"] = len(state)
    sidecar.write(info, path)
    return state, info


__all__ = ["export", "CheckpointMismatchError", "FROM_FAMILIES", "LoadReport", "SOURCES", "detect", "families",
           "family_for", "family_for_source", "family_of", "load_torch", "register",
           "read_state_dict", "save_torch"]
