"""Initialisation from pretrained weights: one path for every source and every model.

    variables, report = load_pretrained("stage1.pt", model, fresh_variables,
                                        encoder_only=True, channels="average")

A source is a PyTorch file (.pt/.pth/.bin/.ckpt/.safetensors, or a state dict; read by the
model's convert family, or by another layout of the model's class that the file's keys show,
e.g. a VideoMAE file into a ViT; a 2D image or video network for a 3D model is inflated
first, :mod:`jaxbrain.convert.inflate`), a ``train.py`` run or a ``convert from-torch`` directory
(read by :func:`jaxbrain.runs.load_run`). It becomes a flat tree of Flax variables, then one merge
(:func:`jaxbrain.convert.core.merge`) applies the same rules to all of them:

  * ``encoder_only``: only the model's encoder subtree (the model's ``encoder_name``) is
    taken, in every collection (parameters and BatchNorm running statistics alike); the rest
    keeps its fresh values, and the source's other entries are ignored. A run or directory
    without that subtree (a bare encoder, e.g. a converted DINOv3 backbone for a
    segmentation model's ``encoder``) is taken whole as the subtree;
  * ``channels``: an input layer (the model's ``input_layer()``) for another channel count
    is adapted ("average" = "sum", "mean", "repeat": e.g. an RGB stem for grey scans) or
    started fresh ("fresh");
  * ``new_head``: output layers for another class count start fresh;
  * LoRA adapters of the model (``lora_rank``) that the source lacks keep their
    initialisation (reported as new);
  * everything else must fit: with ``strict`` (the default) any missing, unused or
    mismatched entry fails the load with one :class:`CheckpointMismatchError` listing them.

The :class:`LoadReport` says what happened to every entry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util

from jaxbrain import models, runs
from jaxbrain.convert import core
from jaxbrain.models.vit import LORA_MODULES, scans_blocks, stack_blocks, unstack_blocks

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def is_torch_source(source: Any) -> bool:
    return isinstance(source, Mapping) or (
        isinstance(source, (str, os.PathLike)) and os.fspath(source).endswith(TORCH_SUFFIXES))


def load_pretrained(source: Any, model: Any, like: Mapping, *, encoder_only: bool = False,
                    channels: str | None = "average", new_head: bool = False,
                    strict: bool = True, trust_pickle: bool = False,
                    family: core.Family | None = None, source_family: str | None = None,
                    inflate: str = "mean") -> tuple[dict, core.LoadReport]:
    """``like`` (the model's fresh variables, {"params": ..., "batch_stats": ...}) with the
    values of ``source``; returns (variables, report). See the module docstring.

    PyTorch sources: ``source_family`` names the file's family (``init.from``: one of
    :data:`jaxbrain.convert.inflate.SOURCES`; None: the keys decide) and ``inflate`` ("mean"
    or "centre") how 2D kernels become 3D ones when a 2D or video network initialises a 3D
    model (:mod:`jaxbrain.convert.inflate`).

    Either block layout initialises either model: a model with ``scan_blocks=True`` is
    filled in the unscanned layout and its blocks stacked at the end; runs and directories
    are read unstacked."""
    if scans_blocks(model):
        merged, report = load_pretrained(
            source, model.clone(scan_blocks=False), unstack_blocks(nn.meta.unbox(dict(like))),
            encoder_only=encoder_only, channels=channels, new_head=new_head, strict=strict,
            trust_pickle=trust_pickle, family=family, source_family=source_family, inflate=inflate)
        return stack_blocks(merged), report
    like_flat = traverse_util.flatten_dict(nn.meta.unbox(dict(like)))
    like_flat = {k: np.asarray(v) for k, v in like_flat.items()}
    scope = None
    if encoder_only:
        name = models.encoder_name(model)
        if name is None:
            raise ValueError(f"init.encoder_only: {type(model).__name__} names no encoder "
                             "subtree (encoder_name)")
        scope = name  # in every collection: the encoder's BatchNorm statistics come with it
    input_layer = ("params",) + tuple(model.input_layer()) if hasattr(model, "input_layer") else None

    if is_torch_source(source):
        prepared = None
        if family is None:  # 2D / video networks rewritten for a 3D model (None: no need)
            from jaxbrain.convert import inflate as inflation
            prepared = inflation.prepare(source, model, source_family=source_family,
                                         inflate=inflate, trust_pickle=trust_pickle)
        elif source_family is not None:
            raise ValueError("load_pretrained: give family or source_family, not both")
        if prepared is not None:
            family = prepared.family
        elif family is None:  # the model's, or another layout of it the file's keys show
            from jaxbrain.convert import family_for_source
            family = family_for_source(model, source, trust_pickle)
        found, report, _ = core.to_flax(source if prepared is None else prepared.state, model,
                                        family, encoder_only=encoder_only,
                                        trust_pickle=trust_pickle)
        if prepared is not None:
            report.source = prepared.source
            report.adapted.extend(prepared.notes)
        single = family.collections == ("params",)
        if single:
            found = {("params",) + k: v for k, v in found.items()}

        def name(path):
            return family.torch_key(model, path[1:] if single else path)

        def shown(path, shape):
            inner = path[1:] if single else path
            return core.torch_shape(inner, tuple(shape), family.is_transposed_conv(inner))

        def is_head(path):
            return family.is_head(name(path))
    else:
        if source_family is not None:
            raise ValueError(f"init.from={source_family!r} names the family of a PyTorch file "
                             f"(init.torch); {source} is read as the run or directory it is")
        run = runs.load_run(os.fspath(source))
        found = {k: np.asarray(v) for k, v in
                 traverse_util.flatten_dict(unstack_blocks(run.variables)).items()}
        fmt = (f"training run, step {run.step}" if run.kind == "training" else "converted model")
        if run.weights == "teacher":
            fmt += ", its EMA teacher"
        report = core.LoadReport(source=run.path, source_format=fmt, target=type(model).__name__)
        if scope is not None and found and not any(p[1:2] == (scope,) for p in found):
            # A bare encoder (e.g. a converted DINOv3 / DINOv2 backbone, whose tree is the
            # encoder itself) is the encoder subtree of the model it initialises.
            found = {(p[0], scope, *p[1:]): v for p, v in found.items()}
            report.adapted.append(f"the source has no {scope}/ subtree: its whole tree is "
                                  f"taken as {scope}/")
        name, shown, is_head = "/".join, (lambda path, shape: tuple(shape)), (lambda path: True)

        def inside(path):  # (collection, module, ...): the encoder's in any collection
            return scope is None or path[1:2] == (scope,)

        for path, value in found.items():
            if path not in like_flat:
                (report.unused.append((name(path), value.shape)) if inside(path)
                 else report.ignored.append(name(path)))
            elif not inside(path):
                report.ignored.append(name(path))
        for path, value in like_flat.items():
            if path not in found:
                (report.missing.append((name(path), value.shape)) if inside(path)
                 else report.kept.append(name(path)))
            elif not inside(path):
                report.kept.append(name(path))
        found = {p: v for p, v in found.items() if inside(p)}

    # LoRA adapters the source lacks are new layers of an adapted encoder: they keep their
    # initialisation (zero up-projections: the encoder starts as the source's).
    adapters = {name(p) for p in like_flat if len(p) > 1 and p[-2] in LORA_MODULES and p not in found}
    if adapters:
        report.missing = [(k, s) for k, s in report.missing if k not in adapters]
        report.kept.extend(sorted(adapters))
        report.adapted.append(f"{len(adapters)} LoRA adapter weights are new (initialised)")
    merged = core.merge(found, like_flat, report, name=name, shown=shown,
                        input_layer=input_layer, channels=channels, new_head=new_head,
                        is_head=is_head)
    if report.ok:  # the stem adapted, the head left fresh: done as asked, nothing to hint
        report.hints = []
    elif is_torch_source(source):
        from jaxbrain.convert import inflate as inflation
        report.hints.extend(inflation.setting_hints(report, model))
    if not report.ok and strict:
        hint = ("\n  hint: another class count? init.new_head=True starts the output layers "
                "fresh" if report.mismatched and not new_head else "")
        raise core.CheckpointMismatchError(
            f"{report.source} [{report.source_format}] does not fit {type(model).__name__}:\n"
            f"{report.problems()}{hint}\n(init.strict=False loads what fits)", report)
    return traverse_util.unflatten_dict(merged), report
