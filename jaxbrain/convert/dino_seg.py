"""BrainDINO slice segmentation <-> PyTorch: the state dict of BrainDINO's segmentation network
(``Primus_Multiscale_conv`` of ``BrainDINO_seg/dinov3/models/primus.py``, the network of its
``BrainDINO_Primus_Multiscale_HighRes_Trainer``) for :class:`~jaxbrain.models.dino_seg.DinoSeg`.

Keys, in the order the original lists them (ViT-B/16, 4 layers, K classes):

- ``up_projection.decode.{i}.0.{weight [C_i, C_i / 2, 2, 2], bias}``: stage i's
  ConvTranspose2d, ``decoder_{i}/{kernel (2, 2, C_i, C_i / 2), bias}``; C_0 = 4 x 768;
- ``up_projection.decode.{i}.1.{weight, bias}``: its ``LayerNormNd``, ``decoder_{i}/norm/
  {scale, bias}`` (the GELU, ``.2``, holds nothing);
- ``up_projection.decode.{n}.{weight [K, 192, 1, 1], bias}``, n = log2(patch): the final 1x1
  Conv2d, ``head/{kernel (192, K), bias}``;
- ``dino_encoder.*``: the ViT under ``encoder``, named as :mod:`jaxbrain.convert.dino` names a
  backbone (DINOv3's names for a RoPE encoder, with the ``dino_encoder.rope_embed.periods``
  and ``...attn.qkv.bias_mask`` buffers; DINOv2's for a learned table); transformers'
  DINOv3ViT / Dinov2 names under the prefix are read as well. The originals always hold a
  ``mask_token``: for a model without one (``mask_token=False``) export writes zeros (its
  initial value; ``template``'s where given) and import reports it as ignored;
- ``to3.weight [3, 4, 1, 1]``: the bias-free fusion, ``fuse/kernel (C, 3)``. The original
  always holds ``MAX_MODALITIES`` = 4 input rows and convolves a C-modality slice with the
  first C: import takes the first ``in_channels`` rows (the rest reported under adapted),
  export writes 4, those past ``in_channels`` from ``template`` where it has them, else the
  original's initial 1/4. A model without fusion (``fused_channels=0``) has no ``to3``, as
  ``Primus_Multiscale`` (which repeats its one channel to the encoder's 3: give it repeated).

The empty ``decoder`` module (a deep-supervision flag) holds no tensors. A file that is a bare
DINO backbone (DINOv3 / DINOv2 / BrainDINO teacher checkpoint) is read as ``dino_encoder``
alone, for ``encoder_only=True`` (``init.torch`` with ``init.encoder_only``, ``from-torch
--encoder-only``); its heads are reported as ignored.

Reading squeezes the 1x1 convolutions to the Dense kernels' matrices (``canonicalize``);
:func:`load_torch` and :func:`save_torch` (which :func:`jaxbrain.convert.load_torch` and
``save_torch`` call for this family) add what the generic exchange cannot express: the fusion's
rows past ``in_channels`` and, on export, the (1, 1) kernel axes. LoRA adapters have no place
in the original (export refuses a model with ``lora_rank``; fold them in first). nnU-Net's training
checkpoints (``checkpoint_final.pth``) hold the state dict under ``network_weights``, which
the reader unwraps; their other entries are Python objects (the trainer's arguments), so such
a file of your own is read with ``trust_pickle`` (``--trust-pickle``).

Not recorded in the files: which encoder blocks feed the decoder (their count is: the
decoder's input width over the encoder's; inferred as evenly spaced blocks ending at the last,
2, 5, 8, 11 of 12 as the released trainer), the image size of a RoPE encoder (224 assumed)
and what :mod:`jaxbrain.convert.dino` lists for the encoder.
"""

from __future__ import annotations

import re

import numpy as np

from jaxbrain.convert import core, dino
from jaxbrain.convert.core import Family, Path, State

