"""Whole-scan probes <-> PyTorch: BrainDINO's ``SliceStudent`` layout, for the end-to-end
slice model (:class:`~jaxbrain.models.slice_heads.SliceScanViT`, ``slice_scan``) and the head
on cached features (:class:`~jaxbrain.models.slice_heads.SliceHead`, ``slice_head``).

BrainDINO's downstream network (``networks/SliceStudent.py``) holds

- ``student.*``: the DINOv3 backbone under its original names (:mod:`jaxbrain.convert.dino`);
  with LoRA (its ``add_lora_to_vit``) every block's ``attn.qkv`` becomes a wrapper whose
  ``qkv.{weight, bias, bias_mask}`` is the original projection and whose
  ``linear_a_q.weight [r, D]``, ``linear_b_q.weight [D, r]``, ``linear_a_v``, ``linear_b_v``
  are the adapters (unscaled: ``lora_alpha=None``), i.e. our ``qkv/lora_a_q/kernel`` ...
  transposed;
- ``cls_head.{0, 1, 3}``: LayerNorm, Linear(D, D), GELU, Linear(D, K) on the mean of the
  slices' normalised CLS tokens (``reg_head.*``, the same with K = 1, for a regression: a
  model with ``num_classes=1``);
- ``att_pool.att.{weight, bias}``: its attention pooling (Linear(D, 1), softmax over slices),
  our ``head_pool="attention"``;
- ``slice_transformer.*``: a 2-layer ``nn.TransformerEncoder`` its forward pass does not use.

Reading such a file reports what this model does not use as ignored (the other head, an
unused ``att_pool``, ``slice_transformer``); writing gives this model's tensors only, so
``SliceStudent.load_state_dict(state, strict=False)`` lists exactly the modules it has beyond
them. The slice-transformer pooling (``head_pool="transformer"``, with learned slice
positions) has no counterpart there and is refused. ``slice_head`` files hold the head keys
alone (no ``student.*``).
"""

from __future__ import annotations

import re

import numpy as np

from jaxbrain.convert import dino
from jaxbrain.convert.core import Family, Path, State
from jaxbrain.models.vit import LORA_MODULES

STUDENT = "student."
_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.")
_LORA = re.compile(r"^(blocks\.\d+\.attn\.qkv)\.(linear_[ab]_[qv])\.weight$")
_HEAD_LAYERS = {"head_norm": "0", "head_fc1": "1", "head": "3"}
HEADS = ("cls_head.", "reg_head.")
# SliceStudent modules a probe may not use (reported as ignored on import).
UNUSED = ("slice_transformer.", "att_pool.", *HEADS)


def _lora(model) -> bool:
    return bool(getattr(model, "lora_rank", 0))


def head_name(model) -> str:
    return "reg_head" if model.num_classes == 1 else "cls_head"


def _pool(model) -> str:
    return getattr(model, "head_pool", None) or getattr(model, "pool", "mean")


def _check_pool(model) -> None:
    if _pool(model) == "transformer":
        raise ValueError(f"{type(model).__name__} with slice-transformer pooling has no PyTorch "
                         "layout (BrainDINO's SliceStudent pools by mean or attention)")


def _head_key(model, path: Path) -> str:
    _check_pool(model)
    if path[0] == "attn_score":
        return "att_pool.att." + {"kernel": "weight", "bias": "bias"}[path[-1]]
    if path[0] in _HEAD_LAYERS:
        leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
        return f"{head_name(model)}.{_HEAD_LAYERS[path[0]]}.{leaf}"
    raise ValueError(f"{'/'.join(path)}: not a layer of the SliceStudent head")


def torch_key(model, path: Path) -> str:
    if not hasattr(model, "encoder_kwargs"):  # SliceHead: the head's layers at the top
        return _head_key(model, path)
    if path[0] == "head":
        return _head_key(model, path[1:])
    if path[0] != "encoder":
        raise ValueError(f"{'/'.join(path)}: not under encoder or head")
    inner = path[1:]
    if _lora(model) and len(inner) >= 4 and inner[1:3] == ("attn", "qkv"):
        block = inner[0].removeprefix("blocks_")
        if inner[3] in LORA_MODULES:  # lora_a_q -> linear_a_q
            return f"{STUDENT}blocks.{block}.attn.qkv.linear{inner[3][4:]}.weight"
        return f"{STUDENT}blocks.{block}.attn.qkv.qkv.{'weight' if inner[3] == 'kernel' else inner[3]}"
    return STUDENT + dino.torch_key(model, inner)


def buffers(model) -> State:
    if not hasattr(model, "encoder_kwargs"):
        return {}
    out = {}
    for key, value in dino.buffers(model).items():
        if _lora(model):
            key = _QKV.sub(r"blocks.\1.attn.qkv.qkv.", key)
        out[STUDENT + key] = value
    return out


