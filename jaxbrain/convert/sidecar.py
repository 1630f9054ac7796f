"""What an exported PyTorch file is for: the sidecar written beside every ``to-torch`` file.

``<weights>.json`` (``exported.json`` beside ``exported.pt``) names the class that loads the
state dict with ``strict=True`` and its exact constructor arguments::

    {"library": "monai", "class": "monai.networks.nets.SwinUNETR",
     "kwargs": {"in_channels": 4, "out_channels": 3, ..., "downsample": "merging"},
     "layout": "monai", "input_layout": "NCDHW", "merging_order": "merging", ...,
     "jaxbrain_model": {"name": "swin_unetr", ...}}

so that ``import_module(module).<class>(**kwargs).load_state_dict(torch.load(weights))``
computes what the Flax model computes. For transformers' layouts the model's own
``config.json`` (``from_pretrained``'s) is written as well, beside the weights. A layout that
cannot represent the model is refused before anything is written, with the setting to change
or the layout that can (:class:`NotRepresentable`).

Originals without a pip package (BrainSegFounder's SSL model, MIS-FM's PCT-Net, BrainDINO's
networks) are named by their repository, module and class; their ``kwargs`` are the
original's constructor arguments where it takes them, and ``jaxbrain_model`` records the
whole configuration.

SwinUNETR with ``downsample="merging_legacy"``: MONAI >= 1.5 has no such order. The sidecar
leaves ``downsample`` out of ``kwargs`` and says ``"merging_order": "merging_legacy"``; the
README's ``LegacyPatchMerging`` (a ``PatchMerging`` subclass, ``downsample=LegacyPatchMerging``)
gives MONAI's class that order.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

LEGACY = "merging_legacy"
LEGACY_NOTE = ("MONAI >= 1.5 has no legacy PatchMerging order: build the class with "
               "downsample=LegacyPatchMerging (README, SwinUNETR section); its corrected "
               "'merging' loads this file with strict=True and computes something else")


class NotRepresentable(ValueError):
    """The requested layout's class cannot compute what the model computes."""


def sidecar_path(weights: str | os.PathLike) -> str:
    """``exported.pt`` -> ``exported.json``."""
    root, _ = os.path.splitext(os.fspath(weights))
    return root + ".json"


