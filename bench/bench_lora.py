"""BrainDINO LoRA whole-scan probe step speed: jaxbrain (model ``slice_scan`` of
configs/braindino_probe.py:lora in the training loop's step) against BrainDINO's own
construction of the same probe in PyTorch, same sizes, same run.

    python bench/bench_lora.py                  # ViT-S/16, batch 2 x 16 slices of 112 px
    python bench/bench_lora.py --size vit_b     # BrainDINO's ViT-B/16, 4 x 128 slices of 224, remat
    python bench/bench_lora.py --size vit_b --precision bf16   # on a GPU: bf16 vs torch autocast bf16

One step: a (batch, S, H, W) stack of slices, each slice repeated to 3 channels and put
through the ViT (batch * S images), its normalised CLS token, the mean over the S slices,
LayerNorm -> Linear -> GELU -> Linear, cross-entropy, backward, Adam (lr 1e-4, L2 weight decay
1e-5, PyTorch's ``Adam(weight_decay=...)``). LoRA rank 8 on every block's q and v; the rest of
the encoder is frozen, the adapters and the head train. jaxbrain's side is
:func:`jaxbrain.training.loop.make_train_step` of the preset's model, objective and optimizer
(``optim.freeze="encoder"``, ``optim.unfreeze=("*/lora_*",)``; the remat of the preset at
``vit_b``; bench/gpu.py ``jax_lora``). PyTorch's is BrainDINO's networks/SliceStudent.py
(``add_lora_to_vit`` and the mean-pooling forward) with its stage2/lora.py ``LoRA`` module
restated (qkv(x), then ``qkv[..., :dim] += b_q(a_q(x))`` and ``qkv[..., -dim:] +=
b_v(a_v(x))``; a kaiming-uniform with a = sqrt(5), b zero), ``requires_grad`` False on the
backbone but for the adapters, ``torch.optim.Adam`` over the trainable parameters
(bench/gpu.py ``torch_lora``).

The PyTorch backbone is the installed dinov2 package's ``DinoVisionTransformer`` (BrainDINO
builds DINOv3's, which is not an installable package) with the same widths, depth, heads,
MLP, patch, LayerScale (1e-5), LayerNorm eps (1e-6), no qkv bias and its fused ``attn.qkv``
(xFormers off: ``XFORMERS_DISABLED=1``). What differs: dinov2 adds learned positions (a
``pos_embed`` table, the one parameter the two sides do not share) where jaxbrain's DINOv3
layout rotates q and k (axial RoPE, no parameters); neither has storage tokens (the dinov2
package's ViT has none, so jaxbrain's are off); dinov2's attention is the explicit
softmax(q k^T) v, jaxbrain's XLA's. Neither side differentiates the frozen weights:
PyTorch's ``requires_grad`` is False on them, jaxbrain's loop step takes its gradient over
the trained leaves alone (``optim.freeze_rule``; the frozen ones are constants of the loss).

Each side is timed as the median of ``--repeats`` steps after one warm-up step (XLA's
compilation reported apart); reported: samples (scans) per second, slices per second, the
ratio jaxbrain / PyTorch (above 1: jaxbrain faster) and the parameter counts, trainable /
total, of both sides, which must agree (once dinov2's position table is set aside), as a
Markdown table; rows go to bench/results/lora-<device>-<precision>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import gpu  # the LoRA probe steps shared with the GPU script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {
    # ViT-S/16 on fewer, smaller slices for a CPU
    "vit_s": dict(hidden=384, depth=12, heads=6, mlp=1536, patch=16, slice_size=112, slices=16,
                  batch=2, classes=2, rank=8, remat=False),
    "vit_b": dict(gpu.FULL["lora"]),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(CONFIGS), default="vit_s")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    cfg = CONFIGS[args.size]
    clock = gpu.Clock(args.repeats, 1, float("inf"))
    gpu._paths()
    ours = gpu.jax_lora(cfg, args.precision, clock)["lora"]
    theirs = None
    if not args.skip_torch:
        if args.torch_threads:
            import torch
            torch.set_num_threads(args.torch_threads)
        theirs = gpu.torch_lora(cfg, args.precision, clock)["lora"]
        gpu.check_lora_params(ours, theirs)
    for side in filter(None, (ours, theirs)):
        side["samples_per_s"] = cfg["batch"] / side["step_s"]
        side["slices_per_s"] = cfg["batch"] * cfg["slices"] / side["step_s"]
    row = dict(config=args.size, spec=cfg, jaxbrain=ours, torch=theirs)
    print(json.dumps(row), flush=True)

    m = theirs or {}
    nan = float("nan")
    spec = (f"{args.size} (width {cfg['hidden']}, depth {cfg['depth']}, patch {cfg['patch']}, "
            f"b{cfg['batch']} x {cfg['slices']} slices of {cfg['slice_size']}, LoRA rank "
            f"{cfg['rank']}{', remat' if cfg['remat'] else ''})")
    ratio = f"{ours['samples_per_s'] / m['samples_per_s']:.2f}x" if m else "-"
    counts = f"{ours['params_trainable']:,} / {ours['params_total']:,}"
    if m:
        counts += (f"; {m['params_trainable']:,} / {m['params_total']:,} (pos_embed "
                   f"{m['params_positions']:,})")
    print(f"\nLoRA whole-scan probe step, {args.precision}, device: {ours['device_kind']}, host: "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; medians of "
          f"{args.repeats} steps\n")
    print("| config | jaxbrain scans/s | jaxbrain slices/s | PyTorch scans/s | PyTorch slices/s "
          "| ratio | jaxbrain compile | trainable / total parameters (jaxbrain; PyTorch) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {spec} | {ours['samples_per_s']:.3f} | {ours['slices_per_s']:.2f} "
          f"| {m.get('samples_per_s', nan):.3f} | {m.get('slices_per_s', nan):.2f} | {ratio} "
          f"| {ours['compile_s']:.1f} s | {counts} |")
    os.makedirs(args.out, exist_ok=True)
    tag = ours["device_kind"].replace(" ", "_").lower()
    with open(os.path.join(args.out, f"lora-{tag}-{args.precision}.json"), "w") as f:
        json.dump([row], f, indent=1)


if __name__ == "__main__":
    main()
