"""ViT <-> PyTorch: VideoMAE state dicts (transformers and the original MCG-NJU code).

Read (``FAMILY``, chosen by ``jaxbrain.convert.load_torch`` from the keys):

- transformers ``VideoMAEModel`` (``embeddings.patch_embeddings.projection.{weight [D, C, t, p, p],
  bias}``, ``encoder.layer.i.{layernorm_before, attention.attention.{query, key, value}
  (query/value biases, no key bias), attention.output.dense, layernorm_after,
  intermediate.dense, output.dense}``, ``layernorm`` without mean pooling),
  ``VideoMAEForVideoClassification`` (the same under ``videomae.``, plus ``fc_norm`` and
  ``classifier``) and ``VideoMAEForPreTraining`` (its decoder, ``encoder_to_decoder`` and
  ``mask_token`` are reported as ignored); transformers < 5 names the biases ``q_bias`` /
  ``v_bias``;
- MCG-NJU ``VideoMAE`` checkpoints: ``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv (fused, no
  bias), attn.q_bias, attn.v_bias, attn.proj, norm2, mlp.fc1, mlp.fc2, gamma_1, gamma_2}``,
  ``norm`` or ``fc_norm``, ``head``; pre-training files put the encoder under ``encoder.``.

A pre-training file's final norm (transformers' ``layernorm`` without mean pooling, MCG-NJU's
``norm``) initialises a model with a final norm; a model that pools by mean without one
(``pool="mean"``, fc_norm: the whole-scan ``videomae`` preset) takes the encoder as VideoMAE's
fine-tuning does, the final norm reported as ignored and ``fc_norm`` starting fresh.
  (MCG-NJU's LayerNorms use eps 1e-6: ``--set norm_eps=1e-6 --set head_norm_eps=1e-6``.)

The canonical names are the classification layout with the attention projections fused into
``videomae.encoder.layer.i.attention.attention.qkv.{weight [3D, D], bias [3D]}`` (the bias is
q | 0 | v: the model's ``mask_k_bias`` form). The fixed sin-cos positions are not in these
state dicts (a stored ``embeddings.position_embeddings`` is ignored): the model regenerates
them (``pos_embed="sincos"``). Neither the number of heads nor the clip size is recorded.

Write: :func:`save_torch` gives the transformers layout (``VideoMAEModel`` for a model without
head, ``VideoMAEForVideoClassification`` with one), which transformers loads with
``strict=True``; :func:`transformers_config` gives the matching ``VideoMAEConfig`` arguments.
"""

from __future__ import annotations

import re

import numpy as np

from jaxbrain.convert import core
from jaxbrain.convert.core import Family, Path, State, rename
from jaxbrain.models.vit import ViT

ENCODER = "videomae."
PROJECTION = ENCODER + "embeddings.patch_embeddings.projection."
_LAYER = ENCODER + "encoder.layer."
_ATTN = ".attention.attention."

_FLAX_TO_TORCH = [
    (r"^encoder\.patch_embedding\.kernel$", PROJECTION + "weight"),
    (r"^encoder\.patch_embedding\.bias$", PROJECTION + "bias"),
    (r"^encoder\.position_embeddings$", ENCODER + "embeddings.position_embeddings"),
    (r"^encoder\.cls_token$", ENCODER + "embeddings.cls_token"),
    (r"^encoder\.registers$", ENCODER + "embeddings.registers"),
    (r"^encoder\.blocks_(\d+)\.", _LAYER + r"\1."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"\.attn\.qkv\.", _ATTN + "qkv."),
    (r"\.attn\.out_proj\.", ".attention.output.dense."),
    (r"\.mlp\.linear1\.", ".intermediate.dense."),
    (r"\.mlp\.linear2\.", ".output.dense."),
    (r"\.ls([12])\.gamma$", r".gamma_\1"),
    (r"^encoder\.norm\.", ENCODER + "layernorm."),
    (r"^head\.", "classifier."),
    (r"\.(kernel|scale)$", ".weight"),
]

