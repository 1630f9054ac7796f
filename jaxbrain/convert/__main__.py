"""Command line for PyTorch <-> Orbax weight conversion.

  python -m jaxbrain.convert inspect brainsegfounder_ssl.pt
  python -m jaxbrain.convert from-torch model.pt ckpt/ --model swin_unetr --set downsample=merging_legacy
  python -m jaxbrain.convert to-torch ckpt/ exported.pt
  python -m jaxbrain.convert from-torch resnet50_in1k.pth ckpt/ --from torchvision_resnet \
      --model resnet50 --set in_channels=1 --set num_classes=2 --channels sum --new-head
  python -m jaxbrain.convert to-torch runs/bsf_stage1 stage1_ssl.pt     # a training run

``from-torch`` writes an Orbax checkpoint of the parameters (``ckpt/params``) and the model's
constructor arguments (``ckpt/model.json``); arguments not given with ``--set`` are read off the
checkpoint's shapes where possible. ``to-torch`` reads both back and writes a PyTorch state dict
(.pt/.pth/.bin) or .safetensors file; given a training run's workdir it exports the run's best
(else latest) checkpoint of the model in its config.json. SSL models (``ssl_head``) are written
in the original's checkpoint layout ({"state_dict": {"module.swinViT...": ...}}), PCT-Net
in MIS-FM's ({"model_state_dict": ...}, all three resolution modes; ``--template`` supplies
the two the model does not hold):

  python -m jaxbrain.convert from-torch pctnet_ct10k_volf.pt ckpt/ --model pctnet \
      --set input_size=[64,128,128] --set resolution_mode=1

DINO slice encoders (``dino_vit``: DINOv3 / BrainDINO originals, DINOv2 flat or chunked,
their ``{"teacher": ...}`` training checkpoints, transformers' DINOv3ViT / Dinov2 files) and
the pretraining model with its heads (``dino_student``):

  python -m jaxbrain.convert from-torch teacher_checkpoint.pth ckpt/     # the backbone
  python -m jaxbrain.convert from-torch dinov2_vitb14_pretrain.pth ckpt/ --set num_heads=12
  python -m jaxbrain.convert to-torch ckpt/ dinov3_hf.safetensors --layout hf
  python -m jaxbrain.convert to-torch runs/braindino braindino.pth   # {"teacher": encoder + heads}
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys

import numpy as np

from jaxbrain import models, runs


def _parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _build_model(name: str, kwargs: dict):
    try:
        return models.create(name, **kwargs)
    except TypeError as e:
        raise SystemExit(f"cannot build {name} with {kwargs}: {e}") from e


def cmd_inspect(args) -> int:
    from jaxbrain.convert import detect, read_state_dict
    state, name = read_state_dict(args.checkpoint, args.trust_pickle)
    try:
        family, state, fmt = detect(state)
    except ValueError as e:
        raise SystemExit(f"{args.checkpoint}: {e}") from e
    n = sum(int(np.prod(v.shape)) for v in state.values())
    print(f"{name}: {fmt}, {len(state)} tensors, {n:,} values")
    model = family.model_names[0]
    print(f"inferred {model} arguments (--model {model}):",
          json.dumps(family.config_for(state, model)))
    if family.note:
        print("note:", family.note)
    if args.keys:
        for k, v in state.items():
            print(f"  {k}  {tuple(v.shape)}  {v.dtype}")
    return 0


def _from_torch_inflated(args, state) -> int:
    """``from-torch --from FAMILY``: a 2D or video network into a 3D model, through
    ``load_pretrained`` (inflation, channel adaptation, strict report)."""
    import jax
    import flax.linen as nn
    from jaxbrain.convert import family_of, inflate
    from jaxbrain.convert.pretrained import load_pretrained
    if args.model is None:
        raise SystemExit(f"--from {args.source_family}: give --model, the 3D model it goes into "
                         "(e.g. --model resnet50 --set in_channels=1 --set num_classes=2)")
    try:
        kwargs = (inflate.config_for(args.source_family, state, args.model)
                  if not args.no_infer else {})
    except ValueError as e:
        raise SystemExit(f"{args.checkpoint}: {e}") from e
    kwargs.update(_parse_sets(args.set))
    model = _build_model(args.model, kwargs)
    family = family_of(model)
    shape = family.dummy_input(model)
    fresh = nn.meta.unbox(model.init(jax.random.key(args.seed), np.zeros(shape, np.float32)))
    try:
        variables, report = load_pretrained(
            state, model, fresh, source_family=args.source_family, inflate=args.inflate,
            channels=args.channels, encoder_only=args.encoder_only, new_head=args.new_head,
            strict=not args.non_strict)
    except ValueError as e:
        raise SystemExit(f"{args.checkpoint}: {e}") from e
    report.source = args.checkpoint
    print(report)
    runs.save_converted(args.output, {"name": args.model, **kwargs}, variables)
    out = os.path.abspath(args.output)
    print(f"wrote {out}/{runs.PARAMS_DIR} and {runs.MODEL_JSON}: {args.model}({kwargs})")
    return 0


def cmd_from_torch(args) -> int:
    from jaxbrain.convert import detect, family_for, load_torch, read_state_dict

    state, _ = read_state_dict(args.checkpoint, args.trust_pickle)
    if args.source_family not in (None, "monai"):
        return _from_torch_inflated(args, state)
    if args.model is None and args.encoder_only:
        raise SystemExit("--encoder-only: give --model, the model the encoder goes into "
                         "(e.g. --model swin_unetr --set out_channels=3)")
    if args.model is None:
        try:
            family, canonical, fmt = detect(state)
        except ValueError as e:
            raise SystemExit(f"{args.checkpoint}: {e}; give --model") from e
        args.model = family.model_names[0]
        print(f"{args.checkpoint}: {fmt} (--model {args.model})")
    else:
        family = family_for(args.model)
        try:
            canonical, _ = family.canonicalize(state)
        except ValueError as e:
            raise SystemExit(f"{args.checkpoint}: {e}") from e
    kwargs = family.config_for(canonical, args.model) if not args.no_infer else {}
    kwargs.update(_parse_sets(args.set))
    problem = family.missing(args.model, kwargs)
    if problem:
        raise SystemExit(problem)
    model = _build_model(args.model, kwargs)
    init = None
    if args.encoder_only or args.non_strict or args.new_head:
        import jax
        from jaxbrain.convert.core import unbox
        from jaxbrain.convert import family_of
        shape = family_of(model).dummy_input(model)
        init = unbox(model.init(jax.random.key(args.seed), np.zeros(shape, np.float32)))
        init = init if len(family_of(model).collections) > 1 else init["params"]
    params, report = load_torch(state, model, strict=not args.non_strict, params=init,
                                encoder_only=args.encoder_only, new_head=args.new_head)
    print(report)
    variables = params if "params" in params else {"params": params}
    runs.save_converted(args.output, {"name": args.model, **kwargs}, variables)
    out = os.path.abspath(args.output)
    print(f"wrote {out}/{runs.PARAMS_DIR} and {runs.MODEL_JSON}: {args.model}({kwargs})")
    return 0


def _encoder_alone(model, variables, name: str):
    """(a DinoViT, its params): the slice encoder of ``model`` (under ``encoder``) with its
    LoRA adapters folded into the qkv weights."""
    from jaxbrain.models.dino import DinoViT
    from jaxbrain.models.vit import ENCODER_FIELDS, merge_lora
    params = variables.get("params", variables)
    if not hasattr(model, "encoder_kwargs") or "encoder" not in params:
        raise SystemExit(f"--encoder: {name} has no slice encoder under 'encoder' (slice_scan, "
                         "dino_student, dino_seg do)")
    kwargs = {k: v for k, v in model.encoder_kwargs().items() if k in ENCODER_FIELDS}
    alpha = kwargs.pop("lora_alpha", None)
    kwargs["lora_rank"] = 0
    return DinoViT(**kwargs), merge_lora(params["encoder"], alpha)


def cmd_to_torch(args) -> int:
    from jaxbrain.convert import family_of

    src = os.path.abspath(args.checkpoint)
    kind = runs.kind_of(src)
    if kind is None and os.path.isdir(src) and args.model:  # a bare Orbax params directory
        variables = runs.restore_tree(src)
        variables = variables if "params" in variables else {"params": variables}
        model_config, step, which = {"name": args.model}, None, "params"
    else:
        try:
            run = runs.load_run(src, args.step, weights=args.weights)
        except runs.RunError as e:
            raise SystemExit(f"{e}; or give an Orbax params directory with --model") from e
        if not run.model_config and not args.model:
            raise SystemExit(f"{src} has no {runs.MODEL_JSON}: give --model and its --set "
                             "arguments")
        variables, step, which = run.variables, run.step, run.weights
        model_config = dict(run.model_config) or {"name": args.model}
    if args.model:
        model_config["name"] = args.model
    model_config.update(_parse_sets(args.set))
    model = models.from_config(model_config)
    if family_of(model).collections == ("params",):
        variables = variables["params"]
    if args.encoder:
        model, variables = _encoder_alone(model, variables, model_config["name"])
    from jaxbrain.convert import export, sidecar
    if getattr(model, "downsample", None) == sidecar.LEGACY and \
            family_of(model).name in ("SwinUNETR", "SSLHead"):
        _check_legacy_merging(model_config["name"], args.allow_legacy_merging)
    try:
        state, info = export(variables, model, args.output, layout=args.layout,
                             template=args.template, block_chunks=args.block_chunks,
                             model_config=None if args.encoder else model_config)
    except (sidecar.NotRepresentable, ValueError) as e:
        raise SystemExit(f"to-torch {model_config['name']}: {e}") from e
    origin = f" from {src} step {step}" if step is not None else ""
    if which == "teacher":
        origin += " (its EMA teacher; --weights student for the optimised parameters)"
    if args.encoder:
        origin += ": its encoder as a DINO backbone, LoRA adapters merged"
    print(f"wrote {args.output}: {len(state)} tensors for {model_config['name']}{origin}")
    target = info.get("class")
    if target:
        print(f"wrote {sidecar.sidecar_path(args.output)}: {target}(**kwargs), layout "
              f"{info['layout']}" + (", config.json beside" if "config_json" in info else ""))
    return 0


def _check_legacy_merging(name: str, allowed: bool) -> None:
    """MONAI >= 1.5 has no legacy PatchMerging order: refuse (or, when allowed, warn)."""
    from jaxbrain.convert import sidecar
    try:
        import monai
        version = monai.__version__
        newer = tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) >= (1, 5)
    except ImportError:
        version, newer = "not installed", True
    if not newer:
        print(f"note: {name} has the legacy PatchMerging order, which MONAI {version} has")
        return
    message = (f"{name} has downsample='merging_legacy' (MONAI < 1.5's PatchMerging order); "
               f"MONAI >= 1.5 (here: {version}) loads the export and computes something else: "
               f"{sidecar.LEGACY_NOTE.split(': ', 1)[1].split(';')[0]}")
    if not allowed:
        raise SystemExit(message + " -- pass --allow-legacy-merging to write it")
    # allowed: save_torch warns as it writes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxbrain.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="show a PyTorch checkpoint's format and inferred model arguments")
    p.add_argument("checkpoint")
    p.add_argument("--keys", action="store_true", help="list every tensor")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickled Python objects (trusted files only)")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("from-torch", help="PyTorch checkpoint -> Orbax checkpoint")
    p.add_argument("checkpoint", help=".pt/.pth/.bin/.safetensors")
    p.add_argument("output", help="directory for the Orbax checkpoint")
    p.add_argument("--model", default=None,
                   help="the model registry name (swin_unetr, swin_transformer, ssl_head, "
                   "pctnet, ...); default: the family the checkpoint's keys show, its first model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor argument, e.g. --set downsample=merging_legacy")
    p.add_argument("--no-infer", action="store_true", help="do not read arguments off the checkpoint")
    p.add_argument("--encoder-only", action="store_true",
                   help="load only swinViT.* (e.g. from an SSL checkpoint); the rest is freshly initialised")
    p.add_argument("--non-strict", action="store_true", help="load what matches; report the rest")
    p.add_argument("--new-head", action="store_true",
                   help="output layers of another class count (--set out_channels=N) start fresh")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed for parameters not loaded")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickled Python objects (trusted files only)")
    p.add_argument("--from", dest="source_family", default=None,
                   choices=("timm_vit", "torchvision_resnet", "torchvision_densenet", "videomae", "monai"),
                   help="the file's family when a 2D or video network goes into a 3D model "
                   "(inflated: jaxbrain.convert.inflate); needs --model")
    p.add_argument("--inflate", default="mean", choices=("mean", "centre"),
                   help="with --from: 2D kernels repeated over depth / depth (mean) or at the "
                   "central depth tap (centre)")
    p.add_argument("--channels", default="average", choices=("average", "sum", "mean", "repeat", "fresh"),
                   help="with --from: an input layer for another channel count (an RGB stem "
                   "for grey scans: sum = average, or mean)")
    p.set_defaults(fn=cmd_from_torch)

    p = sub.add_parser("to-torch", help="Orbax checkpoint -> PyTorch state dict")
    p.add_argument("checkpoint", help="a training run (train.py --workdir), a directory written by "
                   "from-torch, or an Orbax params directory")
    p.add_argument("--step", type=int, default=None,
                   help="training runs: this checkpoint step (default: best, else latest)")
    p.add_argument("output", help=".pt/.pth/.bin or .safetensors")
    p.add_argument("--model", default=None, help="model name when the directory has no model.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor argument (overrides model.json)")
    p.add_argument("--template", default=None,
                   help="PCT-Net: take the tensors the model does not hold (the other resolution "
                   "modes' stems and heads) from this checkpoint, e.g. the released one")
    p.add_argument("--weights", default="auto", choices=runs.WEIGHTS,
                   help="a run with an EMA teacher (DINO): auto = the teacher (the released "
                        "network), student = the optimised parameters")
    p.add_argument("--layout", default=None, choices=("original", "monai", "timm", "videomae", "hf"),
                   help="the target: ViT monai (default), timm (2D) or videomae (transformers' "
                   "VideoMAE, with config.json); DINO backbones original "
                   "(default: DINOv3 / DINOv2 names) or hf (transformers' DINOv3ViTModel / "
                   "Dinov2Model, with config.json); one layout for the other families")
    p.add_argument("--allow-legacy-merging", action="store_true",
                   help="SwinUNETR with downsample=merging_legacy: write it although MONAI >= 1.5 "
                   "has no such order (the sidecar names it; README: LegacyPatchMerging)")
    p.add_argument("--encoder", action="store_true",
                   help="models with a DINO slice encoder (slice_scan, dino_student, dino_seg): "
                   "write the encoder alone as a DINO backbone, LoRA adapters merged into qkv")
    p.add_argument("--block-chunks", type=int, default=0,
                   help="DINOv2 backbones: blocks.{chunk}.{i} keys in this many chunks (0: flat)")
    p.set_defaults(fn=cmd_to_torch)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