PREFIX = "dino_encoder."
DECODE = "up_projection.decode."
FUSE = "to3.weight"
MASK = PREFIX + "mask_token"
MAX_MODALITIES = 4  # the original's to3 input rows (Primus_Multiscale_conv.max_modalities)
_FINAL = re.compile(r"^up_projection\.decode\.(\d+)\.(weight|bias)$")  # the final 1x1 conv


def torch_key(model, path: Path) -> str:
    if path[0] == "encoder":
        return PREFIX + dino.torch_key(model, path[1:])
    if path == ("fuse", "kernel"):
        return FUSE
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
    if path[0] == "head":
        return f"{DECODE}{len(model.decoder_widths())}.{leaf}"
    m = re.fullmatch(r"decoder_(\d+)", path[0])
    if m is None:
        raise ValueError(f"{'/'.join(path)}: not under encoder, fuse, decoder_<i> or head")
    return f"{DECODE}{m.group(1)}.{1 if path[1] == 'norm' else 0}.{leaf}"


def is_transposed_conv(path: Path) -> bool:
    return len(path) == 2 and path[0].startswith("decoder_") and path[1] == "kernel"


def buffers(model) -> State:
    return {PREFIX + k: v for k, v in dino.buffers(model).items()}


def ignored(model, key: str) -> bool:
    if key == MASK and not model.mask_token:  # the original always holds one
        return True
    return key.startswith(dino.OTHERS)  # the heads and losses of a backbone's training checkpoint


def extra(model) -> State:
    """The mask token the original encoder holds (unused by segmentation) for a model built
    without one: zeros, its initial value."""
    return {} if model.mask_token else {MASK: np.zeros((1, model.hidden_size), np.float32)}


def is_head(key: str) -> bool:
    return _FINAL.match(key) is not None


def _encoder(state: State) -> State:
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}


def _final_index(state: State) -> int | None:
    found = [int(m.group(1)) for k in state if (m := _FINAL.match(k))]
    return max(found) if found else None


def _squeeze(state: State, key: str) -> None:
    """A 1x1 convolution's weight (out, in, 1, 1) as the (out, in) the Dense layer exchanges."""
    w = state.get(key)
    if w is None or w.ndim == 2:
        return
    if w.ndim != 4 or w.shape[2:] != (1, 1):
        raise ValueError(f"{key} has shape {tuple(w.shape)}, expected a 1x1 convolution "
                         "(out, in, 1, 1)")
    state[key] = w.reshape(w.shape[:2])


def canonicalize(state: State) -> tuple[State, str]:
    """``dino_encoder.*`` in the DINO originals' names and the 1x1 convolutions as matrices;
    a bare DINO backbone is prefixed with ``dino_encoder.`` (heads left as they are)."""
    state = dict(state)
    encoder = _encoder(state)
    rest = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    if not encoder:
        try:
            canon, fmt = dino.canonicalize(state)
        except ValueError as e:
            raise ValueError(f"not a BrainDINO segmentation state dict: no {PREFIX}* keys, and "
                             f"not a bare DINO backbone ({e})") from e
        return ({(k if k.startswith(dino.OTHERS) else PREFIX + k): v for k, v in canon.items()},
                f"{fmt}, a bare backbone as {PREFIX[:-1]}")
    canon, fmt = dino.canonicalize(encoder)
    if not any(k.startswith(DECODE) for k in rest):  # the encoder alone (as read above)
        return {**{PREFIX + k: v for k, v in canon.items()}, **rest}, f"{fmt}, {PREFIX[:-1]} alone"
    for key in [FUSE, *(k for k in rest if _FINAL.match(k) and k.endswith(".weight"))]:
        _squeeze(rest, key)
    net = "Primus_Multiscale_conv" if FUSE in rest else "Primus_Multiscale"
    return ({**{PREFIX + k: v for k, v in canon.items()}, **rest},
            f"BrainDINO segmentation ({net}), {fmt} encoder")