# MCG-NJU names -> transformers names (encoder keys; decoder keys are left alone)
_ORIGINAL = [
    (r"^patch_embed\.proj\.", PROJECTION),
    (r"^pos_embed$", ENCODER + "embeddings.position_embeddings"),
    (r"^cls_token$", ENCODER + "embeddings.cls_token"),
    (r"^blocks\.(\d+)\.norm1\.", _LAYER + r"\1.layernorm_before."),
    (r"^blocks\.(\d+)\.norm2\.", _LAYER + r"\1.layernorm_after."),
    (r"^blocks\.(\d+)\.attn\.qkv\.weight$", _LAYER + r"\1" + _ATTN + "qkv.weight"),
    (r"^blocks\.(\d+)\.attn\.q_bias$", _LAYER + r"\1" + _ATTN + "query.bias"),
    (r"^blocks\.(\d+)\.attn\.v_bias$", _LAYER + r"\1" + _ATTN + "value.bias"),
    (r"^blocks\.(\d+)\.attn\.proj\.", _LAYER + r"\1.attention.output.dense."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", _LAYER + r"\1.intermediate.dense."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", _LAYER + r"\1.output.dense."),
    (r"^blocks\.(\d+)\.gamma_([12])$", _LAYER + r"\1.gamma_\2"),
    (r"^norm\.", ENCODER + "layernorm."),
    (r"^head\.", "classifier."),
]

_IGNORED = re.compile(r"^(decoder\.|encoder_to_decoder\.|mask_token$|decoder_pos_embed$)")


def torch_key(model, path: Path) -> str:
    path = path if isinstance(model, ViT) else ("encoder",) + tuple(path)
    key = ".".join(path)
    for pattern, repl in _FLAX_TO_TORCH:
        key = re.sub(pattern, repl, key)
    return key


def dummy_input(model) -> tuple:
    size = tuple(g * p for g, p in zip(model.grid(), model.patch()))
    return (1, *size, model.in_channels)


def _fuse(state: State) -> State:
    """query/key/value weights (and q, v biases) of each layer into one qkv entry; layers with
    a part missing are left as they are (and reported by name)."""
    out = dict(state)
    layers = {m.group(1) for k in state if (m := re.match(rf"^{re.escape(_LAYER)}(\d+){_ATTN}query\.weight$", k))}
    for i in sorted(layers, key=int):
        p = f"{_LAYER}{i}{_ATTN}"
        parts = [p + f"{n}.weight" for n in ("query", "key", "value")]
        if not all(k in out for k in parts):
            continue
        out[p + "qkv.weight"] = np.concatenate([out.pop(k) for k in parts], 0)
    for i in sorted({m.group(1) for k in out if (m := re.match(rf"^{re.escape(_LAYER)}(\d+){_ATTN}query\.bias$", k))}, key=int):
        p = f"{_LAYER}{i}{_ATTN}"
        if p + "value.bias" not in out:
            continue
        q, v = out.pop(p + "query.bias"), out.pop(p + "value.bias")
        k = out.pop(p + "key.bias", np.zeros_like(q))
        out[p + "qkv.bias"] = np.concatenate([q, k, v], 0)
    return out


def canonicalize(state: State) -> tuple[State, str]:
    keys = list(state)
    if any(".patch_embeddings.projection." in k for k in keys):
        fmt = "transformers VideoMAE"
        if not any(k.startswith(ENCODER) for k in keys):  # VideoMAEModel: no prefix
            state = rename(state, [(r"^(embeddings|encoder|layernorm)\.", ENCODER + r"\1.")])
        if any(k.endswith((".q_bias", ".v_bias")) for k in state):
            fmt += " (q_bias / v_bias, transformers < 5)"
            state = rename(state, [(r"\.attention\.attention\.q_bias$", _ATTN + "query.bias"),
                                   (r"\.attention\.attention\.v_bias$", _ATTN + "value.bias")])
    elif any(k.endswith("patch_embed.proj.weight") for k in keys):
        w = next(v for k, v in state.items() if k.endswith("patch_embed.proj.weight"))
        if w.ndim != 5:
            raise ValueError(f"not a VideoMAE state dict: patch_embed.proj.weight {tuple(w.shape)} "
                             "has 2 spatial axes, not tubelets (timm's VisionTransformer names)")
        fmt = "MCG-NJU VideoMAE"
        if any(k.startswith("encoder.patch_embed.") for k in keys):  # pre-training file
            state = rename(state, [(r"^encoder\.", "")])
        state = {(k if _IGNORED.match(k) else _rename_original(k)): v for k, v in state.items()}
    else:
        raise ValueError("not a VideoMAE state dict: no embeddings.patch_embeddings.projection.weight "
                         "(transformers) or patch_embed.proj.weight (MCG-NJU)")
    if any(_IGNORED.match(k) for k in state):
        fmt += ", pre-training (decoder ignored)"
    return _fuse(state), fmt


