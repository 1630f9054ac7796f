"""2D image and video networks into the 3D models: the weights of a timm ViT, a torchvision /
timm ResNet or DenseNet, or a VideoMAE, rewritten for a 3D ViT, ResNet or DenseNet.

    variables, report = load_pretrained("resnet18_imagenet.pth", ResNet18(1, 2,
        shortcut_type="B", bias_downsample=False), fresh, source_family="torchvision_resnet",
        encoder_only=True, inflate="centre")

Sources (``init.from`` in configs, :data:`SOURCES`; ``None`` reads the family off the keys):

- ``timm_vit``: timm's 2D ``VisionTransformer`` (:data:`jaxbrain.convert.vit.TIMM_FAMILY`).
- ``torchvision_resnet``: torchvision's / timm's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``
  ..., ``layer2.0.downsample.{0,1}``, ``fc``; basic and bottleneck blocks), the names of the 3D
  ResNet's MONAI layout. torchvision's stem (conv1 7x7, stride 2, padding 3, bn1, ReLU, max
  pool 3 / 2 / 1) is the 3D ResNet's with ``conv1_t_size`` 7 in-plane (its depth may differ:
  (3, 7, 7) is read too), ``conv1_t_stride`` 2 and the max pool; its blocks are shortcut "B"
  without downsample bias (``shortcut_type="B", bias_downsample=False``: the 3D ResNet-18
  and -34 presets are MedicalNet's shortcut "A", so set both), stride in the 3x3
  convolution of bottlenecks as in the 3D model.
- ``torchvision_densenet``: torchvision's / timm's DenseNet (``features.conv0``,
  ``features.denseblock{b}.denselayer{j}.{norm1, conv1, norm2, conv2}``,
  ``features.transition{t}``, ``features.norm5``, ``classifier``), the same network as MONAI's
  DenseNet in 2D (timm's ``init_features`` is twice the growth rate).
- ``videomae``: transformers' VideoMAE models and MCG-NJU's checkpoints
  (:mod:`jaxbrain.convert.videomae`).
- ``monai``: the model's own 3D layout, read as it is (no inflation).

What changes (every change is a line of the report's ``adapted`` list):

- 2D kernels ``[out, in, kh, kw]`` become 3D ``[out, in, kd, kh, kw]`` with the model's depth
  ``kd`` (the first spatial axis, ``D`` of ``(B, D, H, W, C)``), by ``inflate``:
  ``"mean"`` (I3D): the 2D kernel repeated over the depth and divided by ``kd``;
  ``"centre"``: the 2D kernel at the central depth tap ``kd // 2``, zeros elsewhere. On a
  volume constant along depth both give each 2D response; inside the network "centre" stays
  exact at the depth borders too (zero padding meets only zero taps), so the whole inflated
  CNN equals the 2D network slice by slice, where "mean" is exact on depth slices whose
  receptive field does not reach the padding. BatchNorm weights and running statistics
  (``num_batches_tracked`` included) are carried unchanged; the in-plane size must be the
  model's (a mismatch is reported as such).
- timm's position table ``pos_embed`` (the 2D grid ``s x s``, from its row count) becomes the
  3D ViT's learned table for its grid ``(gd, gh, gw)``: resampled in-plane to ``gh x gw``
  bicubically (as ``F.interpolate(mode="bicubic", align_corners=False)``, no antialiasing;
  the same grid is left unchanged), then repeated over the ``gd`` depth positions (a token's
  position is its in-plane position; depth gets none, so a depth-constant volume gives
  tokens that repeat the 2D ones). timm's CLS row (``no_embed_class=False``) becomes the
  model's CLS row (``pos_embed_cls=True``) or, for a model without one, is added into
  ``cls_token`` (the same sum the 2D network forms); a model with a CLS row and a source
  without one gets a zero row. ``cls_token`` and ``reg_token`` (registers) are carried. A
  model with fixed or no positions (``pos_embed`` "sincos" / "none") ignores the table.
- VideoMAE's tubelet kernel ``[D, C, t, p, p]`` (t = 2) becomes the model's patch
  ``[D, C, pd, p, p]`` (the same in-plane ``p``): with ``"mean"``, frame ``f`` covers the
  depth interval ``[f / t, (f + 1) / t)`` and each depth tap takes the frames it overlaps,
  each frame's kernel divided among the taps covering it (for ``pd`` a multiple of ``t``:
  every frame's kernel repeated over ``pd / t`` taps and divided by ``pd / t``), so that a
  volume holding each frame of a clip for ``pd / t`` slices, a constant one included, gives
  the video kernel's response on the clip; with ``"centre"`` the ``t`` taps sit at the middle
  of the depth and the others are zero (exact on depth-constant volumes). VideoMAE's fixed
  sin-cos table is regenerated for the volume's token count (the model's ``pos_embed=
  "sincos"`` does that itself; a model with learned positions starts its table from it).
- Input channels: ``init.channels`` (:func:`jaxbrain.convert.core.adapt_channels`) takes the
  RGB stem to grey: ``"sum"`` (the 3 channel kernels summed: a grey image replicated to RGB
  keeps its response; ``"average"`` is the same) or ``"mean"`` (their mean).

Accounting is :func:`jaxbrain.convert.core.to_flax`'s, on the inflated state dict: every
source key is loaded, or reported missing, unused, mismatched, ignored or kept.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxbrain.convert import core, densenet, resnet, videomae, vit
from jaxbrain.convert.core import Family, State
from jaxbrain.models.vit import interpolation_matrix, sincos_table

SOURCES = ("timm_vit", "torchvision_resnet", "torchvision_densenet", "videomae", "monai")
MODES = ("mean", "centre")

_FAMILIES = {"timm_vit": vit.TIMM_FAMILY, "torchvision_resnet": resnet.FAMILY,
             "torchvision_densenet": densenet.FAMILY, "videomae": videomae.FAMILY}


@dataclasses.dataclass
class Prepared:
    """A state dict rewritten for the model (``state``: canonical names, 3D shapes), the family
    that reads it (its ``canonicalize`` leaves the names alone), the source's name and format,
    and one line per change (the report's ``adapted``)."""

    state: State
    family: Family
    source: str
    source_format: str
    notes: list[str]


# ----------------------------------------------------------------------------------------
# Kernels.


def inflate_kernel(w: np.ndarray, depth: int, mode: str = "mean") -> np.ndarray:
    """A 2D kernel ``[out, in, kh, kw]`` as a 3D one ``[out, in, depth, kh, kw]`` (PyTorch
    layouts): ``"mean"`` repeats it over the depth divided by ``depth``, ``"centre"`` puts it
    at tap ``depth // 2`` with zeros elsewhere."""
    if mode not in MODES:
        raise ValueError(f"init.inflate={mode!r}: expected one of {MODES}")
    if w.ndim != 4:
        raise ValueError(f"inflate_kernel: expected a 2D kernel [out, in, kh, kw], got shape {w.shape}")
    if mode == "mean":
        return np.repeat(w[:, :, None] / depth, depth, axis=2).astype(w.dtype)
    out = np.zeros(w.shape[:2] + (depth,) + w.shape[2:], w.dtype)
    out[:, :, depth // 2] = w
    return out


def depth_matrix(frames: int, depth: int, mode: str = "mean") -> np.ndarray:
    """(depth, frames): the weight of each frame's kernel in each depth tap. ``"mean"``: tap
    ``j`` (interval ``[j / depth, (j + 1) / depth)``) takes frame ``f`` (``[f / frames,
    (f + 1) / frames)``) with the fraction of the frame it covers, so every column sums to 1;
    ``"centre"``: the frames at taps ``(depth - frames) // 2`` onwards (``depth >= frames``)."""
    if mode not in MODES:
        raise ValueError(f"init.inflate={mode!r}: expected one of {MODES}")
    m = np.zeros((depth, frames), np.float64)
    if mode == "centre":
        if depth < frames:
            raise ValueError(f"init.inflate='centre': the model's patch depth {depth} is shorter "
                             f"than the source's {frames} frames; use 'mean'")
        start = (depth - frames) // 2
        m[start:start + frames] = np.eye(frames)
        return m
    for j in range(depth):
        lo, hi = j / depth, (j + 1) / depth
        for f in range(frames):
            overlap = min(hi, (f + 1) / frames) - max(lo, f / frames)
            if overlap > 0:
                m[j, f] = overlap * frames  # the fraction of frame f inside tap j
    return m


def resample_depth(w: np.ndarray, depth: int, mode: str = "mean") -> np.ndarray:
    """A 3D kernel ``[out, in, t, kh, kw]`` with ``depth`` taps (see :func:`depth_matrix`)."""
    m = depth_matrix(w.shape[2], depth, mode)
    return np.einsum("jt,oithw->oijhw", m, w.astype(np.float64)).astype(w.dtype)


# ----------------------------------------------------------------------------------------
# Families and targets.


def family_named(name: str, model: Any) -> Family:
    """The family of an ``init.from`` name for ``model`` (``monai``: the model's own)."""
    from jaxbrain.convert import family_of
    if name not in SOURCES:
        raise ValueError(f"init.from={name!r}: expected one of {SOURCES} (or None: the file's "
                         "keys decide)")
    family = family_of(model) if name == "monai" else _FAMILIES[name]
    serves = set(family.model_names) & set(family_of(model).model_names)
    if not serves:
        raise ValueError(f"init.from={name!r} reads {family.name} files ({'/'.join(family.model_names[:3])}"
                         f"...), not weights for {type(model).__name__}")
    return family


def _targets(model: Any, family: Family) -> dict[str, tuple]:
    """{torch key: PyTorch-layout shape} of what ``family`` exchanges for ``model``."""
    out = {}
    for path, leaf in core.target_shapes(model, family).items():
        out[family.torch_key(model, path)] = core.torch_shape(
            path, tuple(leaf.shape), family.is_transposed_conv(path))
    return out


def _spatial_dims(model: Any) -> int:
    if hasattr(model, "dims"):
        return model.dims()
    return 3  # the 3D CNNs (their converters speak 3D layouts)


def needs_inflation(state: State, model: Any, family: Family) -> bool:
    """Whether a canonical state dict holds 2D kernels for a 3D model, or VideoMAE tubelets
    of another depth than the model's patch."""
    if _spatial_dims(model) != 3:
        return False
    if family is videomae.FAMILY:
        w = state.get(videomae.PROJECTION + "weight")
        return w is not None and w.ndim == 5 and tuple(w.shape[2:]) != tuple(model.patch())
    return any(k.endswith("weight") and v.ndim == 4 for k, v in state.items())


# ----------------------------------------------------------------------------------------
# The rewrite.


def _inflate_kernels(state: State, targets: dict, mode: str, notes: list[str]) -> State:
    out = dict(state)
    count, shapes = 0, set()
    for key, w in state.items():
        want = targets.get(key)
        if (want is None or w.ndim != 4 or len(want) != 5 or want[0] != w.shape[0]
                or tuple(want[3:]) != tuple(w.shape[2:])):
            continue  # not a 2D kernel of a 3D one (another shape is reported by the merge;
            # input channels are the merge's too: init.channels)
        out[key] = inflate_kernel(w, int(want[2]), mode)
        count += 1
        shapes.add((tuple(w.shape[2:]), int(want[2])))
    if count:
        kinds = ", ".join(f"{h}x{w} -> {d}x{h}x{w}" for (h, w), d in sorted(shapes))
        notes.append(f"{count} 2D kernels inflated over depth ({mode}): {kinds}")
    return out


def _timm_positions(state: State, model: Any, notes: list[str]) -> State:
    key = vit.TIMM_POSITIONS
    table = state.get(key)
    if table is None:
        return state
    out = dict(state)
    if model.pos_embed != "learned":
        out.pop(key)
        notes.append(f"{key}: not used (the model's positions are {model.pos_embed!r})")
        return out
    rows, dim = int(table.shape[1]), int(table.shape[2])
    side = vit._power_side(rows, 2)
    with_cls = side is None and "cls_token" in state and vit._power_side(rows - 1, 2) is not None
    if with_cls:
        side = vit._power_side(rows - 1, 2)
    if side is None:
        raise ValueError(f"{key} {tuple(table.shape)}: {rows} rows are neither a square grid nor "
                         "one (CLS) plus a square grid; cannot tell the 2D patch grid")
    cls_row = table[:, :1] if with_cls else None
    grid2 = table[:, int(with_cls):].reshape(side, side, dim).astype(np.float64)
    gd, gh, gw = model.grid()
    if (gh, gw) != (side, side):
        grid2 = np.einsum("ah,hwd->awd", interpolation_matrix(side, gh, model.pos_interp), grid2)
        grid2 = np.einsum("bw,awd->abd", interpolation_matrix(side, gw, model.pos_interp), grid2)
    grid3 = np.broadcast_to(grid2[None], (gd, gh, gw, dim)).reshape(1, gd * gh * gw, dim)
    grid3 = grid3.astype(table.dtype)
    how = (f"{key}: 2D grid {side}x{side} -> {gh}x{gw} ({model.pos_interp}, in-plane) repeated "
           f"over {gd} depth positions")
    if model.pos_embed_cls:
        row = cls_row if cls_row is not None else np.zeros((1, 1, dim), table.dtype)
        out[key] = np.concatenate([row, grid3], 1)
        how += "; CLS row " + ("carried" if cls_row is not None else "zero (the source has none)")
    else:
        out[key] = grid3
        if cls_row is not None and model.cls_token and "cls_token" in state:
            out["cls_token"] = state["cls_token"] + cls_row
            how += "; the CLS row added into cls_token (the model has no CLS position)"
        elif cls_row is not None:
            how += "; the CLS row dropped (the model has no CLS token)"
    notes.append(how)
    return out


def _videomae(state: State, model: Any, targets: dict, mode: str, notes: list[str]) -> State:
    out = dict(state)
    key = videomae.PROJECTION + "weight"
    w = state.get(key)
    want = targets.get(key)
    if w is not None and want is not None and w.ndim == 5 and len(want) == 5:
        if tuple(w.shape[3:]) != tuple(want[3:]):
            raise ValueError(f"{key} {tuple(w.shape)}: the video patch is {w.shape[3]}x{w.shape[4]} "
                             f"in-plane, the model's {want[3]}x{want[4]}: build the model with "
                             f"patch_size=(depth, {w.shape[3]}, {w.shape[4]})")
        if w.shape[2] != want[2]:
            out[key] = resample_depth(w, int(want[2]), mode)
            notes.append(f"{key}: tubelet of {w.shape[2]} frames -> patch depth {want[2]} ({mode})")
    table_key = videomae.ENCODER + "embeddings.position_embeddings"
    if model.pos_embed == "learned" and table_key in targets:
        n = int(np.prod(model.grid()))
        table = sincos_table(n, model.hidden_size)[None]
        if model.pos_embed_cls:
            table = np.concatenate([np.zeros((1, 1, model.hidden_size), np.float32), table], 1)
        if table_key in out:
            notes.append(f"{table_key}: the file's table (for its clip grid) replaced")
        out[table_key] = table
        notes.append(f"{table_key}: VideoMAE's sin-cos table for {n} volume tokens (learned "
                     "from there)")
    elif table_key in out and model.pos_embed == "none":
        out.pop(table_key)
        notes.append(f"{table_key}: not used (the model has no positions)")
    return out


def _inflated_family(family: Family, fmt: str) -> Family:
    def canonicalize(state: State) -> tuple[State, str]:
        return state, fmt
    return dataclasses.replace(family, canonicalize=canonicalize)


def prepare(source: str | os.PathLike | Mapping, model: Any, *, source_family: str | None = None,
            inflate: str = "mean", trust_pickle: bool = False) -> Prepared | None:
    """The source rewritten for ``model`` when it needs it: 2D kernels and positions for a 3D
    model, or VideoMAE tubelets for another patch depth (see the module docstring); ``None``
    when the file fits the model as it is and no ``source_family`` is named (the plain load
    then reads it). ``source_family``: one of :data:`SOURCES`, or ``None`` to read the family
    off the keys. Errors name the file, the family and the key."""
    from jaxbrain.convert import family_for_source
    if inflate not in MODES:
        raise ValueError(f"init.inflate={inflate!r}: expected one of {MODES}")
    state, name = core.read_state_dict(source, trust_pickle)
    if source_family is None:
        family = _detect(state, model) or family_for_source(model, state)
    else:
        family = family_named(source_family, model)
    try:
        canonical, fmt = family.canonicalize(dict(state))
    except ValueError as e:
        raise ValueError(f"{name}: init.from={source_family or family.name!r}: {e}") from e
    notes: list[str] = []
    if family is videomae.FAMILY and videomae.ENCODER + "layernorm.weight" in canonical \
            and videomae.drops_final_norm(model):
        notes.append(f"{videomae.ENCODER}layernorm: the pre-trained encoder's final norm not used "
                     "(mean pooling into a fresh fc_norm, as VideoMAE's fine-tuning; "
                     "model.final_norm=True keeps it)")
    if not needs_inflation(canonical, model, family) and not (
            family is videomae.FAMILY and getattr(model, "pos_embed", None) == "learned"):
        if source_family is None:
            return None
        return Prepared(canonical, _inflated_family(family, fmt), name, fmt, notes)
    targets = _targets(model, family)
    before = len(notes)
    if family is videomae.FAMILY:
        canonical = _videomae(canonical, model, targets, inflate, notes)
    else:
        canonical = _inflate_kernels(canonical, targets, inflate, notes)
        if family is vit.TIMM_FAMILY:
            canonical = _timm_positions(canonical, model, notes)
    fmt = f"{fmt}, inflated to 3D ({inflate})" if len(notes) > before else fmt
    return Prepared(canonical, _inflated_family(family, fmt), name, fmt, notes)


def setting_hints(report: core.LoadReport, model: Any) -> list[str]:
    """The model setting that makes a failed ViT load fit, when the file's final norm says it:
    a final norm on the tokens (timm's token pooling ``norm.*``, VideoMAE's pre-training
    ``layernorm``) for a model without one, or none (average pooling into ``fc_norm``) for a
    model with one."""
    from jaxbrain.models.vit import ViT
    if not isinstance(model, ViT):
        return []
    norms = ("norm.weight", videomae.ENCODER + "layernorm.weight")
    unused = {k for k, _ in report.unused}
    missing = {k for k, _ in report.missing}
    if unused & set(norms) and not model.uses_final_norm():
        return [f"the file has a final norm on the tokens ({', '.join(sorted(unused & set(norms)))}"
                ": token pooling): set model.pool=cls (or model.final_norm=True)"]
    if missing & set(norms) and model.uses_final_norm():
        return ["the file has no final norm on the tokens (average pooling into fc_norm): set "
                "model.pool=mean"]
    return []


def _detect(state: State, model: Any) -> Family | None:
    """The 2D / video family whose keys ``state`` shows and that serves ``model``."""
    from jaxbrain.convert import family_of
    names = set(family_of(model).model_names)
    for family in _FAMILIES.values():
        if not names & set(family.model_names):
            continue
        try:
            canonical, _ = family.canonicalize(dict(state))
        except ValueError:
            continue
        if family.detect(canonical):
            return family
    return None


# ----------------------------------------------------------------------------------------
# Model arguments for the command line (python -m jaxbrain.convert from-torch --from ...).


def config_for(source_family: str, state: State, model_name: str) -> dict:
    """The 3D model's constructor arguments read off a 2D or video source: the source's own
    (:attr:`Family.config_for`) with patch sizes, image sizes and stem kernels lifted to
    three axes (a cube over the in-plane size; VideoMAE's tubelet depth becomes the in-plane
    patch size)."""
    family = _FAMILIES.get(source_family)
    if family is None:
        raise ValueError(f"--from {source_family!r}: expected one of {tuple(_FAMILIES)}")
    canonical, _ = family.canonicalize(dict(state))
    cfg = dict(family.config_for(canonical, model_name))
    patch = cfg.get("patch_size")
    if patch is not None and len(patch) == 2:
        cfg["patch_size"] = (patch[0],) + tuple(patch)
    elif patch is not None and len(patch) == 3:
        cfg["patch_size"] = (patch[1],) + tuple(patch[1:])
    size = cfg.get("img_size")
    if size is not None and len(size) == 2:
        cfg["img_size"] = (size[0],) + tuple(size)
    t = cfg.get("conv1_t_size")
    if isinstance(t, tuple) and len(t) == 2:
        cfg["conv1_t_size"] = t[0] if t[0] == t[1] else (t[0],) + t
    if source_family == "torchvision_resnet":
        cfg.setdefault("conv1_t_stride", 2)
    return cfg


__all__ = ["MODES", "Prepared", "SOURCES", "config_for", "depth_matrix", "family_named",
           "inflate_kernel", "needs_inflation", "prepare", "resample_depth", "setting_hints"]