def detect(state: State) -> bool:
    return any(k.startswith(PREFIX) for k in state) and any(k.startswith(DECODE) for k in state)


def infer_config(state: State) -> dict:
    """DinoSeg arguments off the shapes of a canonical state dict (see the module docstring
    for what is not there)."""
    cfg = dino.infer_config(_encoder(state))
    if not cfg:
        return {}
    cfg.setdefault("img_size", 224)  # RoPE encoders: any multiple of the patch size
    fuse = state.get(FUSE)
    if fuse is not None:
        cfg.update(in_channels=int(fuse.shape[1]), fused_channels=int(fuse.shape[0]))
    else:
        cfg["fused_channels"] = 0
    final = _final_index(state)
    if final is not None and f"{DECODE}{final}.weight" in state:
        cfg["out_channels"] = int(state[f"{DECODE}{final}.weight"].shape[0])
    first = state.get(f"{DECODE}0.0.weight")
    hidden, depth = cfg["hidden_size"], cfg.get("depth", 0)
    if first is not None and hidden and first.shape[0] % hidden == 0 and depth:
        n = int(first.shape[0]) // hidden
        if 1 <= n <= depth:
            cfg["layers"] = tuple((i + 1) * depth // n - 1 for i in range(n))
    return cfg


def hints(model, source: State, expected: dict) -> list[str]:
    out = dino.hints(model, _encoder(source), _encoder(expected))
    if not any(k.startswith(DECODE) for k in source):
        out.append(f"the checkpoint is a bare DINO backbone (no {DECODE}*): load it with "
                   "encoder_only=True (--encoder-only, init.encoder_only)")
        return out
    fuse, want = source.get(FUSE), expected.get(FUSE)
    if fuse is not None and want is None:
        out.append(f"the checkpoint fuses {fuse.shape[1]} modalities (to3): build the model with "
                   f"fused_channels={fuse.shape[0]}, in_channels <= {fuse.shape[1]}")
    elif fuse is None and want is not None:
        out.append("the checkpoint has no fusion (to3, Primus_Multiscale): build the model with "
                   "fused_channels=0")
    elif fuse is not None and fuse.shape[1] < model.in_channels:
        out.append(f"to3.weight has {fuse.shape[1]} input rows, fewer than in_channels="
                   f"{model.in_channels}")
    first, want = source.get(f"{DECODE}0.0.weight"), expected.get(f"{DECODE}0.0.weight")
    if first is not None and want is not None and first.shape[0] != want.shape[0]:
        out.append(f"the decoder reads {first.shape[0]} channels, the model {want.shape[0]} = "
                   f"{len(tuple(model.layers))} layers x hidden_size {model.hidden_size}: layers= "
                   f"with {first.shape[0] // max(model.hidden_size, 1)} block indices?")
    final = _final_index(source)
    head = source.get(f"{DECODE}{final}.weight") if final is not None else None
    if head is not None and head.shape[0] != model.out_channels:
        out.append(f"the head has {head.shape[0]} outputs, the model out_channels="
                   f"{model.out_channels} (new_head=True, --new-head, starts it fresh)")
    return out


FAMILY = Family(
    name="BrainDINO slice segmentation (Primus_Multiscale_conv)",
    torch_key=torch_key,
    buffers=buffers,
    canonicalize=canonicalize,
    dummy_input=dino.dummy_input,
    is_transposed_conv=is_transposed_conv,
    encoder_prefix=PREFIX,
    hints=hints,
    ignored=ignored,
    extra=extra,
    is_head=is_head,
    detect=detect,
    model_names=("dino_seg",),
    config_for=lambda state, model_name: infer_config(state),
    missing=dino.missing,
    buffer_rtol=((PREFIX + dino.PERIODS, dino.PERIODS_RTOL),),
    note=("the encoder blocks read (layers) are not in the files: evenly spaced blocks ending at "
          "the last are assumed (2, 5, 8, 11 of 12, the released trainer's; --set layers=[...]); "
          "a RoPE encoder's img_size is not either (224); DINOv2 encoders do not record num_heads; "
          "the LayerNorm eps is not in the files"),
)


# ----------------------------------------------------------------------------------------
# What the generic exchange cannot express: 4D 1x1 kernels, to3's rows past in_channels.


def _crop_fusion(state: State, model) -> str | None:
    """The first ``in_channels`` rows of a wider ``to3`` (what the original convolves a slice
    of that many modalities with); returns the report line, None when nothing was cropped."""
    fuse = state.get(FUSE)
    c = model.in_channels
    if not model.fused_channels or fuse is None or fuse.ndim != 2 or fuse.shape[1] <= c:
        return None
    state[FUSE] = fuse[:, :c]
    return (f"{FUSE}: the first {c} of its {fuse.shape[1]} modality rows (what the original "
            f"applies to {c} modalities); rows {c}..{fuse.shape[1] - 1} unused")


def load_torch(source, model, strict: bool = True, *, params=None, encoder_only: bool = False,
               trust_pickle: bool = False, new_head: bool = False) -> tuple[dict, core.LoadReport]:
    """:func:`jaxbrain.convert.core.load` for a DinoSeg, with the fusion's rows past
    ``in_channels`` cropped (reported under adapted)."""
    state, name = core.read_state_dict(source, trust_pickle)
    state, fmt = canonicalize(state)
    note = None if encoder_only else _crop_fusion(state, model)
    try:
        out, report = core.load(state, model, FAMILY, strict=strict, params=params,
                                encoder_only=encoder_only, new_head=new_head)
    except core.CheckpointMismatchError as e:  # named as the caller gave the source
        head = f"checkpoint {e.report.source} [{e.report.source_format}]"
        e.report.source, e.report.source_format = name, fmt
        raise core.CheckpointMismatchError(str(e).replace(head, f"checkpoint {name} [{fmt}]", 1),
                                           e.report) from None
    report.source, report.source_format = name, fmt
    if note:
        report.adapted.append(note)
    return out, report


def save_torch(params, model, path=None, *, template=None) -> State:
    """The original's state dict of ``model`` with ``params`` (``template``: a state dict whose
    ``to3.weight`` supplies the rows past ``in_channels``), written to ``path`` (.pt, .pth,
    .bin, .safetensors) when given. The original network loads it with ``strict=True``."""
    if getattr(model, "lora_rank", 0):
        raise ValueError(f"dino_seg with lora_rank={model.lora_rank}: BrainDINO's segmentation "
                         "network has no LoRA adapters; fold them into qkv first "
                         "(jaxbrain.models.vit.merge_lora) and export with lora_rank=0")
    state = core.save(params, model, FAMILY, None, template)
    final = f"{DECODE}{len(model.decoder_widths())}.weight"
    state[final] = state[final][:, :, None, None]
    if FUSE in state:
        w = state[FUSE]
        c = w.shape[1]
        if c < MAX_MODALITIES:
            rows = np.full((w.shape[0], MAX_MODALITIES - c), 1.0 / MAX_MODALITIES, w.dtype)
            given = None if template is None else template.get(FUSE)
            if given is not None and np.shape(given)[:2] == (w.shape[0], MAX_MODALITIES):
                rows = np.asarray(given).reshape(w.shape[0], MAX_MODALITIES)[:, c:].astype(w.dtype)
            w = np.concatenate([w, rows], axis=1)
        state[FUSE] = w[:, :, None, None]
    order = (DECODE, PREFIX, "")  # the original's module order: up_projection, dino_encoder, to3
    state = dict(sorted(state.items(), key=lambda kv: next(i for i, p in enumerate(order)
                                                           if kv[0].startswith(p))))
    if path is not None:
        core.write_state_dict(state, path)
    return state


__all__ = ["FAMILY", "MAX_MODALITIES", "canonicalize", "infer_config", "load_torch", "save_torch"]
