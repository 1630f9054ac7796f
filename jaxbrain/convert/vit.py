"""ViT <-> PyTorch: MONAI's ``monai.networks.nets.ViT`` state dict (the default layout), and
timm's ``VisionTransformer`` (``TIMM_FAMILY``, :func:`save_timm`; at the end of this module).
The VideoMAE layouts are ``jaxbrain.convert.videomae``.

Keys: ``patch_embedding.patch_embeddings.{weight [D, C, *patch], bias}`` (``proj_type="conv"``),
``patch_embedding.position_embeddings [1, N, D]`` (patch tokens only; MONAI stores it for every
``pos_embed_type``), ``cls_token [1, 1, D]`` and ``classification_head.0`` (with Tanh) or
``classification_head`` (without) when ``classification=True``, ``blocks.i.{norm1, attn.qkv
[3D, D] (+ bias with qkv_bias), attn.out_proj, norm2, mlp.linear1, mlp.linear2}``, ``norm``.

Cross-attention keys: MONAI >= 1.4 holds unused ``blocks.i.norm_cross_attn.*``; MONAI 1.4 to
1.6.0 also unused ``blocks.i.cross_attn.{to_q, to_k, to_v, out_proj}.*`` (1.6.1 replaced that
block by an Identity). Import accepts files with, without or with only some of them and reports
them as ignored. Export writes ``norm_cross_attn`` (as MONAI initialises it), which MONAI >= 1.6.1
loads with ``strict=True``; ``save_torch(..., legacy_cross_attn=True)`` adds the
``cross_attn`` tensors too (initialised as PyTorch initialises them) for MONAI 1.4 to 1.6.0.

Position tables: a model with ``pos_embed="learned"`` reads the table (MONAI's sincos and
fourier tables included, which then become trainable); with "sincos" or "none" the file's table
must equal the model's fixed one (zeros for "none"), and export writes that table. Parameters
MONAI lacks (registers, LayerScale ``blocks.i.ls1.gamma``, ``fc_norm``) keep timm-like names;
MONAI cannot load such exports. ``num_heads`` is not visible in the shapes.
"""

from __future__ import annotations

import re

import numpy as np

from jaxbrain.convert import core
from jaxbrain.convert.core import Family, Path, State
from jaxbrain.models.vit import ViT, sincos_table

PATCH = "patch_embedding.patch_embeddings."
POSITIONS = "patch_embedding.position_embeddings"
_CROSS = re.compile(r"^blocks\.\d+\.(norm_cross_attn|cross_attn)\.")

_FLAX_TO_TORCH = [
    (r"^patch_embedding\.(kernel|bias)$", PATCH + r"\1"),
    (r"^position_embeddings$", POSITIONS),
    (r"^blocks_(\d+)\.", r"blocks.\1."),
    (r"\.(kernel|scale)$", ".weight"),
    (r"^(norm|fc_norm)\.scale$", r"\1.weight"),
]


def full_path(model, path: Path) -> Path:
    """The path inside a ViT (a bare ViTEncoder's paths gain the ``encoder`` prefix)."""
    return path if isinstance(model, ViT) else ("encoder",) + tuple(path)


def torch_key(model, path: Path) -> str:
    path = full_path(model, path)
    if path[0] == "head":
        head = "classification_head.0" if model.post_activation == "tanh" else "classification_head"
        return f"{head}.{'weight' if path[1] == 'kernel' else 'bias'}"
    key = ".".join(path[1:] if path[0] == "encoder" else path)
    for pattern, repl in _FLAX_TO_TORCH:
        key = re.sub(pattern, repl, key)
    return key


def dummy_input(model) -> tuple:
    size = tuple(g * p for g, p in zip(model.grid(), model.patch()))
    return (1, *size, model.in_channels)


def buffers(model) -> State:
    """The position table of a model with a fixed one (MONAI stores a table for every type)."""
    n = int(np.prod(model.grid()))
    if model.pos_embed == "sincos":
        return {POSITIONS: sincos_table(n, model.hidden_size)[None].copy()}
    if model.pos_embed == "none":
        return {POSITIONS: np.zeros((1, n, model.hidden_size), np.float32)}
    return {}


def ignored(model, key: str) -> bool:
    return bool(_CROSS.match(key))