def _rename_original(key: str) -> str:
    for pattern, repl in _ORIGINAL:
        key = re.sub(pattern, repl, key)
    return key


def drops_final_norm(model) -> bool:
    """Whether ``model`` takes a VideoMAE encoder as VideoMAE's fine-tuning does: mean pooling
    into a fresh ``fc_norm``, the pre-trained encoder's final norm (``layernorm`` / MCG-NJU's
    ``norm``) not used (``final_norm=True`` keeps it)."""
    return isinstance(model, ViT) and model.pool == "mean" and not model.uses_final_norm()


def ignored(model, key: str) -> bool:
    if _IGNORED.match(key):
        return True
    if key.startswith(ENCODER + "layernorm.") and drops_final_norm(model):
        return True
    return key == ENCODER + "embeddings.position_embeddings" and model.pos_embed == "sincos"


def is_head(key: str) -> bool:
    return bool(re.match(r"^classifier\.(weight|bias)$", key))


def detect(state: State) -> bool:
    return PROJECTION + "weight" in state


def infer_config(state: State) -> dict:
    """Constructor arguments: shapes plus VideoMAE's conventions (fixed sin-cos positions, no
    CLS, q/v biases with the k bias masked, eps 1e-12, mean pooling with fc_norm eps 1e-5 when
    the file has fc_norm)."""
    w = state.get(PROJECTION + "weight")
    if w is None:
        return {}
    cfg: dict = dict(in_channels=int(w.shape[1]), patch_size=tuple(int(p) for p in w.shape[2:]),
                     hidden_size=int(w.shape[0]), pos_embed="sincos", cls_token=False, norm_eps=1e-12)
    cfg["depth"] = len({m.group(1) for k in state if (m := re.match(rf"^{re.escape(_LAYER)}(\d+)\.", k))})
    lin = state.get(f"{_LAYER}0.intermediate.dense.weight")
    if lin is not None:
        cfg["mlp_dim"] = int(lin.shape[0])
    bias = f"{_LAYER}0{_ATTN}qkv.bias" in state
    cfg.update(qkv_bias=bias, mask_k_bias=bias)
    mean = ENCODER + "layernorm.weight" not in state  # use_mean_pooling: no final norm
    cfg.update(pool="mean" if mean else "cls", final_norm=not mean, fc_norm="fc_norm.weight" in state)
    if cfg["fc_norm"]:
        cfg["head_norm_eps"] = 1e-5
    if "classifier.weight" in state:
        cfg["num_classes"] = int(state["classifier.weight"].shape[0])
    if f"{_LAYER}0.gamma_1" in state:
        cfg["layer_scale_init"] = 1.0
    return cfg


def missing(model_name: str, kwargs: dict) -> str | None:
    needed = [k for k in ("num_heads", "img_size") if k not in kwargs]
    if needed:
        return ("VideoMAE files record neither the number of heads nor the clip size: give "
                "--set num_heads=12 --set img_size=[16,224,224] (frames, height, width; the values "
                "the checkpoint was trained with); missing: " + ", ".join(needed))
    return None


def hints(model, source: State, expected: dict) -> list[str]:
    out = []
    w = source.get(PROJECTION + "weight")
    want = expected.get(PROJECTION + "weight")
    want = None if want is None else core.torch_shape(("kernel",), tuple(want.shape), False)
    if w is not None and want is not None and w.shape != want:
        out.append(f"the checkpoint's patch embedding is {tuple(w.shape)}, the model's {want} "
                   "(hidden, channels, tubelet, patch, patch)")
    head = source.get("classifier.weight")
    if head is not None and isinstance(model, ViT) and model.num_classes and head.shape[0] != model.num_classes:
        out.append(f"the checkpoint has {head.shape[0]} classes, the model {model.num_classes} "
                   "(new_head=True / --new-head starts the head fresh)")
    return out


# ----------------------------------------------------------------------------------------
# Export.


