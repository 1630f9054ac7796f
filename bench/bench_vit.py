"""ViT training-step speed: jaxbrain (JAX/XLA) against MONAI's ViT (PyTorch), same
configuration, same run.

    python bench/bench_vit.py                      # ViT-B/16 on 96^3, 1 channel, batch 2, 2 classes
    python bench/bench_vit.py --small              # width 192, depth 4, 64^3: a quick check
    python bench/bench_vit.py --precision bf16     # on a GPU: bf16 compute vs torch autocast bf16

A training step is forward, cross-entropy on the CLS token's logits (a plain linear head on
both sides: MONAI ``post_activation=None``), backward and AdamW. Each side is timed as the
median of ``--repeats`` steps after one warm-up step (XLA's compilation done before it and
reported apart; the step is bench/gpu.py's, shared with the GPU script); jaxbrain's steps end on ``jax.block_until_ready``, PyTorch's on a CUDA
synchronisation where there is one. Reported: samples per second of each and the ratio
jaxbrain / MONAI (above 1: jaxbrain faster), as a Markdown table; the rows are written to
bench/results/vit-<device>-<precision>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import gpu  # the classifier step shared with the GPU script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {
    # name: hidden, depth, heads, mlp, spatial, patch, batch, in_channels, classes
    "vit_b": dict(hidden=768, depth=12, heads=12, mlp=3072, spatial=(96, 96, 96), patch=16,
                  batch=2, channels=1, classes=2),
    "small": dict(hidden=192, depth=4, heads=3, mlp=768, spatial=(64, 64, 64), patch=16,
                  batch=2, channels=1, classes=2),
}


def _sizes(cfg) -> dict:
    return dict(roi=tuple(cfg["spatial"]), batch=cfg["batch"], classes=cfg["classes"])


def bench_jax(cfg, repeats, precision, remat, attn_impl):
    """gpu.py's classifier step (softmax cross-entropy on the CLS logits, AdamW)."""
    import jax.numpy as jnp
    from jaxbrain.models import ViT

    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    model = ViT(cfg["channels"], cfg["spatial"], cfg["patch"], hidden_size=cfg["hidden"],
                depth=cfg["depth"], num_heads=cfg["heads"], mlp_dim=cfg["mlp"],
                num_classes=cfg["classes"], dtype=dtype, remat=remat, attn_impl=attn_impl)
    out = gpu._jax_classifier(model, _sizes(cfg), gpu.Clock(repeats, 1, float("inf")))
    return dict(out, samples_per_s=cfg["batch"] / out["step_s"], device=out["device_kind"])


def bench_torch(cfg, repeats, precision, threads):
    import torch
    from monai.networks.nets import ViT as MonaiViT

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = MonaiViT(cfg["channels"], cfg["spatial"], cfg["patch"], hidden_size=cfg["hidden"],
                   mlp_dim=cfg["mlp"], num_layers=cfg["depth"], num_heads=cfg["heads"],
                   classification=True, num_classes=cfg["classes"], post_activation=None)
    out = gpu._torch_classifier(net, _sizes(cfg), precision, gpu.Clock(repeats, 1, float("inf")),
                                logits_of=lambda o: o[0])  # MONAI's ViT: (logits, hidden states)
    return dict(out, samples_per_s=cfg["batch"] / out["step_s"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the small configuration instead of ViT-B/16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: jaxbrain bf16 compute vs torch autocast bf16 (GPU only for torch)")
    parser.add_argument("--remat", action="store_true", help="rematerialise blocks in jaxbrain")
    parser.add_argument("--attn-impl", default=None, choices=[None, "xla", "cudnn"],
                        help="jax.nn.dot_product_attention implementation (cudnn: GPU, bf16)")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    name = "small" if args.small else "vit_b"
    cfg = CONFIGS[name]
    ours = bench_jax(cfg, args.repeats, args.precision, args.remat, args.attn_impl)
    theirs = None if args.skip_torch else bench_torch(cfg, args.repeats, args.precision, args.torch_threads)
    row = dict(config=name, spec=cfg, jaxbrain=ours, monai=theirs)
    print(json.dumps(row), flush=True)

    m = theirs or {}
    spec = f"{name} (width {cfg['hidden']}, depth {cfg['depth']}, {'x'.join(map(str, cfg['spatial']))}, " \
           f"patch {cfg['patch']}, b{cfg['batch']})"
    ratio = f"{ours['samples_per_s'] / m['samples_per_s']:.2f}x" if m else "-"
    mem = "-"
    if ours.get("peak_bytes") and m.get("peak_bytes"):
        mem = f"{ours['peak_bytes'] / 2**30:.1f} / {m['peak_bytes'] / 2**30:.1f} GiB"
    print(f"\nViT training step, {args.precision}, device: {ours['device']}, host: "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; medians of "
          f"{args.repeats} steps\n")
    print("| config | jaxbrain samples/s | MONAI samples/s | ratio | jaxbrain compile | peak mem jaxbrain / MONAI |")
    print("|---|---|---|---|---|---|")
    print(f"| {spec} | {ours['samples_per_s']:.3f} | {m.get('samples_per_s', float('nan')):.3f} | {ratio} "
          f"| {ours['compile_s']:.1f} s | {mem} |")
    os.makedirs(args.out, exist_ok=True)
    tag = ours["device"].replace(" ", "_").lower()
    with open(os.path.join(args.out, f"vit-{tag}-{args.precision}.json"), "w") as f:
        json.dump([row], f, indent=1)


if __name__ == "__main__":
    main()
