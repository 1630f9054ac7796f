"""BrainDINO self-distillation step speed: jaxbrain (objective "dino" in the training loop's
step) against the same step assembled from the dinov2 package's own modules (PyTorch), same
sizes, same run.

    python bench/bench_dino.py                  # ViT-S/16, 2 x 96 global + 4 x 48 local crops, batch 8
    python bench/bench_dino.py --size vit_b     # ViT-B/16 at the recipe's 2 x 224 + 8 x 96, batch 16
    python bench/bench_dino.py --precision bf16 # on a GPU: bf16 compute vs torch autocast bf16

One step: the EMA teacher (no gradient) on the global crops, the student on the masked
global crops and the local crops, DINO + iBOT heads, the DINO CLS loss with centring over
all student / teacher crop pairs (DINOv3's global / local weighting), the iBOT loss on the
masked patches, KoLeo on the global CLS tokens, backward, clipping per module (3.0), AdamW,
teacher EMA. jaxbrain's side is :func:`jaxbrain.training.loop.make_train_step` of the
objective, with its multi-crop and masking on device inside the step; PyTorch's is
DinoVisionTransformer + DINOHead + DINOLoss + iBOTPatchLoss + KoLeoLoss + AdamW + EMA
(bench/gpu.py ``torch_dino``), its crops and masks made once outside the timing (its data
loader's work in the originals). The jaxbrain encoder uses axial RoPE and the dinov2 one
learned positions; neither has storage tokens (the installed dinov2 package's ViT has none).

Each side is timed as the median of ``--repeats`` steps after one warm-up step (XLA's
compilation reported apart); reported: samples (images) per second and the ratio jaxbrain /
dinov2 (above 1: jaxbrain faster), as a Markdown table; rows go to
bench/results/dino-<device>-<precision>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import gpu  # the self-distillation steps shared with the GPU script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {
    # ViT-S/16 with the recipe's heads, crops reduced for a CPU
    "vit_s": dict(hidden=384, depth=12, heads=6, mlp=1536, patch=16, global_size=96,
                  local_size=48, local_crops=4, batch=8, prototypes=65536, head_hidden=2048,
                  bottleneck=256),
    "vit_b": dict(gpu.FULL["dino"]),
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
    ours = gpu.jax_dino(cfg, args.precision, clock)["dino"]
    ours["samples_per_s"] = cfg["batch"] / ours["step_s"]
    theirs = None
    if not args.skip_torch:
        if args.torch_threads:
            import torch
            torch.set_num_threads(args.torch_threads)
        theirs = gpu.torch_dino(cfg, args.precision, clock)["dino"]
        theirs["samples_per_s"] = cfg["batch"] / theirs["step_s"]
    row = dict(config=args.size, spec=cfg, jaxbrain=ours, dinov2=theirs)
    print(json.dumps(row), flush=True)

    m = theirs or {}
    spec = (f"{args.size} (width {cfg['hidden']}, depth {cfg['depth']}, 2 x {cfg['global_size']} + "
            f"{cfg['local_crops']} x {cfg['local_size']} crops, b{cfg['batch']}, "
            f"{cfg['prototypes']} prototypes)")
    ratio = f"{ours['samples_per_s'] / m['samples_per_s']:.2f}x" if m else "-"
    print(f"\nDINO self-distillation step, {args.precision}, device: {ours['device_kind']}, host: "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; medians of "
          f"{args.repeats} steps\n")
    print("| config | jaxbrain samples/s | dinov2 samples/s | ratio | jaxbrain compile |")
    print("|---|---|---|---|---|")
    print(f"| {spec} | {ours['samples_per_s']:.3f} | {m.get('samples_per_s', float('nan')):.3f} "
          f"| {ratio} | {ours['compile_s']:.1f} s |")
    os.makedirs(args.out, exist_ok=True)
    tag = ours["device_kind"].replace(" ", "_").lower()
    with open(os.path.join(args.out, f"dino-{tag}-{args.precision}.json"), "w") as f:
        json.dump([row], f, indent=1)


if __name__ == "__main__":
    main()