def canonicalize(state: State) -> tuple[State, str]:
    """A SliceStudent state dict (LoRA-wrapped or plain blocks, any backbone layout
    :func:`jaxbrain.convert.dino.canonicalize` reads under ``student.``) in its own names."""
    state = dict(state)
    if "model" in state and isinstance(state["model"], dict):
        state = dict(state["model"])
    backbone = {k[len(STUDENT):]: v for k, v in state.items() if k.startswith(STUDENT)}
    rest = {k: v for k, v in state.items() if not k.startswith(STUDENT)}
    if not any(k.startswith(HEADS + ("att_pool.",)) for k in rest):
        raise ValueError("not a SliceStudent state dict: no cls_head.*, reg_head.* or att_pool.*")
    if not backbone:
        return rest, "SliceStudent head"
    adapters = {k: v for k, v in backbone.items() if _LORA.match(k)}
    plain = {re.sub(r"\.attn\.qkv\.qkv\.", ".attn.qkv.", k): v for k, v in backbone.items()
             if k not in adapters}
    canon, fmt = dino.canonicalize(plain)
    if adapters:
        canon = {(_QKV.sub(r"blocks.\1.attn.qkv.qkv.", k) if _QKV.match(k) else k): v
                 for k, v in canon.items()}
        canon.update(adapters)
        fmt += ", LoRA"
    return {**{STUDENT + k: v for k, v in canon.items()}, **rest}, f"SliceStudent ({fmt})"


def detect(state: State) -> bool:
    return any(k.startswith(HEADS) for k in state)


def config_for(state: State, model_name: str) -> dict:
    head = "reg_head" if "reg_head.3.weight" in state and "cls_head.3.weight" not in state \
        else "cls_head"
    out_w = state.get(f"{head}.3.weight")
    cfg: dict = {}
    if out_w is not None:
        cfg["num_classes"] = int(out_w.shape[0])
    if model_name == "slice_head":
        if out_w is not None:
            cfg["in_channels"] = int(out_w.shape[1])
        return cfg
    backbone = {k[len(STUDENT):]: v for k, v in state.items() if k.startswith(STUDENT)}
    a = backbone.get("blocks.0.attn.qkv.linear_a_q.weight")
    plain = {re.sub(r"\.attn\.qkv\.qkv\.", ".attn.qkv.", k): v for k, v in backbone.items()}
    cfg.update(dino.infer_config(plain))
    if a is not None:
        cfg["lora_rank"] = int(np.shape(a)[0])
    return cfg


def dummy_input(model) -> tuple:
    if hasattr(model, "encoder_kwargs"):
        size = tuple(g * p for g, p in zip(model.grid(), model.patch()))
        return (1, 2, *size)
    if model.in_channels is None:
        raise ValueError("SliceHead needs in_channels (the features' width) for conversion")
    return (1, 2, model.in_channels)


def ignored(model, key: str) -> bool:
    if not key.startswith(UNUSED):
        return False
    if key.startswith("slice_transformer."):
        return True
    if key.startswith("att_pool."):
        return _pool(model) != "attention"
    return not key.startswith(head_name(model) + ".")


def _hints(model, source: State, expected: dict) -> list[str]:
    out = []
    if _lora(model) and not any(_LORA.match(k[len(STUDENT):]) for k in source):
        out.append("the file's blocks have no LoRA adapters: build with lora_rank=0, or load "
                   "the backbone alone (init.encoder_only) to start new adapters")
    if not _lora(model) and any(_LORA.match(k[len(STUDENT):]) for k in source):
        out.append("the file's blocks carry LoRA adapters (linear_a_q ...): build with "
                   "lora_rank=<their rank>")
    return out


FAMILY = Family(
    name="whole-scan probe (BrainDINO SliceStudent)",
    torch_key=torch_key,
    buffers=buffers,
    canonicalize=canonicalize,
    dummy_input=dummy_input,
    encoder_prefix=STUDENT,
    hints=_hints,
    ignored=ignored,
    is_head=lambda key: key.startswith(HEADS) and key.split(".")[1] == "3",
    detect=detect,
    model_names=("slice_scan", "slice_head"),
    config_for=config_for,
    missing=lambda model_name, kwargs: None if model_name == "slice_head" else dino.missing(model_name, kwargs),
    buffer_rtol=((STUDENT + dino.PERIODS, dino.PERIODS_RTOL),),
    note=("SliceStudent also holds modules a probe does not use (slice_transformer, the other "
          "head): ignored on import, absent on export"),
)

__all__ = ["FAMILY", "canonicalize", "config_for", "torch_key"]