def plain(value: Any) -> Any:
    """JSON values: tuples as lists, NumPy scalars as numbers, dtypes by name."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    try:
        return np.dtype(value).name
    except TypeError:
        return str(value)


def model_config(model: Any) -> dict:
    """The Flax module's constructor fields (what ``jaxbrain_model`` records when no run
    configuration is given)."""
    return plain({f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                  if f.name not in ("parent", "name")})


def _refuse(cls: str, reasons: list[str], alternative: str = "") -> None:
    if reasons:
        raise NotRepresentable(f"{cls} has no " + "; no ".join(reasons) + alternative)


def _tuple3(v) -> list:
    return [int(v)] * 3 if isinstance(v, (int, np.integer)) else [int(x) for x in v]


# ----------------------------------------------------------------------------------------
# MONAI.


def swin_unetr(model) -> dict:
    from jaxbrain.models.swin_unetr import SwinTransformer
    if isinstance(model, SwinTransformer):
        order = model.downsample
        kwargs = dict(in_chans=model.in_channels, embed_dim=model.embed_dim,
                      window_size=_tuple3(model.window_size), patch_size=_tuple3(model.patch_size),
                      depths=model.depths, num_heads=model.num_heads, mlp_ratio=model.mlp_ratio,
                      qkv_bias=model.qkv_bias, drop_rate=model.drop_rate,
                      attn_drop_rate=model.attn_drop_rate, drop_path_rate=model.drop_path_rate,
                      spatial_dims=3, use_v2=model.use_v2)
        out = dict(library="monai", **{"class": "monai.networks.nets.swin_unetr.SwinTransformer"},
                   state_dict_prefix="swinViT.",
                   note="the keys carry SwinUNETR's 'swinViT.' prefix: strip it, or load into "
                        "SwinUNETR(...).swinViT through the full model")
    else:
        order = model.downsample
        kwargs = dict(in_channels=model.in_channels, out_channels=model.out_channels,
                      patch_size=model.patch_size, depths=model.depths, num_heads=model.num_heads,
                      window_size=model.window_size, qkv_bias=model.qkv_bias,
                      mlp_ratio=model.mlp_ratio, feature_size=model.feature_size,
                      drop_rate=model.drop_rate, attn_drop_rate=model.attn_drop_rate,
                      dropout_path_rate=model.dropout_path_rate, normalize=model.normalize,
                      spatial_dims=3, use_v2=model.use_v2)
        out = dict(library="monai", **{"class": "monai.networks.nets.SwinUNETR"})
    if order != LEGACY:
        kwargs["downsample"] = order
    out.update(kwargs=kwargs, layout="monai", input_layout="NCDHW", merging_order=order)
    if order == LEGACY:
        out["downsample"] = LEGACY_NOTE
    return out


def ssl_head(model) -> dict:
    out = dict(
        library="research-contributions (Project-MONAI/research-contributions, "
                "SwinUNETR/Pretrain; BrainSegFounder's copy)",
        module="models.ssl_head", **{"class": "SSLHead"},
        kwargs=dict(args=dict(in_channels=model.in_channels, feature_size=model.feature_size,
                              dropout_path_rate=model.dropout_path_rate, use_checkpoint=False,
                              spatial_dims=3),
                    upsample="vae", dim=16 * model.feature_size),
        swin=dict(depths=model.depths, num_heads=model.num_heads, window_size=model.window_size),
        layout="original", wrapper='{"state_dict": {"module." + key: tensor}, "global_step": 0}',
        input_layout="NCDHW", merging_order=model.downsample)
    if model.downsample == LEGACY:
        out["downsample"] = LEGACY_NOTE
    return out


def vit_monai(model) -> dict:
    from jaxbrain.models.vit import ViT
    cls = "MONAI's ViT"
    full = isinstance(model, ViT)
    reasons = []
    if model.pool != "cls":
        reasons.append(f"mean pooling (model.pool={model.pool!r}): use model.pool=cls")
    if model.uses_fc_norm():
        reasons.append("norm after pooling (fc_norm): use model.fc_norm=False")
    if not model.uses_final_norm():
        reasons.append("un-normalised tokens (final_norm off): use model.final_norm=True")
    if model.num_registers:
        reasons.append("registers: use model.num_registers=0")
    if model.layer_scale_init is not None:
        reasons.append("LayerScale: use model.layer_scale_init=None")
    if model.pos_embed not in ("learned", "sincos", "none"):
        reasons.append(f"pos_embed={model.pos_embed!r}")
    if model.pos_embed_cls:
        reasons.append("position row for the CLS token: use model.pos_embed_cls=False")
    if model.qkv_bias and model.mask_k_bias:
        reasons.append("masked k bias: use model.mask_k_bias=False")
    if abs(model.norm_eps - 1e-5) > 1e-12:
        reasons.append(f"LayerNorm eps {model.norm_eps} (it uses 1e-5): use model.norm_eps=1e-5")
    classes = model.num_classes if full else 0
    if classes and not model.cls_token:
        reasons.append("classification without a CLS token: use model.cls_token=True")
    if not classes and model.cls_token:
        reasons.append("CLS token without its classification head (classification=False "
                       "drops it): give model.num_classes")
    if model.lora_rank:
        reasons.append("LoRA adapters: merge them first")
    other = "timm" if model.dims() == 2 else "videomae" if _videomae_fits(model) else None
    _refuse(cls, reasons, f"; or --layout {other}" if other else "")
    kwargs = dict(in_channels=model.in_channels,
                  img_size=[g * p for g, p in zip(model.grid(), model.patch())],
                  patch_size=list(model.patch()), hidden_size=model.hidden_size,
                  mlp_dim=model.mlp_dim, num_layers=model.depth, num_heads=model.num_heads,
                  proj_type="conv",
                  pos_embed_type={"learned": "learnable", "sincos": "sincos", "none": "none"}[model.pos_embed],
                  classification=bool(classes), num_classes=classes or 2,
                  dropout_rate=model.dropout, spatial_dims=model.dims(),
                  post_activation="Tanh" if full and model.post_activation == "tanh" else None,
                  qkv_bias=model.qkv_bias)
    return {"library": "monai", "class": "monai.networks.nets.ViT", "kwargs": kwargs,
            "layout": "monai", "input_layout": "NC" + "DHW"[3 - model.dims():],
            "output": "forward returns (logits or tokens, hidden_states)"}


def vit_timm(model) -> dict:
    from jaxbrain.convert.vit import _check_timm_exportable
    try:
        _check_timm_exportable(model)
    except ValueError as e:
        raise NotRepresentable(str(e)) from None
    classes = getattr(model, "num_classes", 0)
    kwargs = dict(img_size=[g * p for g, p in zip(model.grid(), model.patch())],
                  patch_size=model.patch()[0], in_chans=model.in_channels, num_classes=classes,
                  global_pool="token" if model.pool == "cls" else "avg",
                  embed_dim=model.hidden_size, depth=model.depth, num_heads=model.num_heads,
                  mlp_ratio=model.mlp_dim / model.hidden_size, qkv_bias=model.qkv_bias,
                  init_values=model.layer_scale_init, class_token=model.cls_token,
                  no_embed_class=not model.pos_embed_cls, reg_tokens=model.num_registers,
                  fc_norm=model.uses_fc_norm(), dynamic_img_size=False)
    if model.pos_embed == "none":
        kwargs["pos_embed"] = "none"
    reasons = []
    if abs(model.norm_eps - 1e-6) > 1e-12:
        reasons.append(f"LayerNorm eps {model.norm_eps} (it uses 1e-6): use model.norm_eps=1e-6")
    if model.patch()[0] != model.patch()[1]:
        reasons.append("rectangular patches")
    if not model.uses_final_norm() and not model.uses_fc_norm():
        reasons.append("ViT without any norm (VideoMAEModel's mean pooling)")
    _refuse("timm's VisionTransformer", reasons)
    return {"library": "timm", "class": "timm.models.vision_transformer.VisionTransformer",
            "kwargs": kwargs, "layout": "timm", "input_layout": "NCHW"}


def _videomae_fits(model) -> bool:
    try:
        vit_videomae(model)
    except NotRepresentable:
        return False
    return True


def vit_videomae(model) -> dict:
    from jaxbrain.convert.videomae import transformers_config
    from jaxbrain.models.vit import ViT
    try:
        cfg = transformers_config(model)
    except ValueError as e:
        raise NotRepresentable(str(e)) from None
    arch = ("VideoMAEForVideoClassification" if isinstance(model, ViT) and model.num_classes
            else "VideoMAEModel")
    cfg = dict(model_type="videomae", architectures=[arch], **cfg)
    return {"library": "transformers", "class": f"transformers.{arch}",
            "config_class": "transformers.VideoMAEConfig", "config": cfg,
            "config_json": "config.json", "layout": "videomae", "input_layout": "NTCHW"}


def resnet(model) -> dict:
    kwargs = dict(block=model.block, layers=model.layers,
                  block_inplanes=model.block_inplanes, spatial_dims=3,
                  n_input_channels=model.in_channels, conv1_t_size=model.conv1_t_size,
                  conv1_t_stride=model.conv1_t_stride, no_max_pool=model.no_max_pool,
                  shortcut_type=model.shortcut_type, widen_factor=model.widen_factor,
                  num_classes=model.num_classes or 2, feed_forward=model.num_classes is not None,
                  bias_downsample=model.bias_downsample)
    return {"library": "monai", "class": "monai.networks.nets.ResNet", "kwargs": kwargs,
            "layout": "monai", "input_layout": "NCDHW",
            "note": "conv1_t_stride is not in the weights: build with these kwargs, not "
                    "resnetN()'s defaults"}


def densenet(model) -> dict:
    kwargs = dict(spatial_dims=3, in_channels=model.in_channels,
                  out_channels=model.num_classes or 1, init_features=model.init_features,
                  growth_rate=model.growth_rate, block_config=model.block_config,
                  bn_size=model.bn_size, dropout_prob=model.dropout_prob)
    out = {"library": "monai", "class": "monai.networks.nets.DenseNet", "kwargs": kwargs,
           "layout": "monai", "input_layout": "NCDHW"}
    if model.num_classes is None:
        out["strict"] = False
        out["note"] = ("a feature extractor (num_classes=None): the file has no class_layers.out; "
                       "load with strict=False and read the pooled features before it")
    return out


def pctnet(model) -> dict:
    params = dict(in_chns=model.in_channels, class_num=model.out_channels,
                  input_size=model.input_size, feature_chns=model.features, dropout=model.dropout,
                  depths=model.depths, num_heads=model.num_heads, window_sizes=model.window_sizes,
                  multiscale_pred=model.multiscale_pred, resolution_mode=model.resolution_mode)
    out = {"library": "MIS-FM (openmedlab/MIS-FM)", "module": "pct_net", "class": "PCTNet",
           "kwargs": {"params": params}, "layout": "original",
           "wrapper": '{"model_state_dict": state, "iteration": 0}', "input_layout": "NCDHW"}
    if model.corrected_index:
        params["corrected_index"] = True
        out["note"] = ("corrected_index: the standard Swin relative-position index, which the "
                       "original does not have (its published index is corrected_index=False)")
    return out


# ----------------------------------------------------------------------------------------
# DINO backbones and BrainDINO's networks.


def _dino_reasons(model) -> list[str]:
    out = []
    if model.lora_rank:
        out.append("LoRA adapters: export with --encoder (merged)")
    if model.dims() != 2:
        out.append(f"{model.dims()}D input")
    return out


def dino_original(model) -> dict:
    from jaxbrain.convert.dino import is_v3
    _refuse("the DINO original", _dino_reasons(model))
    size, patch = model.grid()[0] * model.patch()[0], model.patch()[0]
    common = dict(img_size=size, patch_size=patch, in_chans=model.in_channels,
                  embed_dim=model.hidden_size, depth=model.depth, num_heads=model.num_heads)
    if is_v3(model):
        kwargs = dict(common, pos_embed_rope_base=model.rope_base,
                      pos_embed_rope_normalize_coords=model.rope_normalize,
                      pos_embed_rope_shift_coords=model.rope_shift,
                      pos_embed_rope_jitter_coords=model.rope_jitter,
                      pos_embed_rope_rescale_coords=model.rope_rescale,
                      pos_embed_rope_dtype=model.rope_dtype,  # the class's default is bf16
                      ffn_ratio=model.mlp_dim / model.hidden_size, qkv_bias=model.qkv_bias,
                      layerscale_init=model.layer_scale_init,
                      norm_layer="layernormbf16" if abs(model.norm_eps - 1e-5) < 1e-12 else "layernorm",
                      n_storage_tokens=model.num_registers, mask_k_bias=model.mask_k_bias)
        if min(abs(model.norm_eps - 1e-5), abs(model.norm_eps - 1e-6)) > 1e-12:
            raise NotRepresentable(f"DINOv3's DinoVisionTransformer has no LayerNorm eps "
                                   f"{model.norm_eps} (layernorm: 1e-6, layernormbf16: 1e-5)")
        out = {"library": "dinov3 (facebookresearch/dinov3)",
               "class": "dinov3.models.vision_transformer.DinoVisionTransformer", "kwargs": kwargs,
               "layer_norm_eps": model.norm_eps}
    else:
        if abs(model.norm_eps - 1e-6) > 1e-12:
            raise NotRepresentable(f"DINOv2's DinoVisionTransformer has no LayerNorm eps "
                                   f"{model.norm_eps} (it uses 1e-6): use model.norm_eps=1e-6")
        kwargs = dict(common, mlp_ratio=model.mlp_dim / model.hidden_size, qkv_bias=model.qkv_bias,
                      init_values=model.layer_scale_init, block_chunks=0)
        if model.num_registers:
            kwargs["num_register_tokens"] = model.num_registers
        if (model.pos_interp, model.pos_interp_offset) != ("bicubic", 0.1):
            kwargs.update(interpolate_antialias=model.pos_interp == "bicubic_aa",
                          interpolate_offset=model.pos_interp_offset)
        out = {"library": "dinov2 (facebookresearch/dinov2)",
               "class": "dinov2.models.vision_transformer.DinoVisionTransformer", "kwargs": kwargs}
    out.update(layout="original", input_layout="NCHW")
    return out


def dino_hf_config(model) -> dict:
    """transformers' config.json of the model's hf layout (DINOv3ViTModel, Dinov2Model or
    Dinov2WithRegistersModel)."""
    from jaxbrain.convert.dino import is_v3
    reasons = _dino_reasons(model)
    if not model.mask_token:
        reasons.append("model without a mask token (transformers' always holds one): use "
                       "model.mask_token=True")
    v3 = is_v3(model)
    if v3 and model.rope_normalize != "separate":
        reasons.append(f"rope_normalize={model.rope_normalize!r} (it uses 'separate')")
    if not v3 and model.pos_interp_offset not in (0.0, 0.1):
        reasons.append(f"position interpolation offset {model.pos_interp_offset}")
    _refuse("transformers' DINO model", reasons, "; or --layout original")
    size, patch = model.grid()[0] * model.patch()[0], model.patch()[0]
    scale = model.layer_scale_init if model.layer_scale_init is not None else 1.0
    if v3:
        cfg = dict(model_type="dinov3_vit", architectures=["DINOv3ViTModel"],
                   hidden_size=model.hidden_size, intermediate_size=model.mlp_dim,
                   num_hidden_layers=model.depth, num_attention_heads=model.num_heads,
                   layer_norm_eps=model.norm_eps, rope_theta=model.rope_base, image_size=size,
                   patch_size=patch, num_channels=model.in_channels,
                   query_bias=model.qkv_bias, key_bias=model.qkv_bias and not model.mask_k_bias,
                   value_bias=model.qkv_bias, proj_bias=True, mlp_bias=True,
                   layerscale_value=scale, num_register_tokens=model.num_registers,
                   pos_embed_shift=model.rope_shift, pos_embed_jitter=model.rope_jitter,
                   pos_embed_rescale=model.rope_rescale, use_gated_mlp=False, hidden_act="gelu")
    else:
        regs = model.num_registers > 0
        cfg = dict(model_type="dinov2_with_registers" if regs else "dinov2",
                   architectures=["Dinov2WithRegistersModel" if regs else "Dinov2Model"],
                   hidden_size=model.hidden_size, mlp_ratio=_ratio(model.mlp_dim, model.hidden_size),
                   num_hidden_layers=model.depth, num_attention_heads=model.num_heads,
                   layer_norm_eps=model.norm_eps, image_size=size, patch_size=patch,
                   num_channels=model.in_channels, qkv_bias=model.qkv_bias,
                   layerscale_value=scale, use_swiglu_ffn=False, hidden_act="gelu")
        if regs:
            cfg["num_register_tokens"] = model.num_registers
    return cfg


def is_v3_rope(model) -> bool:
    return model.pos_embed == "rope"


def _ratio(mlp: int, hidden: int) -> int | float:
    """An MLP ratio, as an int when it is one (transformers' Dinov2Config types it int)."""
    return mlp // hidden if mlp % hidden == 0 else mlp / hidden


def dino_hf(model) -> dict:
    cfg = dino_hf_config(model)
    arch = cfg["architectures"][0]
    out = {}
    if is_v3_rope(model) and getattr(model, "rope_dtype", "fp32") != "fp32":
        out["note"] = (f"the model computes RoPE in {model.rope_dtype} (rope_dtype); transformers' "
                       "DINOv3ViTModel in float32: outputs differ at that precision (~1e-2)")
    return {**out, "library": "transformers", "class": f"transformers.{arch}",
            "config_class": "transformers." + {"DINOv3ViTModel": "DINOv3ViTConfig",
                                               "Dinov2Model": "Dinov2Config",
                                               "Dinov2WithRegistersModel": "Dinov2WithRegistersConfig"}[arch],
            "config": cfg, "config_json": "config.json", "layout": "hf", "input_layout": "NCHW"}


def _backbone(model) -> dict:
    from jaxbrain.models.dino import DinoViT
    from jaxbrain.models.vit import ENCODER_FIELDS
    kwargs = {k: v for k, v in model.encoder_kwargs().items() if k in ENCODER_FIELDS}
    kwargs.pop("lora_alpha", None)
    kwargs["lora_rank"] = 0
    return dino_original(DinoViT(**kwargs))


def dino_student(model) -> dict:
    backbone = _backbone(model)
    return {"library": backbone["library"], "class": backbone["class"],
            "kwargs": backbone["kwargs"], "state_dict_prefix": "backbone.",
            "heads": dict(dino_head=dict(out_dim=model.head_prototypes, hidden_dim=model.head_hidden,
                                         bottleneck_dim=model.head_bottleneck,
                                         nlayers=model.head_nlayers),
                          ibot_head=dict(out_dim=model.ibot_prototypes or model.head_prototypes,
                                         separate=model.ibot_separate_head)),
            "wrapper": '{"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}',
            "layout": "original", "input_layout": "NCHW"}


def slice_probe(model) -> dict:
    from jaxbrain.models.slice_heads import SliceScanViT
    out = {"library": "BrainDINO", "module": "networks.SliceStudent", "class": "SliceStudent",
           "layout": "original", "strict": False,
           "note": "the file holds this model's tensors only: SliceStudent.load_state_dict(state, "
                   "strict=False) lists exactly the modules it has beyond them"}
    if isinstance(model, SliceScanViT):
        out["backbone"] = {k: v for k, v in _backbone(model).items() if k in ("class", "kwargs")}
        out["input_layout"] = "N S C H W (slices of a scan)"
        out["kwargs"] = dict(num_classes=model.num_classes, pool=model.head_pool,
                             lora_rank=model.lora_rank)
    else:
        out["kwargs"] = dict(num_classes=model.num_classes, pool=model.pool)
        out["input_layout"] = "N S D (cached slice features)"
    return out


def dino_seg(model) -> dict:
    out = {"library": "BrainDINO (BrainDINO_seg)", "module": "dinov3.models.primus",
           "class": "Primus_Multiscale_conv", "layout": "original", "input_layout": "NCHW",
           "backbone": {k: v for k, v in _backbone(model).items() if k in ("class", "kwargs")},
           "kwargs": dict(num_classes=model.out_channels, input_channels=model.in_channels,
                          interaction_indexes=model.layers)}
    return out


# ----------------------------------------------------------------------------------------
# Dispatch.


def layouts(family) -> tuple[str, ...]:
    """The layouts ``to-torch`` writes for a family, its default first."""
    return LAYOUTS.get(family.name, ("original",))


def describe(model, family, layout: str | None = None) -> dict:
    """The sidecar of ``model`` written in ``layout`` (default: the family's first), or
    :class:`NotRepresentable` naming what to change."""
    names = layouts(family)
    layout = layout or names[0]
    if layout not in names:
        raise NotRepresentable(f"--layout {layout}: {family.name} is written as "
                               + " or ".join(names))
    fn = TARGETS.get((family.name, layout))
    if fn is None:
        return {"library": None, "class": None, "layout": layout}
    return plain(fn(model))


def write(info: dict, weights: str | os.PathLike) -> str:
    """Writes the sidecar beside ``weights`` (and a transformers ``config.json`` for the hf
    layout); returns the sidecar's path."""
    weights = os.fspath(weights)
    info = dict(info, weights=os.path.basename(weights))
    if "config_json" in info:
        config = os.path.join(os.path.dirname(os.path.abspath(weights)), info["config_json"])
        with open(config, "w") as f:
            json.dump(info["config"], f, indent=2)
    path = sidecar_path(weights)
    with open(path, "w") as f:
        json.dump(info, f, indent=2)
    return path


def _names():
    from jaxbrain.convert import densenet as dn, dino, dino_seg as ds, pctnet as pc, resnet as rn
    from jaxbrain.convert import slice_probe as sp, ssl_head as sh, swin_unetr as su, vit
    return dict(swin=su.FAMILY.name, ssl=sh.FAMILY.name, vit=vit.FAMILY.name,
                timm=vit.TIMM_FAMILY.name, resnet=rn.FAMILY.name, densenet=dn.FAMILY.name,
                pctnet=pc.FAMILY.name, dino=dino.FAMILY.name, student=dino.STUDENT_FAMILY.name,
                slice=sp.FAMILY.name, seg=ds.FAMILY.name)


_N = _names()
# Family name -> the layouts to-torch writes (the default first).
LAYOUTS = {_N["swin"]: ("monai",), _N["ssl"]: ("original",),
           _N["vit"]: ("monai", "timm", "videomae"),
           _N["resnet"]: ("monai",), _N["densenet"]: ("monai",), _N["pctnet"]: ("original",),
           _N["dino"]: ("original", "hf"), _N["student"]: ("original",),
           _N["slice"]: ("original",), _N["seg"]: ("original",)}
TARGETS = {
    (_N["swin"], "monai"): swin_unetr, (_N["ssl"], "original"): ssl_head,
    (_N["vit"], "monai"): vit_monai, (_N["vit"], "timm"): vit_timm,
    (_N["vit"], "videomae"): vit_videomae,
    (_N["resnet"], "monai"): resnet, (_N["densenet"], "monai"): densenet,
    (_N["pctnet"], "original"): pctnet, (_N["dino"], "original"): dino_original,
    (_N["dino"], "hf"): dino_hf, (_N["student"], "original"): dino_student,
    (_N["slice"], "original"): slice_probe, (_N["seg"], "original"): dino_seg,
}
