"""DINO slice encoders <-> PyTorch: the DINOv3 and DINOv2 originals' state dicts, their training
checkpoints with the DINO / iBOT heads, and transformers' DINOv3ViT / Dinov2 layouts.

``FAMILY`` (:class:`~jaxbrain.models.dino.DinoViT`) exchanges the backbone under the
originals' names; a model with ``pos_embed="rope"`` takes DINOv3's, one with a learned table
DINOv2's:

- DINOv3 (``dinov3/models/vision_transformer.py``): ``cls_token [1, 1, D]``,
  ``storage_tokens [1, R, D]``, ``mask_token [1, D]``, ``patch_embed.proj.{weight [D, 3, p, p],
  bias}``, ``rope_embed.periods [D_head / 4]`` (a buffer: checked against ``rope_base`` on
  import, relative tolerance 5e-3 since the original may hold it in bfloat16; its values
  say the RoPE dtype: bfloat16-rounded periods read as ``rope_dtype="bf16"``, the
  original's ``pos_embed_rope_dtype``, else "fp32"; export writes the model's),
  ``blocks.i.{norm1, attn.qkv.{weight [3D, D], bias, bias_mask}, attn.proj, ls1.gamma, norm2,
  mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``. ``bias_mask`` (1 on q and v, 0 on k) exists with
  ``qkv_bias`` and ``mask_k_bias`` and is checked on import.
- DINOv2 (``dinov2/models/vision_transformer.py``): the same, with ``pos_embed [1, 1 + N, D]``
  (the CLS row first), ``register_tokens [1, R, D]`` and no RoPE; blocks flat (``blocks.i.``,
  ``block_chunks=0``, the hub models) or chunked for FSDP (``blocks.{c}.{i}.``, i the block's
  global index): both are read, :func:`save_torch` writes either (``block_chunks``).

Training checkpoints: ``{"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}`` (the
originals' ``teacher_checkpoint.pth``) and the trainer's ``{"model": {"student.backbone.*",
"teacher.backbone.*", ...}}``: the teacher's backbone is read (else the student's); the
heads, the other network and the losses' buffers are reported as ignored. The heads
themselves load with :func:`load_head` (into a :class:`~jaxbrain.models.dino.DINOHead`:
``mlp.{2i}.{weight, bias}`` for layer i of the MLP, ``mlp.{weight, bias}`` with one layer,
``last_layer.weight`` (DINOv3) or ``last_layer.weight_g [out, 1]`` and ``weight_v [out,
bottleneck]`` (DINOv2's weight norm)); :func:`save_training` writes such a checkpoint.

transformers' layouts read into the same model (``canonicalize`` turns them into the
original's names; :func:`save_torch` with ``layout="hf"`` writes them): ``DINOv3ViTModel``
(``embeddings.{cls_token, mask_token [1, 1, D], register_tokens, patch_embeddings}``,
``model.layer.i.{norm1, attention.{q,k,v,o}_proj, layer_scale1.lambda1, norm2, mlp.{up,down}_proj,
layer_scale2.lambda1}``, ``norm``; no k bias is DINOv3's masked k bias, whose ``bias_mask`` the
import adds) and ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (``embeddings.{cls_token,
mask_token, position_embeddings, register_tokens, patch_embeddings.projection}``,
``encoder.layer.i.{norm1, attention.{q,k,v,o}_proj, layer_scale1.lambda1, norm2, mlp.fc1,
mlp.fc2, layer_scale2.lambda1}``, ``layernorm``; transformers < 5 named the attention
``attention.attention.{query,key,value}`` and ``attention.output.dense``, read as well; export
writes the current names). An
empty ``register_tokens [1, 0, D]`` of a model without registers is dropped.

Not recorded in the files: DINOv2's ``num_heads`` (DINOv3's follows from the periods) and
the LayerNorm eps (1e-5 is assumed for DINOv3 files with ``bias_mask``, the hub models, else
1e-6).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from jaxbrain.convert import core
from jaxbrain.convert.core import Family, Path, State
from jaxbrain.models.dino import DINOHead
from jaxbrain.models.vit import rope_periods

PERIODS = "rope_embed.periods"
PATCH = "patch_embed.proj."
NETS = ("teacher.", "model_ema.", "student.")  # training checkpoints: the network read, in order
HEADS = ("dino_head.", "ibot_head.")
# Keys of a training checkpoint beyond the backbone read (reported as ignored).
OTHERS = HEADS + NETS + ("gram_teacher.", "dino_loss.", "ibot_patch_loss.", "koleo_loss.")
PERIODS_RTOL = 5e-3

_FLAX_TO_TORCH = [
    (r"^patch_embedding\.(kernel|bias)$", PATCH + r"\1"),
    (r"^position_embeddings$", "pos_embed"),
    (r"^blocks_(\d+)\.", r"blocks.\1."),
    (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.linear1\.", ".mlp.fc1."),
    (r"\.mlp\.linear2\.", ".mlp.fc2."),
    (r"\.(kernel|scale)$", ".weight"),
]


def is_v3(model) -> bool:
    """DINOv3's names (RoPE, storage tokens) unless the model has DINOv2's learned table."""
    return model.pos_embed != "learned"


def torch_key(model, path: Path) -> str:
    key = ".".join(path)
    if key == "registers":
        return "storage_tokens" if is_v3(model) else "register_tokens"
    for pattern, repl in _FLAX_TO_TORCH:
        key = re.sub(pattern, repl, key)
    return key


def dummy_input(model) -> tuple:
    size = tuple(g * p for g, p in zip(model.grid(), model.patch()))
    return (1, *size, model.in_channels)


def bias_mask(hidden: int) -> np.ndarray:
    mask = np.ones(3 * hidden, np.float32)
    mask[hidden:2 * hidden] = 0.0
    return mask


def buffers(model) -> State:
    out: State = {}
    if model.pos_embed == "rope":
        out[PERIODS] = rope_periods(model.hidden_size // model.num_heads, model.rope_base,
                                    model.rope_dtype)
    if is_v3(model) and model.qkv_bias and model.mask_k_bias:
        for i in range(model.depth):
            out[f"blocks.{i}.attn.qkv.bias_mask"] = bias_mask(model.hidden_size)
    return out


def ignored(model, key: str) -> bool:
    return key.startswith(OTHERS)


# ----------------------------------------------------------------------------------------
# Reading: every accepted layout -> the original's names.

_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def _strip_net(state: State) -> tuple[State, str]:
    """A training checkpoint's network (teacher, else EMA, else student) with its prefix
    removed; other keys unchanged."""
    for net in NETS:
        if any(k.startswith(net + "backbone.") for k in state):
            state = {(k[len(net):] if k.startswith(net) else k): v for k, v in state.items()}
            return state, f", {net[:-1]} of a training checkpoint"
    return state, ""


def _select_net(state: State) -> tuple[State, str]:
    """:func:`_strip_net`, then ``backbone.`` removed."""
    state, where = _strip_net(state)
    if any(k.startswith("backbone.") for k in state):
        state = {(k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in state.items()}
        where = where or ", training checkpoint (backbone + heads)"
    return state, where


def _split_qkv(get, prefix: str, names: tuple[str, str, str]) -> State:
    """Fused qkv weight / bias (and bias_mask for a missing k bias) from three projections."""
    q, k, v = (prefix + n for n in names)
    out = {"weight": np.concatenate([get(q + ".weight"), get(k + ".weight"), get(v + ".weight")], 0)}
    biases = [get(n + ".bias", None) for n in (q, k, v)]
    if any(b is not None for b in biases):
        d = out["weight"].shape[1]
        if biases[1] is None:
            out["bias_mask"] = bias_mask(d)
        out["bias"] = np.concatenate([b if b is not None else np.zeros(d, np.float32) for b in biases])
    return out


def _from_hf(state: State, v3: bool) -> State:
    """transformers' DINOv3ViTModel (``v3``) or Dinov2Model state dict in the original's names.
    Keys not of the layout are kept (and then reported as unused)."""
    state = dict(state)
    out: State = {}

    def get(key, default=KeyError):
        if key in state:
            return state.pop(key)
        if default is KeyError:
            raise ValueError(f"transformers {'DINOv3ViT' if v3 else 'Dinov2'} state dict without {key}")
        return default

    emb = "embeddings."
    out["cls_token"] = get(emb + "cls_token")
    mask = get(emb + "mask_token", None)
    if mask is not None:
        out["mask_token"] = mask.reshape(1, -1)
    regs = get(emb + "register_tokens", None)
    if regs is not None and regs.shape[1] > 0:
        out["storage_tokens" if v3 else "register_tokens"] = regs
    patch = emb + ("patch_embeddings." if v3 else "patch_embeddings.projection.")
    out[PATCH + "weight"], out[PATCH + "bias"] = get(patch + "weight"), get(patch + "bias")
    if not v3:
        out["pos_embed"] = get(emb + "position_embeddings")
    layer = "model.layer." if v3 else "encoder.layer."
    ids = sorted({int(m.group(1)) for k in state if (m := re.match(re.escape(layer) + r"(\d+)\.", k))})
    for i in ids:
        src, dst = f"{layer}{i}.", f"blocks.{i}."
        legacy = f"{src}attention.attention.query.weight" in state  # transformers < 5 (Dinov2)
        attn = src + ("attention.attention." if legacy else "attention.")
        names = ("query", "key", "value") if legacy else ("q_proj", "k_proj", "v_proj")
        for k, a in _split_qkv(get, attn, names).items():
            out[dst + "attn.qkv." + k] = a
        proj = src + ("attention.output.dense." if legacy else "attention.o_proj.")
        fc1, fc2 = ("mlp.up_proj.", "mlp.down_proj.") if v3 else ("mlp.fc1.", "mlp.fc2.")
        for a, b in ((proj, "attn.proj."), (src + "norm1.", "norm1."), (src + "norm2.", "norm2."),
                     (src + fc1, "mlp.fc1."), (src + fc2, "mlp.fc2.")):
            for leaf in ("weight", "bias"):
                if a + leaf in state:
                    out[dst + b + leaf] = get(a + leaf)
        for j in (1, 2):
            gamma = get(f"{src}layer_scale{j}.lambda1", None)
            if gamma is not None:
                out[f"{dst}ls{j}.gamma"] = gamma
    norm = "norm." if v3 else "layernorm."
    for leaf in ("weight", "bias"):
        out["norm." + leaf] = get(norm + leaf)
    out.update(state)  # anything left: reported as unused
    return out


def _why_not(state: State) -> str | None:
    w = state.get(PATCH + "weight")
    if w is None:
        return f"no {PATCH}weight"
    if w.ndim != 4:
        return f"{PATCH}weight has {w.ndim - 2} spatial axes (DINO backbones are 2D)"
    if "cls_token" not in state:
        return "no cls_token"
    if not (PERIODS in state or "storage_tokens" in state or "mask_token" in state
            or "register_tokens" in state):
        return ("none of rope_embed.periods, storage_tokens, register_tokens, mask_token (a plain "
                "timm VisionTransformer is read by the 'timm' layout)")
    return None


def canonicalize(state: State) -> tuple[State, str]:
    state, where = _select_net(dict(state))
    if "embeddings.patch_embeddings.weight" in state:
        state, fmt = _from_hf(state, v3=True), "transformers DINOv3ViTModel"
    elif "embeddings.patch_embeddings.projection.weight" in state:
        fmt = ("transformers Dinov2WithRegistersModel" if "embeddings.register_tokens" in state
               else "transformers Dinov2Model")
        state = _from_hf(state, v3=False)
    else:
        fmt = "DINOv3 original" if (PERIODS in state or "storage_tokens" in state) else "DINOv2 original"
    if any(_CHUNKED.match(k) for k in state):
        state = {_CHUNKED.sub(r"blocks.\2.", k): v for k, v in state.items()}
        fmt += ", chunked blocks"
    why = _why_not(state)
    if why is not None:
        raise ValueError(f"not a DINOv2 / DINOv3 backbone state dict: {why}")
    return state, fmt + where


def detect(state: State) -> bool:
    return _why_not(state) is None


def periods_base(periods: np.ndarray) -> float:
    """The RoPE base of a ``rope_embed.periods`` buffer (periods[-1] = base ** ((n - 1) / n)),
    to 3 significant digits."""
    n = len(periods)
    if n < 2:
        return 100.0
    base = float(np.exp(np.log(float(periods[-1])) * n / (n - 1)))
    return float(f"{base:.3g}")


def infer_config(state: State) -> dict:
    """DinoViT arguments off the shapes (see the module docstring for what is not there)."""
    w = state.get(PATCH + "weight")
    if w is None:
        return {}
    hidden = int(w.shape[0])
    cfg: dict = dict(in_channels=int(w.shape[1]), patch_size=int(w.shape[2]), hidden_size=hidden)
    if w.shape[2] != w.shape[3]:
        cfg["patch_size"] = (int(w.shape[2]), int(w.shape[3]))
    cfg["depth"] = len({m.group(1) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        cfg["mlp_dim"] = int(fc1.shape[0])
    cfg["qkv_bias"] = "blocks.0.attn.qkv.bias" in state
    cfg["mask_k_bias"] = "blocks.0.attn.qkv.bias_mask" in state
    cfg["mask_token"] = "mask_token" in state
    v3 = "pos_embed" not in state
    cfg["layer_scale_init"] = (1e-5 if v3 else 1.0) if "blocks.0.ls1.gamma" in state else None
    regs = state.get("storage_tokens" if v3 else "register_tokens")
    cfg["num_registers"] = 0 if regs is None else int(regs.shape[1])
    if v3:
        periods = state.get(PERIODS)
        cfg["pos_embed"] = "rope"
        cfg["norm_eps"] = 1e-5 if cfg["mask_k_bias"] else 1e-6
        if periods is not None and len(periods):
            cfg["num_heads"] = hidden // (4 * len(periods))
            cfg["rope_base"] = periods_base(np.asarray(periods))
            head_dim, base = hidden // cfg["num_heads"], cfg["rope_base"]
            bf16 = rope_periods(head_dim, base, "bf16")
            cfg["rope_dtype"] = ("bf16" if np.array_equal(np.asarray(periods, np.float32), bf16)
                                 and not np.array_equal(bf16, rope_periods(head_dim, base)) else "fp32")
    else:
        rows = int(state["pos_embed"].shape[1]) - 1
        side = math.isqrt(max(rows, 0))
        cfg.update(pos_embed="learned", pos_embed_cls=True, norm_eps=1e-6, drop_path_mode="dinov2")
        if cfg["num_registers"]:
            cfg.update(pos_interp="bicubic_aa", pos_interp_offset=0.0)
        else:
            cfg.update(pos_interp="bicubic", pos_interp_offset=0.1)
        if side * side == rows:
            patch = cfg["patch_size"] if isinstance(cfg["patch_size"], int) else cfg["patch_size"][0]
            cfg["img_size"] = side * patch
    return cfg


def missing(model_name: str, kwargs: dict) -> str | None:
    if "num_heads" not in kwargs:
        return ("DINOv2 files do not record num_heads: give --set num_heads=N (6 for ViT-S, 12 for "
                "ViT-B, 16 for ViT-L)")
    return None


def hints(model, source: State, expected: dict) -> list[str]:
    out = []
    periods = source.get(PERIODS)
    if periods is not None and model.pos_embed == "rope":
        want = rope_periods(model.hidden_size // model.num_heads, model.rope_base)
        if periods.shape != want.shape:
            out.append(f"{PERIODS} has {len(periods)} entries, the model's heads {len(want)} "
                       f"(head_dim / 4): num_heads={model.hidden_size // (4 * max(len(periods), 1))}?")
        elif not np.allclose(periods, want, rtol=PERIODS_RTOL, atol=0.0):
            out.append(f"{PERIODS} is the RoPE of base {periods_base(periods)}, the model has "
                       f"rope_base={model.rope_base}")
    if periods is not None and model.pos_embed != "rope":
        out.append("the checkpoint is DINOv3's (RoPE): build the model with pos_embed='rope'")
    if "pos_embed" in source and model.pos_embed != "learned":
        out.append("the checkpoint is DINOv2's (learned pos_embed): build the model with "
                   "pos_embed='learned', pos_embed_cls=True (dino_preset('dinov2_vitb14'))")
    table, want = source.get("pos_embed"), expected.get("pos_embed")
    if table is not None and want is not None and table.shape != tuple(want.shape):
        out.append(f"pos_embed has {table.shape[1]} rows, the model {want.shape[1]} (1 + the patch "
                   "grid of img_size): set img_size to the trained one; other sizes are resized")
    if any(k.endswith(".attn.qkv.bias_mask") for k in source) and not model.mask_k_bias:
        out.append("the checkpoint masks the k bias (bias_mask): build with mask_k_bias=True")
    return out


FAMILY = Family(
    name="DINO ViT (DINOv3 / DINOv2 original)",
    torch_key=torch_key,
    buffers=buffers,
    canonicalize=canonicalize,
    dummy_input=dummy_input,
    hints=hints,
    ignored=ignored,
    detect=detect,
    model_names=("dino_vit",),
    config_for=lambda state, model_name: infer_config(state),
    missing=missing,
    buffer_rtol=((PERIODS, PERIODS_RTOL),),
    note=("DINOv2 files do not record num_heads; the LayerNorm eps is not in the files (1e-6, 1e-5 "
          "for DINOv3 hub files with bias_mask)"),
)


# ----------------------------------------------------------------------------------------
# Writing: the original's names, chunked DINOv2 blocks, transformers' layouts.


def to_hf(state: State, model) -> State:
    """The original-layout ``state`` of ``model`` in transformers' DINOv3ViTModel (RoPE models)
    or Dinov2Model / Dinov2WithRegistersModel names."""
    v3, d = is_v3(model), model.hidden_size
    state = dict(state)
    out: State = {}
    emb = "embeddings."
    out[emb + "cls_token"] = state.pop("cls_token")
    if "mask_token" in state:
        m = state.pop("mask_token")
        out[emb + "mask_token"] = m.reshape(1, 1, -1) if v3 else m
    regs = state.pop("storage_tokens" if v3 else "register_tokens", None)
    if v3 or regs is not None:
        out[emb + "register_tokens"] = regs if regs is not None else np.zeros((1, 0, d), np.float32)
    if not v3:
        out[emb + "position_embeddings"] = state.pop("pos_embed")
    patch = emb + ("patch_embeddings." if v3 else "patch_embeddings.projection.")
    out[patch + "weight"], out[patch + "bias"] = state.pop(PATCH + "weight"), state.pop(PATCH + "bias")
    state.pop(PERIODS, None)
    layer = "model.layer." if v3 else "encoder.layer."
    for i in range(model.depth):
        src, dst = f"blocks.{i}.", f"{layer}{i}."
        attn, names = dst + "attention.", ("q_proj", "k_proj", "v_proj")
        w = state.pop(src + "attn.qkv.weight")
        b = state.pop(src + "attn.qkv.bias", None)
        masked = state.pop(src + "attn.qkv.bias_mask", None) is not None
        for j, n in enumerate(names):
            out[attn + n + ".weight"] = w[j * d:(j + 1) * d]
            if b is not None and not (masked and j == 1):
                out[attn + n + ".bias"] = b[j * d:(j + 1) * d]
        proj = dst + "attention.o_proj."
        fc1, fc2 = ("mlp.up_proj.", "mlp.down_proj.") if v3 else ("mlp.fc1.", "mlp.fc2.")
        for a, c in (("attn.proj.", proj), ("norm1.", dst + "norm1."), ("norm2.", dst + "norm2."),
                     ("mlp.fc1.", dst + fc1), ("mlp.fc2.", dst + fc2)):
            for leaf in ("weight", "bias"):
                if src + a + leaf in state:
                    out[c + leaf] = state.pop(src + a + leaf)
        for j in (1, 2):
            gamma = state.pop(f"{src}ls{j}.gamma", None)
            if gamma is None:
                gamma = np.ones(d, np.float32)  # transformers' layers always hold a LayerScale
            out[f"{dst}layer_scale{j}.lambda1"] = gamma
    norm = "norm." if v3 else "layernorm."
    for leaf in ("weight", "bias"):
        out[norm + leaf] = state.pop("norm." + leaf)
    if state:
        raise ValueError(f"transformers' layout has no place for {sorted(state)[:5]}")
    return out


def chunk_blocks(state: State, depth: int, block_chunks: int) -> State:
    """DINOv2's ``block_chunks`` naming: block i under ``blocks.{i // (depth // chunks)}.{i}``."""
    if block_chunks <= 0:
        return dict(state)
    size = max(depth // block_chunks, 1)
    return {re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m.group(1)) // size}.{m.group(1)}.", k): v
            for k, v in state.items()}


