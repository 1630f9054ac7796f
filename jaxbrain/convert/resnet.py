"""ResNet <-> PyTorch: MONAI's ``ResNet`` state dicts and MedicalNet's pretrained backbones.

Keys: ``conv1.weight``, ``bn1.*``, ``layer{1..4}.{k}.{conv1, bn1, conv2, bn2[, conv3,
bn3]}.*``, ``layer{s}.0.downsample.{0, 1}.*`` (shortcut B only: a 1^3 convolution, with a
bias when ``bias_downsample``, and a BatchNorm; shortcut A has no tensors) and ``fc.{weight,
bias}``; BatchNorm running statistics and ``num_batches_tracked`` are the ``batch_stats``
collection. MedicalNet files (``{"state_dict": {"module.conv1.weight": ...}}``, no ``fc``)
are read as they are: the wrapper and prefix go, and the backbone loads into
``num_classes=None`` (pooled features) or, with ``encoder_only=True``, under a new head.
MedicalNet's layouts: resnet10 shortcut B without downsample bias, resnet18 / 34 shortcut
A, resnet50 / 101 / 152 / 200 shortcut B without bias; ``conv1_t_stride`` 2.

What the shapes do not show: ``conv1_t_stride`` (MedicalNet 2, MONAI's ``ResNet`` default 1)
and ``no_max_pool`` (False in both), so the command line asks for the stride.
"""

from __future__ import annotations

import re

from jaxbrain.convert.core import Family, Path, State
from jaxbrain.convert.densenet import LEAVES, head_hints
from jaxbrain.models.cnn3d import RESNETS

ENCODER = ("conv1.", "bn1.", "layer")  # torch prefixes of the trunk (encoder_only)
HEAD = ("fc.weight", "fc.bias")
INPLANES = (64, 128, 256, 512)
DEPTHS = {(cls.block, tuple(cls.layers)): name for name, cls in RESNETS.items() if name != "resnet"}


def torch_key(model, path: Path) -> str:
    path = path[1:]  # the collection
    if path[0] == "encoder":
        path = path[1:]
    key = ".".join(path[:-1] + (LEAVES.get(path[-1], path[-1]),))
    return re.sub(r"_(\d+)(?=\.)", r".\1", key)  # layer1_0 -> layer1.0


def canonicalize(state: State) -> tuple[State, str]:
    if not any(re.match(r"^(conv1\.weight$|layer[1-4]\.\d+\.conv1\.weight$)", k) for k in state):
        raise ValueError("not a ResNet state dict: no conv1.weight / layerN.K.conv1.weight keys "
                         "(expected MONAI / MedicalNet's conv1, bn1, layer1..4, fc)")
    cfg = infer_config(state)
    name = DEPTHS.get((cfg.get("block"), tuple(cfg.get("layers", ()))), "resnet")
    ndim = state["conv1.weight"].ndim - 2 if "conv1.weight" in state else 3
    parts = [f"{ndim}D", f"shortcut {cfg['shortcut_type']}"]
    if cfg["num_classes"] is None:
        parts.append("no fc: a MedicalNet / feature-only backbone")
    label = "ResNet" if name == "resnet" else f"ResNet-{name[len('resnet'):]}"
    return dict(state), f"{label} ({', '.join(parts)})"


def infer_config(state: State) -> dict:
    """ResNet constructor arguments read off a canonical state dict's shapes. Not readable:
    ``conv1_t_stride`` and ``no_max_pool``."""
    cfg: dict = {}
    w = state.get("conv1.weight")
    if w is not None:
        cfg.update(in_channels=int(w.shape[1]), conv1_t_size=tuple(int(s) for s in w.shape[2:]))
        if len(set(cfg["conv1_t_size"])) == 1:
            cfg["conv1_t_size"] = cfg["conv1_t_size"][0]
    blocks = [{int(m.group(1)) for k in state if (m := re.match(rf"^layer{s}\.(\d+)\.", k))}
              for s in range(1, 5)]
    if all(blocks):
        cfg["block"] = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
        cfg["layers"] = tuple(len(b) for b in blocks)
        planes = tuple(int(state[f"layer{s}.0.conv1.weight"].shape[0]) for s in range(1, 5)
                       if f"layer{s}.0.conv1.weight" in state)
        if len(planes) == 4 and planes != INPLANES:
            cfg["block_inplanes"] = planes
    downsample = [k for k in state if re.match(r"^layer\d\.0\.downsample\.0\.weight$", k)]
    cfg["shortcut_type"] = "B" if downsample else "A"
    if downsample:
        cfg["bias_downsample"] = any(k.replace("weight", "bias") in state for k in downsample)
    cfg["num_classes"] = int(state["fc.weight"].shape[0]) if "fc.weight" in state else None
    return cfg