def extra(model) -> State:
    """MONAI >= 1.4's unused ``norm_cross_attn`` of every block (weight 1, bias 0)."""
    d = model.hidden_size
    out: State = {}
    for i in range(model.depth):
        out[f"blocks.{i}.norm_cross_attn.weight"] = np.ones(d, np.float32)
        out[f"blocks.{i}.norm_cross_attn.bias"] = np.zeros(d, np.float32)
    return out


def cross_attn_tensors(model, seed: int = 0) -> State:
    """The unused ``cross_attn`` block of MONAI 1.4 to 1.6.0 (``to_q``, ``to_k``, ``to_v`` with
    a bias when ``qkv_bias``, ``out_proj`` with one), initialised as PyTorch's ``nn.Linear``:
    uniform in +-1/sqrt(fan_in)."""
    rng = np.random.default_rng(seed)
    d = model.hidden_size
    bound = 1.0 / np.sqrt(d)
    out: State = {}
    for i in range(model.depth):
        for name in ("to_q", "to_k", "to_v", "out_proj"):
            out[f"blocks.{i}.cross_attn.{name}.weight"] = rng.uniform(-bound, bound, (d, d)).astype(np.float32)
            if name == "out_proj" or model.qkv_bias:
                out[f"blocks.{i}.cross_attn.{name}.bias"] = rng.uniform(-bound, bound, d).astype(np.float32)
    return out


def save_torch(params, model, path, *, legacy_cross_attn: bool = False) -> State:
    """``jaxbrain.convert.save_torch`` for the MONAI layout, optionally with the
    ``cross_attn`` tensors that MONAI 1.4 to 1.6.0 expects (``strict=True`` there)."""
    state = core.save(params, model, FAMILY, None)
    if legacy_cross_attn:
        state.update(cross_attn_tensors(model))
    if path is not None:
        core.write_state_dict(state, path)
    return state


def _looks_like_videomae(state: State) -> bool:
    return any(".patch_embeddings.projection." in k or k.endswith("patch_embed.proj.weight") for k in state)


def canonicalize(state: State) -> tuple[State, str]:
    fmt = "MONAI ViT"
    if PATCH + "1.weight" in state:
        raise ValueError(f"{PATCH}1.weight: MONAI ViT with proj_type='perceptron' is not read (its "
                         "Linear does not show the patch shape); build it with proj_type='conv'")
    if PATCH + "weight" not in state:
        extra_hint = (" It looks like a VideoMAE or timm state dict: jaxbrain.convert reads those "
                      "through the 'videomae' and 'timm' layouts (chosen by the keys)"
                      ) if _looks_like_videomae(state) else ""
        raise ValueError(f"not a MONAI ViT state dict: no {PATCH}weight." + extra_hint)
    if any(".cross_attn." in k for k in state):
        fmt += ", MONAI 1.4-1.6.0 cross-attention keys"
    elif any(".norm_cross_attn." in k for k in state):
        fmt += ", MONAI >= 1.6.1"
    else:
        fmt += ", MONAI < 1.4 (no cross-attention keys)"
    return state, fmt


def infer_config(state: State) -> dict:
    """Constructor arguments read off the shapes. ``num_heads`` is not among them;
    ``img_size`` only when the position table's length is a square (2D) or cube (3D)."""
    w = state.get(PATCH + "weight")
    if w is None:
        return {}
    cfg: dict = {}
    if w.ndim >= 4:
        cfg.update(in_channels=int(w.shape[1]), patch_size=tuple(int(p) for p in w.shape[2:]))
    cfg["hidden_size"] = int(w.shape[0])
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    cfg["depth"] = depth
    lin = state.get("blocks.0.mlp.linear1.weight")
    if lin is not None:
        cfg["mlp_dim"] = int(lin.shape[0])
    cfg["qkv_bias"] = "blocks.0.attn.qkv.bias" in state
    cfg["cls_token"] = "cls_token" in state
    table = state.get(POSITIONS)
    if table is not None and "patch_size" in cfg:
        k = len(cfg["patch_size"])
        side = round(table.shape[1] ** (1 / k))
        if side ** k == table.shape[1]:
            cfg["img_size"] = tuple(side * p for p in cfg["patch_size"])
    head = state.get("classification_head.0.weight", state.get("classification_head.weight"))
    if head is not None:
        cfg["num_classes"] = int(head.shape[0])
        cfg["post_activation"] = "tanh" if "classification_head.0.weight" in state else None
    if "blocks.0.ls1.gamma" in state:
        cfg["layer_scale_init"] = 1.0
    if "registers" in state:
        cfg["num_registers"] = int(state["registers"].shape[1])
    return cfg


