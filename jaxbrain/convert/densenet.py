"""DenseNet <-> PyTorch: MONAI's ``DenseNet`` / ``DenseNet121`` ... state dicts.

Keys: ``features.conv0.weight``, ``features.norm0.*``,
``features.denseblock{b}.denselayer{j}.layers.{norm1, conv1, norm2, conv2}.*``,
``features.transition{t}.{norm, conv}.*``, ``features.norm5.*``, ``class_layers.out.{weight,
bias}``; every BatchNorm with ``weight``, ``bias``, ``running_mean``, ``running_var`` and
``num_batches_tracked`` (exchanged as the ``batch_stats`` collection). Convolutions have no
bias. torchvision's naming (no ``.layers.``, ``classifier`` for the output layer, and the old
``norm.1`` spelling) is read too; its 2D kernels are then reported as shape mismatches.
A state dict without ``class_layers.out`` is a feature extractor (``num_classes=None``).
"""

from __future__ import annotations

import re

from jaxbrain.convert.core import Family, Path, State, rename
from jaxbrain.models.cnn3d import DENSENETS

LEAVES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var",
          "count": "num_batches_tracked"}
HEAD = "class_layers.out."
ENCODER = "features."
DEPTHS = {tuple(cls.block_config): name for name, cls in DENSENETS.items() if name != "densenet"}


def torch_key(model, path: Path) -> str:
    path = path[1:]  # the collection
    key = ".".join(path[:-1] + (LEAVES.get(path[-1], path[-1]),))
    key = re.sub(r"(\.denselayer\d+\.)", r"\1layers.", key)
    return re.sub(r"^class_layers_out\.", HEAD, key)


def canonicalize(state: State) -> tuple[State, str]:
    if not any(re.match(r"^features\.(conv0|norm0|denseblock\d+)\.", k) for k in state):
        raise ValueError("not a DenseNet state dict: no features.conv0 / features.denseblockN "
                         "keys (expected MONAI's features.*, class_layers.out.*)")
    torchvision = any(re.search(r"\.denselayer\d+\.(norm|relu|conv)", k) for k in state)
    if torchvision:
        state = rename(state, [(r"(\.denselayer\d+)\.(norm|relu|conv)\.?([12])\.", r"\1.layers.\2\3."),
                               (r"^classifier\.", HEAD)])
    cfg = infer_config(state)
    ndim = state["features.conv0.weight"].ndim - 2 if "features.conv0.weight" in state else 3
    name = DEPTHS.get(tuple(cfg.get("block_config", ())), "DenseNet")
    name = name.replace("densenet", "DenseNet")
    origin = "torchvision" if torchvision else "MONAI"
    headless = ", no class_layers.out" if cfg.get("num_classes", 0) is None else ""
    return state, f"{origin} {name} ({ndim}D{headless})"


def _blocks(state: State) -> tuple[int, ...]:
    counts: dict[int, set] = {}
    for k in state:
        m = re.match(r"^features\.denseblock(\d+)\.denselayer(\d+)\.", k)
        if m:
            counts.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return tuple(len(counts[b]) for b in sorted(counts))


def infer_config(state: State) -> dict:
    """DenseNet constructor arguments read off a canonical state dict's shapes."""
    cfg: dict = {}
    w = state.get("features.conv0.weight")
    if w is not None:
        cfg.update(in_channels=int(w.shape[1]), init_features=int(w.shape[0]))
    conv1 = state.get("features.denseblock1.denselayer1.layers.conv1.weight")
    conv2 = state.get("features.denseblock1.denselayer1.layers.conv2.weight")
    if conv1 is not None and conv2 is not None:
        cfg.update(growth_rate=int(conv2.shape[0]), bn_size=int(conv1.shape[0] // conv2.shape[0]))
    if _blocks(state):
        cfg["block_config"] = _blocks(state)
    out = state.get(HEAD + "weight")
    cfg["num_classes"] = int(out.shape[0]) if out is not None else None
    return cfg


def config_for(state: State, model_name: str) -> dict:
    """``infer_config`` for a registry name; a named depth leaves out its own block_config."""
    cfg = infer_config(state)
    default = DENSENETS[model_name].block_config if model_name in DENSENETS else None
    if model_name != "densenet" and tuple(cfg.get("block_config", ())) == tuple(default or ()):
        cfg.pop("block_config")
    return cfg


def missing(model_name: str, kwargs: dict) -> str | None:
    blocks = kwargs.get("block_config")
    if model_name != "densenet" and blocks is not None and \
            tuple(blocks) != tuple(DENSENETS[model_name].block_config):
        other = DEPTHS.get(tuple(blocks))
        return (f"the checkpoint's dense blocks {tuple(blocks)} are not {model_name}'s "
                f"{tuple(DENSENETS[model_name].block_config)}: use --model "
                f"{other or 'densenet'}" + ("" if other else " (its block_config is read off the file)"))
    return None


def hints(model, source: State, expected: dict) -> list[str]:
    out = []
    have = infer_config(source)
    w = source.get("features.conv0.weight")
    if w is not None and w.ndim != 5:
        out.append(f"the checkpoint's kernels are {w.ndim - 2}D (features.conv0.weight has shape "
                   f"{tuple(w.shape)}); this model is 3D")
    for name in ("in_channels", "init_features", "growth_rate", "bn_size"):
        if name in have and have[name] != getattr(model, name):
            out.append(f"the checkpoint has {name}={have[name]}, the model {getattr(model, name)}")
    out += head_hints(have["num_classes"], model.num_classes, HEAD.rstrip("."))
    if "block_config" in have and tuple(have["block_config"]) != tuple(model.block_config):
        out.append(f"the checkpoint has block_config={tuple(have['block_config'])} "
                   f"({DEPTHS.get(tuple(have['block_config']), 'densenet')}), the model "
                   f"{tuple(model.block_config)}")
    return out


def head_hints(theirs: int | None, ours: int | None, layer: str) -> list[str]:
    """What to do when the checkpoint's output layer (``layer``) and the model's differ."""
    if theirs == ours:
        return []
    if theirs is None:
        return [f"the checkpoint has no {layer} (a feature extractor): build the model with "
                "num_classes=None for pooled features, or load with encoder_only=True "
                "(init.encoder_only) to keep a freshly initialised output layer"]
    if ours is None:
        return [f"the checkpoint has a {layer} for {theirs} classes and the model none "
                f"(num_classes=None): give num_classes={theirs}, or load with encoder_only=True"]
    return [f"the checkpoint has num_classes={theirs}, the model {ours} (new_head=True / "
            "--new-head keeps the model's output layer fresh)"]


FAMILY = Family(
    name="DenseNet",
    torch_key=torch_key,
    buffers=lambda model: {},
    canonicalize=canonicalize,
    dummy_input=lambda model: (1, 32, 32, 32, model.in_channels),
    encoder_prefix=ENCODER,
    hints=hints,
    collections=("params", "batch_stats"),
    is_head=lambda key: key in (HEAD + "weight", HEAD + "bias"),
    detect=lambda state: "features.conv0.weight" in state,
    model_names=tuple(DENSENETS),
    config_for=config_for,
    missing=missing,
)
