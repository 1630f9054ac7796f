"""3D CNN classifier training step: jaxbrain (JAX/XLA) against MONAI (PyTorch), same network,
same run.

    python bench/bench_cnn3d.py                      # DenseNet121, 96^3, 1 channel, batch 2
    python bench/bench_cnn3d.py --model resnet50     # any densenet* / resnet* registry name
    python bench/bench_cnn3d.py --small              # quick: 64^3, 2 repeats
    python bench/bench_cnn3d.py --precision bf16     # on a GPU: bf16 compute vs torch AMP

A training step is forward (training mode: BatchNorm batch statistics, running statistics
updated), softmax cross-entropy against fixed random labels over ``--classes`` classes,
backward and AdamW (bench/gpu.py's step, shared with the GPU script). Times are the median
of ``--repeats`` steps after one warm-up step (XLA compilation done before it, reported
apart). The ratio is jaxbrain samples/s over MONAI
samples/s: above 1 means jaxbrain is faster. MONAI's network is built with the jaxbrain
model's settings (for ResNets: block, layers, shortcut, downsample bias, conv1 stride).
Printed as a Markdown table and written to bench/results/cnn3d-<model>-<device>-<precision>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpu  # noqa: E402  (the classifier step shared with the GPU script)


def _sizes(args) -> dict:
    return dict(roi=tuple(args.size), batch=args.batch, classes=args.classes)


def bench_jax(model, args) -> dict:
    """gpu.py's classifier step (softmax cross-entropy, AdamW, BatchNorm in training mode with
    its running statistics updated)."""
    import jax
    out = gpu._jax_classifier(model, _sizes(args), gpu.Clock(args.repeats, 1, float("inf")))
    return dict(out, jax=jax.__version__, device=out["device_kind"])


def monai_network(model, classes: int):
    """The MONAI network with the jaxbrain model's architecture."""
    from monai.networks.nets import DenseNet, ResNet
    from jaxbrain.models.cnn3d import DenseNet as OurDenseNet

    if isinstance(model, OurDenseNet):
        return DenseNet(3, model.in_channels, classes, init_features=model.init_features,
                        growth_rate=model.growth_rate, block_config=tuple(model.block_config),
                        bn_size=model.bn_size, dropout_prob=model.dropout_prob)
    return ResNet(model.block, list(model.layers), list(model.block_inplanes),
                  n_input_channels=model.in_channels, conv1_t_size=model.conv1_t_size,
                  conv1_t_stride=model.conv1_t_stride, no_max_pool=model.no_max_pool,
                  shortcut_type=model.shortcut_type, widen_factor=model.widen_factor,
                  num_classes=classes, bias_downsample=model.bias_downsample)


def bench_torch(model, args) -> dict:
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    out = gpu._torch_classifier(monai_network(model, args.classes), _sizes(args), args.precision,
                                gpu.Clock(args.repeats, 1, float("inf")))
    return dict(out, torch=torch.__version__)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="densenet121",
                   help="densenet121/169/201/264, resnet10 ... resnet200")
    p.add_argument("--size", default="96,96,96")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--remat", action="store_true", help="rematerialise blocks in jaxbrain")
    p.add_argument("--small", action="store_true", help="quick run: 64^3, 2 repeats")
    p.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args()
    if args.small:
        args.size, args.repeats = "64,64,64", 2
    args.size = tuple(int(s) for s in args.size.split(","))

    import jax.numpy as jnp
    from jaxbrain import models
    from jaxbrain.models.cnn3d import DENSENETS, RESNETS
    names = [n for n in {**DENSENETS, **RESNETS} if n not in ("densenet", "resnet")]
    if args.model not in names:
        raise SystemExit(f"--model {args.model!r}: expected one of {names}")
    dtype = jnp.bfloat16 if args.precision == "bf16" else jnp.float32
    model = models.create(args.model, in_channels=1, num_classes=args.classes, dtype=dtype,
                          remat=args.remat)

    ours = bench_jax(model, args)
    theirs = None if args.skip_torch else bench_torch(model, args)
    rate = lambda r: args.batch / r["step_s"]  # noqa: E731
    print(f"\n{args.model}, {'x'.join(map(str, args.size))}, 1 channel, batch {args.batch}, "
          f"{args.classes} classes, {args.precision}; device {ours['device']}, host "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; jax "
          f"{ours['jax']}{', torch ' + theirs['torch'] if theirs else ''}; median of "
          f"{args.repeats} steps\n")
    print("| | jaxbrain | MONAI | ratio |\n|---|---|---|---|")
    if theirs:
        print(f"| training step, samples/s | {rate(ours):.3f} | {rate(theirs):.3f} "
              f"| {rate(ours) / rate(theirs):.2f}x |")
    else:
        print(f"| training step, samples/s | {rate(ours):.3f} | - | - |")
    print(f"| step, s | {ours['step_s']:.3f} | {theirs['step_s'] if theirs else float('nan'):.3f} | |")
    print(f"| jaxbrain compile (first step - median), s | {ours['compile_s']:.1f} | | |")
    if ours.get("peak_bytes") and theirs and theirs.get("peak_bytes"):
        print(f"| peak memory, GiB | {ours['peak_bytes'] / 2**30:.2f} "
              f"| {theirs['peak_bytes'] / 2**30:.2f} | |")
    os.makedirs(args.out, exist_ok=True)
    tag = ours["device"].replace(" ", "_").lower()
    with open(os.path.join(args.out, f"cnn3d-{args.model}-{tag}-{args.precision}.json"), "w") as f:
        json.dump({"jaxbrain": ours, "monai": theirs, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