def _check_exportable(model) -> None:
    bad = []
    if model.dims() != 3:
        bad.append(f"{model.dims()} spatial axes (VideoMAE has frames, height, width)")
    if model.pos_embed != "sincos":
        bad.append(f"pos_embed={model.pos_embed!r} (VideoMAE: 'sincos')")
    if model.cls_token or model.num_registers:
        bad.append("prefix tokens (VideoMAE has neither CLS nor registers)")
    if model.layer_scale_init is not None:
        bad.append("LayerScale (transformers' VideoMAE has none)")
    if model.qkv_bias and not model.mask_k_bias:
        bad.append("qkv_bias without mask_k_bias (VideoMAE has no key bias)")
    if model.patch()[1] != model.patch()[2]:
        bad.append(f"patch_size={model.patch()} (VideoMAE patches are square in height and width)")
    head = isinstance(model, ViT) and model.num_classes > 0
    fc_norm = isinstance(model, ViT) and model.uses_fc_norm()
    if head and (model.pool == "mean") != fc_norm:
        bad.append("a head on mean-pooled tokens needs fc_norm (and token 0 none)")
    if head and model.uses_final_norm() == fc_norm:
        bad.append("exactly one of final_norm (token 0) and fc_norm (mean pooling)")
    if not head and fc_norm:
        bad.append("fc_norm without a head (VideoMAEModel has none: fc_norm=False)")
    if isinstance(model, ViT) and model.post_activation is not None:
        bad.append(f"post_activation={model.post_activation!r}")
    if bad:
        raise ValueError("the model has no transformers VideoMAE equivalent: " + "; ".join(bad))


def to_transformers(state: State, model) -> State:
    """Canonical names -> transformers' (fused qkv split into query / key / value; the k third
    of a masked bias is dropped). Without a head: ``VideoMAEModel``'s names (no prefix)."""
    out: State = {}
    for key, value in state.items():
        m = re.match(rf"^(.*){_ATTN}qkv\.(weight|bias)$", key)
        if m:
            d = value.shape[0] // 3
            names = ("query", "key", "value") if m.group(2) == "weight" else ("query", None, "value")
            for j, name in enumerate(names):
                if name is not None:
                    out[f"{m.group(1)}{_ATTN}{name}.{m.group(2)}"] = value[j * d:(j + 1) * d]
        else:
            out[key] = value
    if not (isinstance(model, ViT) and model.num_classes):
        out = {k[len(ENCODER):] if k.startswith(ENCODER) else k: v for k, v in out.items()}
    return out


def save_torch(params, model, path=None) -> State:
    """Writes ``params`` in transformers' VideoMAE layout (.pt/.pth/.bin or .safetensors;
    ``path=None`` only returns the state dict)."""
    _check_exportable(model)
    state = to_transformers(core.save(params, model, FAMILY, None), model)
    if path is not None:
        core.write_state_dict(state, path)
    return state


def transformers_config(model) -> dict:
    """``VideoMAEConfig`` arguments of the model (frames = the first spatial axis)."""
    _check_exportable(model)
    frames, height, width = (g * p for g, p in zip(model.grid(), model.patch()))
    head = isinstance(model, ViT) and model.num_classes
    mean = not model.uses_final_norm()
    return dict(image_size=[height, width], patch_size=model.patch()[1], num_channels=model.in_channels,
                num_frames=frames, tubelet_size=model.patch()[0], hidden_size=model.hidden_size,
                num_hidden_layers=model.depth, num_attention_heads=model.num_heads,
                intermediate_size=model.mlp_dim, hidden_act="gelu", layer_norm_eps=model.norm_eps,
                qv_bias=model.qkv_bias, use_mean_pooling=bool(mean),
                **({"num_labels": model.num_classes} if head else {}))


FAMILY = Family(
    name="ViT (VideoMAE)",
    torch_key=torch_key,
    buffers=lambda model: {},
    canonicalize=canonicalize,
    dummy_input=dummy_input,
    encoder_prefix=ENCODER,
    hints=hints,
    ignored=ignored,
    is_head=is_head,
    detect=detect,
    model_names=("vit",),
    config_for=lambda state, model_name: infer_config(state),
    missing=missing,
    note=("VideoMAE files record neither num_heads nor the clip size (img_size = frames, height, "
          "width); MCG-NJU originals use LayerNorm eps 1e-6"),
)