def config_for(state: State, model_name: str) -> dict:
    """``infer_config`` for a registry name; a named depth leaves out its own block and layers."""
    cfg = infer_config(state)
    cls = RESNETS.get(model_name)
    if model_name != "resnet" and cls is not None and \
            (cfg.get("block"), tuple(cfg.get("layers", ()))) == (cls.block, tuple(cls.layers)):
        cfg.pop("block")
        cfg.pop("layers")
    return cfg


def missing(model_name: str, kwargs: dict) -> str | None:
    cls = RESNETS.get(model_name)
    if model_name != "resnet" and "layers" in kwargs and \
            (kwargs.get("block", cls.block), tuple(kwargs["layers"])) != (cls.block, tuple(cls.layers)):
        other = DEPTHS.get((kwargs.get("block"), tuple(kwargs["layers"])), "resnet")
        return (f"the checkpoint's {kwargs.get('block')} blocks {tuple(kwargs['layers'])} are not "
                f"{model_name}'s: use --model {other}")
    if "conv1_t_stride" not in kwargs:
        return ("the stride of conv1 is not visible in the weights: give --set conv1_t_stride=2 "
                "(MedicalNet, MONAI's ResNetFeatures) or --set conv1_t_stride=1 (MONAI's ResNet "
                "and resnetN() default); --set no_max_pool=True if the network skipped the max pool")
    return None


def _normal(name: str, value):
    """Comparable argument values: conv1_t_size 7 as (7, 7, 7), sequences as tuples."""
    if name == "conv1_t_size" and isinstance(value, int):
        return (value,) * 3
    return tuple(value) if isinstance(value, (list, tuple)) else value


def hints(model, source: State, expected: dict) -> list[str]:
    out = []
    have = infer_config(source)
    w = source.get("conv1.weight")
    if w is not None and w.ndim != 5:
        out.append(f"the checkpoint's kernels are {w.ndim - 2}D (conv1.weight has shape "
                   f"{tuple(w.shape)}); this model is 3D")
    for name in ("in_channels", "block", "layers", "block_inplanes", "shortcut_type",
                 "bias_downsample", "conv1_t_size"):
        theirs = have.get(name, INPLANES if name == "block_inplanes" else None)
        ours = getattr(model, name)
        if name == "block_inplanes":  # as built: widened
            ours = tuple(int(p * model.widen_factor) for p in ours)
        if theirs is not None and _normal(name, theirs) != _normal(name, ours):
            out.append(f"the checkpoint has {name}={theirs!r}, the model {ours!r}")
    return out + head_hints(have["num_classes"], model.num_classes, "fc")


FAMILY = Family(
    name="ResNet",
    torch_key=torch_key,
    buffers=lambda model: {},
    canonicalize=canonicalize,
    dummy_input=lambda model: (1, 32, 32, 32, model.in_channels),
    encoder_prefix=ENCODER,  # type: ignore[arg-type]  (str.startswith takes the tuple)
    hints=hints,
    collections=("params", "batch_stats"),
    is_head=lambda key: key in HEAD,
    detect=lambda state: "conv1.weight" in state and "layer1.0.conv1.weight" in state,
    model_names=tuple(RESNETS),
    config_for=config_for,
    missing=missing,
    note=("conv1_t_stride (MedicalNet 2, MONAI's ResNet default 1) and no_max_pool are not "
          "recorded in the weights; give them with --set when converting"),
)