def missing(model_name: str, kwargs: dict) -> str | None:
    needed = [k for k in ("num_heads", "img_size") if k not in kwargs]
    if needed:
        return ("the checkpoint does not record " + " and ".join(needed) + ": give "
                + " ".join(f"--set {k}=" + ("12" if k == "num_heads" else "[96,96,96]") for k in needed)
                + " (the values it was trained with)")
    return None


def hints(model, source: State, expected: dict) -> list[str]:
    out = []
    w = source.get(PATCH + "weight")
    want = expected.get(PATCH + "weight")  # Flax layout (*patch, in, hidden)
    want = None if want is None else core.torch_shape(("kernel",), tuple(want.shape), False)
    if w is not None and want is not None and w.shape != want:
        if w.ndim != len(want):
            out.append(f"the checkpoint's patch embedding has {w.ndim - 2} spatial axes, the model "
                       f"{len(want) - 2} (a 2D checkpoint into a 3D model, or the reverse)")
        elif w.shape[1] != want[1]:
            out.append(f"the checkpoint has in_channels={w.shape[1]}, the model {want[1]} (pretrained "
                       "initialisation adapts channels: init.channels)")
        elif tuple(w.shape[2:]) != tuple(want[2:]):
            out.append(f"the checkpoint has patch_size={tuple(w.shape[2:])}, the model {tuple(want[2:])}")
    table, want_table = source.get(POSITIONS), expected.get(POSITIONS)
    if table is not None and want_table is not None and table.shape != tuple(want_table.shape):
        out.append(f"the checkpoint's position table has {table.shape[1]} rows, the model "
                   f"{want_table.shape[1]}: img_size / patch_size differ (resize_pos_embed resamples "
                   "a table to another grid)")
    if table is not None and model.pos_embed != "learned":
        fixed = buffers(model)[POSITIONS]
        if table.shape != fixed.shape or not np.array_equal(table, fixed):
            out.append(f"the checkpoint's position table is not this model's fixed "
                       f"pos_embed={model.pos_embed!r} table: build the model with pos_embed='learned'")
    head = source.get("classification_head.0.weight", source.get("classification_head.weight"))
    if head is not None and isinstance(model, ViT) and model.num_classes and head.shape[0] != model.num_classes:
        out.append(f"the checkpoint has {head.shape[0]} classes, the model {model.num_classes} "
                   "(new_head=True / --new-head starts the head fresh)")
    if isinstance(model, ViT) and head is not None:
        tanh = "classification_head.0.weight" in source
        if tanh != (model.post_activation == "tanh"):
            out.append(f"the checkpoint's head is {'Linear + Tanh' if tanh else 'Linear alone'}: "
                       f"build the model with post_activation={'tanh' if tanh else None!r}")
    return out


def is_head(key: str) -> bool:
    return bool(re.match(r"^classification_head(\.0)?\.(weight|bias)$", key))


def detect(state: State) -> bool:
    return PATCH + "weight" in state


NOTE = ("MONAI ViT files do not record num_heads (and img_size only through the position table's "
        "length): give them with --set")

FAMILY = Family(
    name="ViT (MONAI)",
    torch_key=torch_key,
    buffers=buffers,
    canonicalize=canonicalize,
    dummy_input=dummy_input,
    hints=hints,
    ignored=ignored,
    extra=extra,
    is_head=is_head,
    detect=detect,
    model_names=("vit",),
    config_for=lambda state, model_name: infer_config(state),
    missing=missing,
    note=NOTE,
)