LAYOUTS = ("original", "hf")


def save_torch(params, model, path=None, *, layout: str = "original", block_chunks: int = 0) -> State:
    """The backbone's state dict in the original's names (``layout="original"``; DINOv2 blocks
    chunked with ``block_chunks`` > 0) or transformers' (``"hf"``), written to ``path`` (.pt,
    .pth, .bin, .safetensors) when given. The original's model loads it with ``strict=True``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    state = core.save(params, model, FAMILY, None)
    if layout == "hf":
        state = to_hf(state, model)
    elif block_chunks:
        if is_v3(model):
            raise ValueError("block_chunks: DINOv3's blocks are not chunked (a DINOv2 layout option)")
        state = chunk_blocks(state, model.depth, block_chunks)
    if path is not None:
        core.write_state_dict(state, path)
    return state


# ----------------------------------------------------------------------------------------
# Heads.


def head_key(head: DINOHead, path: Path) -> str:
    if path[0] == "last_layer":
        if path[1] == "weight_g":
            return "last_layer.weight_g"
        return "last_layer.weight_v" if head.weight_norm else "last_layer.weight"
    i = int(path[0].split("_")[1])
    leaf = "weight" if path[-1] == "kernel" else "bias"
    return f"mlp.{leaf}" if max(head.nlayers, 1) == 1 else f"mlp.{2 * i}.{leaf}"


def _head_canonicalize(state: State) -> tuple[State, str]:
    if not any(k.startswith(("mlp.", "last_layer.")) for k in state):
        raise ValueError("not a DINO head state dict: no mlp.* / last_layer.* keys")
    return state, "DINO head"


def head_family(in_dim: int) -> Family:
    """The correspondence of a :class:`DINOHead` reading ``in_dim`` features."""
    return Family(name="DINO head", torch_key=head_key, buffers=lambda head: {},
                  canonicalize=_head_canonicalize, dummy_input=lambda head: (1, in_dim))


def head_state(source, name: str = "dino_head", trust_pickle: bool = False) -> State:
    """The ``name.*`` tensors of a training checkpoint (or state dict), prefix removed."""
    state, where = core.read_state_dict(source, trust_pickle)
    state, _ = _select_net(state)
    prefix = name + "."
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        heads = sorted({k.split(".")[0] for k in state if k.startswith(HEADS)})
        raise ValueError(f"{where}: no {prefix}* keys (heads present: {heads or 'none'})")
    return out


def load_head(source, head: DINOHead, in_dim: int, name: str = "dino_head", *, strict: bool = True,
              params=None, trust_pickle: bool = False):
    """(params, report) of ``head`` from the ``name.*`` keys ("dino_head" or "ibot_head") of a
    training checkpoint; strict as every load (a missing, unused or misshapen key fails,
    named)."""
    state = head_state(source, name, trust_pickle)
    return core.load(state, head, head_family(in_dim), strict=strict, params=params)


def save_training(backbone_params, model, path=None, *, heads: dict | None = None,
                  net: str = "teacher") -> dict:
    """The originals' training checkpoint ``{net: {"backbone.*", "<head>.*"}}`` (``net``
    "teacher" as their ``teacher_checkpoint.pth``); ``heads``: {"dino_head": (params, head,
    in_dim), "ibot_head": ...}. Returns the nested dict of arrays."""
    inner = {"backbone." + k: v for k, v in save_torch(backbone_params, model).items()}
    for name, (params, head, in_dim) in (heads or {}).items():
        if name + "." not in HEADS:
            raise ValueError(f"heads: {name!r}, expected one of {[h[:-1] for h in HEADS]}")
        state = core.save(params, head, head_family(in_dim), None)
        inner.update({f"{name}.{k}": v for k, v in state.items()})
    if path is not None:
        core.write_state_dict(inner, path, wrap=lambda tensors: {net: tensors})
    return {net: inner}


# ----------------------------------------------------------------------------------------
# The pretraining model: encoder + DINO / iBOT heads in one state dict.
#
# ``STUDENT_FAMILY`` serves a model that is a DinoViT in its fields with the encoder's
# parameters under ``encoder`` and DINOHead modules under ``dino_head`` (and ``ibot_head``),
# their shape read from ``head_nlayers`` and ``head_weight_norm``: the originals' training
# checkpoint, ``{"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}`` (registered for
# ``jaxbrain.models.dino_heads.DinoStudent``, "dino_student"). Detection (``inspect``,
# ``from-torch`` without ``--model``) leaves such files to ``FAMILY``, the backbone alone;
# ``encoder_only`` exchanges ``backbone.*``.


def _head_like(model) -> DINOHead:
    return DINOHead(1, nlayers=getattr(model, "head_nlayers", 3),
                    weight_norm=bool(getattr(model, "head_weight_norm", False)))


def student_key(model, path: Path) -> str:
    if path[0] == "encoder":
        return "backbone." + torch_key(model, path[1:])
    if path[0] + "." in HEADS:
        return f"{path[0]}.{head_key(_head_like(model), path[1:])}"
    raise ValueError(f"{'/'.join(path)}: not under encoder, dino_head or ibot_head")


def student_canonicalize(state: State) -> tuple[State, str]:
    state, where = _strip_net(dict(state))
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise ValueError("not a DINO training checkpoint: no backbone.* keys (a bare backbone goes "
                         "into DinoViT)")
    canon, fmt = canonicalize(backbone)
    rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    return {**{"backbone." + k: v for k, v in canon.items()}, **rest}, fmt + (where or ", training checkpoint")


def student_config(state: State, model_name: str = "dino_student") -> dict:
    """The backbone's arguments (:func:`infer_config`) and the heads' off their shapes."""
    cfg = infer_config({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    mlp = sorted({int(m.group(1)) for k in state if (m := re.match(r"^dino_head\.mlp\.(\d+)\.weight$", k))})
    last = state.get("dino_head.last_layer.weight_v", state.get("dino_head.last_layer.weight"))
    if last is not None:
        cfg.update(head_prototypes=int(last.shape[0]), head_bottleneck=int(last.shape[1]),
                   head_weight_norm="dino_head.last_layer.weight_g" in state,
                   head_nlayers=max(len(mlp), 1))
    if mlp and len(mlp) > 1:
        cfg["head_hidden"] = int(state[f"dino_head.mlp.{mlp[0]}.weight"].shape[0])
    ibot = state.get("ibot_head.last_layer.weight_v", state.get("ibot_head.last_layer.weight"))
    cfg["ibot_separate_head"] = ibot is not None
    if ibot is not None:
        cfg["ibot_prototypes"] = int(ibot.shape[0])
    return cfg


def _student_buffers(model) -> State:
    return {"backbone." + k: v for k, v in buffers(model).items()}


def _student_hints(model, source: State, expected: dict) -> list[str]:
    strip = lambda d: {k[len("backbone."):]: v for k, v in d.items() if k.startswith("backbone.")}  # noqa: E731
    return hints(model, strip(source), strip(expected))


STUDENT_FAMILY = Family(
    name="DINO pretraining model (DINOv3 / DINOv2 training checkpoint)",
    torch_key=student_key,
    buffers=_student_buffers,
    canonicalize=student_canonicalize,
    dummy_input=dummy_input,
    encoder_prefix="backbone.",
    hints=_student_hints,
    ignored=lambda model, key: key.startswith(OTHERS[len(HEADS):]),
    wrap=lambda tensors: {"teacher": tensors},
    buffer_rtol=(("backbone." + PERIODS, PERIODS_RTOL),),
    model_names=("dino_student",),
    config_for=student_config,
    missing=missing,
    note="DINOv2 files do not record num_heads; the LayerNorm eps is not in the files",
)


__all__ = ["FAMILY", "STUDENT_FAMILY", "LAYOUTS", "canonicalize", "chunk_blocks", "head_family", "infer_config",
           "load_head", "periods_base", "save_torch", "save_training", "student_config", "to_hf"]