# ----------------------------------------------------------------------------------------
# timm's VisionTransformer (2D): another layout of the same model (``TIMM_FAMILY``, chosen by
# ``jaxbrain.convert.load_torch`` from the keys; written by :func:`save_timm`).
#
# Keys: ``cls_token [1, 1, D]``, ``reg_token [1, R, D]``, ``pos_embed [1, rows, D]`` (rows:
# the patches, plus the CLS token unless timm's ``no_embed_class``; ``pos_embed_cls`` here),
# ``patch_embed.proj.{weight [D, C, p, p], bias}``, ``blocks.i.{norm1, attn.qkv (+ bias),
# attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm`` (on the tokens),
# ``fc_norm`` (after average pooling), ``head``. timm's LayerNorms use eps 1e-6; its head is
# a plain Linear on the CLS token (``global_pool="token"``) or on the patch mean ("avg").

TIMM_PATCH = "patch_embed.proj."
TIMM_POSITIONS = "pos_embed"
# The encoder's keys (init.encoder_only): everything but fc_norm and head.
TIMM_ENCODER = ("cls_token", "reg_token", "pos_embed", "patch_embed.", "blocks.", "norm.")

_FLAX_TO_TIMM = [
    (r"^encoder\.patch_embedding\.(kernel|bias)$", TIMM_PATCH + r"\1"),
    (r"^encoder\.position_embeddings$", TIMM_POSITIONS),
    (r"^encoder\.registers$", "reg_token"),
    (r"^encoder\.", ""),
    (r"^blocks_(\d+)\.", r"blocks.\1."),
    (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.linear1\.", ".mlp.fc1."),
    (r"\.mlp\.linear2\.", ".mlp.fc2."),
    (r"\.(kernel|scale)$", ".weight"),
]


def timm_key(model, path: Path) -> str:
    key = ".".join(full_path(model, path))
    for pattern, repl in _FLAX_TO_TIMM:
        key = re.sub(pattern, repl, key)
    return key


def _timm_not(state: State) -> str | None:
    """Why ``state`` is not a timm VisionTransformer state dict (None when it is one)."""
    w = state.get(TIMM_PATCH + "weight")
    if w is None:
        return f"no {TIMM_PATCH}weight"
    if w.ndim != 4:
        return (f"{TIMM_PATCH}weight has {w.ndim - 2} spatial axes (timm's VisionTransformer "
                "has 2; 3D tubelets with these names are MCG-NJU VideoMAE's)")
    if any(k.endswith((".attn.q_bias", ".attn.v_bias", ".gamma_1")) for k in state):
        return "q_bias / v_bias / gamma_1 keys (MCG-NJU VideoMAE's names)"
    return None


def timm_canonicalize(state: State) -> tuple[State, str]:
    why = _timm_not(state)
    if why is not None:
        raise ValueError(f"not a timm VisionTransformer state dict: {why}")
    return dict(state), "timm VisionTransformer"


def timm_detect(state: State) -> bool:
    return _timm_not(state) is None


def timm_is_head(key: str) -> bool:
    return key in ("head.weight", "head.bias")


def _power_side(n: int, k: int) -> int | None:
    side = round(n ** (1 / k)) if n > 0 else 0
    return side if side > 0 and side ** k == n else None


def timm_config(state: State) -> dict:
    """Constructor arguments read off the shapes, with timm's conventions (eps 1e-6, qkv
    bias as stored, no Tanh). ``num_heads`` is not recorded; ``img_size`` comes from the
    position table when its patch rows form a square grid."""
    w = state.get(TIMM_PATCH + "weight")
    if w is None:
        return {}
    cfg: dict = dict(in_channels=int(w.shape[1]), patch_size=tuple(int(p) for p in w.shape[2:]),
                     hidden_size=int(w.shape[0]), norm_eps=1e-6)
    cfg["depth"] = len({m.group(1) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    lin = state.get("blocks.0.mlp.fc1.weight")
    if lin is not None:
        cfg["mlp_dim"] = int(lin.shape[0])
    cfg["qkv_bias"] = "blocks.0.attn.qkv.bias" in state
    cfg["cls_token"] = "cls_token" in state
    if "reg_token" in state:
        cfg["num_registers"] = int(state["reg_token"].shape[1])
    table = state.get(TIMM_POSITIONS)
    if table is None:
        cfg["pos_embed"] = "none"
    else:
        rows, k = int(table.shape[1]), len(cfg["patch_size"])
        side = _power_side(rows, k)
        with_cls = cfg["cls_token"] and side is None and _power_side(rows - 1, k) is not None
        cfg["pos_embed_cls"] = with_cls
        side = _power_side(rows - 1, k) if with_cls else side
        if side is not None:
            cfg["img_size"] = tuple(side * p for p in cfg["patch_size"])
    fc_norm = "fc_norm.weight" in state
    cfg.update(fc_norm=fc_norm, final_norm="norm.weight" in state,
               pool="cls" if cfg["cls_token"] and not fc_norm else "mean")
    if "head.weight" in state:
        cfg["num_classes"] = int(state["head.weight"].shape[0])
    if "blocks.0.ls1.gamma" in state:
        cfg["layer_scale_init"] = 1.0
    return cfg


def timm_hints(model, source: State, expected: dict) -> list[str]:
    out = []
    w, want = source.get(TIMM_PATCH + "weight"), expected.get(TIMM_PATCH + "weight")
    want = None if want is None else core.torch_shape(("kernel",), tuple(want.shape), False)
    if w is not None and want is not None and w.shape != want:
        if w.ndim != len(want):
            out.append(f"the checkpoint's patch embedding has {w.ndim - 2} spatial axes, the model "
                       f"{len(want) - 2} (a 2D checkpoint into a 3D model, or the reverse)")
        else:
            out.append(f"the checkpoint's patch embedding is {tuple(w.shape)}, the model's {want} "
                       "(hidden, channels, patch, patch)")
    table, want_table = source.get(TIMM_POSITIONS), expected.get(TIMM_POSITIONS)
    if table is not None and want_table is not None and table.shape != tuple(want_table.shape):
        out.append(f"the checkpoint's position table has {table.shape[1]} rows, the model "
                   f"{want_table.shape[1]}: img_size / patch_size differ, or the CLS token's row "
                   "(timm's no_embed_class=False is pos_embed_cls=True)")
    head = source.get("head.weight")
    if head is not None and isinstance(model, ViT) and model.num_classes and head.shape[0] != model.num_classes:
        out.append(f"the checkpoint has {head.shape[0]} classes, the model {model.num_classes} "
                   "(new_head=True / --new-head starts the head fresh)")
    return out


def timm_missing(model_name: str, kwargs: dict) -> str | None:
    needed = [k for k in ("num_heads", "img_size") if k not in kwargs]
    if needed:
        return ("timm files do not record " + " and ".join(needed) + ": give "
                + " ".join(f"--set {k}=" + ("12" if k == "num_heads" else "[224,224]") for k in needed)
                + " (the values it was trained with)")
    return None


def _check_timm_exportable(model) -> None:
    bad = []
    if model.dims() != 2:
        bad.append(f"{model.dims()} spatial axes (timm's VisionTransformer is 2D)")
    if model.pos_embed == "sincos":
        bad.append("pos_embed='sincos' (timm stores a learned table: build with 'learned')")
    if isinstance(model, ViT) and model.post_activation is not None:
        bad.append(f"post_activation={model.post_activation!r} (timm's head is a Linear)")
    if model.mask_k_bias:
        bad.append("mask_k_bias (timm's qkv bias has a trained k third)")
    if bad:
        raise ValueError("the model has no timm VisionTransformer equivalent: " + "; ".join(bad))


def save_timm(params, model, path=None) -> State:
    """Writes ``params`` in timm's VisionTransformer layout (.pt/.pth/.bin or .safetensors;
    ``path=None`` only returns the state dict), which timm's model of the same arguments
    loads with ``strict=True``."""
    _check_timm_exportable(model)
    state = core.save(params, model, TIMM_FAMILY, None)
    if path is not None:
        core.write_state_dict(state, path)
    return state


TIMM_FAMILY = Family(
    name="ViT (timm)",
    torch_key=timm_key,
    buffers=lambda model: {},
    canonicalize=timm_canonicalize,
    dummy_input=dummy_input,
    encoder_prefix=TIMM_ENCODER,  # type: ignore[arg-type]  (str.startswith takes the tuple)
    hints=timm_hints,
    is_head=timm_is_head,
    detect=timm_detect,
    model_names=("vit",),
    config_for=lambda state, model_name: timm_config(state),
    missing=timm_missing,
    note="timm files do not record num_heads; LayerNorm eps 1e-6",
)
