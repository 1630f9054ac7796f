"""3D CNN classifier training step: jaxbrain (JAX/XLA) against MONAI (PyTorch), same network,
same run.

    python bench/bench_cnn3d.py                      # DenseNet121, 96^3, 1 channel, batch 2
    python bench/bench_cnn3d.py --model resnet50     # any densenet* / resnet* registry name
    python bench/bench_cnn3d.py --small              # quick: 64^3, 2 repeats
    python bench/bench_cnn3d.py --precision bf16     # on a GPU: bf16 compute vs torch AMP

A training step is forward (training mode: BatchNorm batch statistics, running statistics
updated), softmax cross-entropy against fixed random labels over ``--classes`` classes,
backward and AdamW. Times are the median of ``--repeats`` steps after one warm-up step (which
includes XLA compilation, reported apart). The ratio is jaxbrain samples/s over MONAI
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

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_swin_unetr import _median_time  # noqa: E402


def _data(args):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, *args.size, 1)).astype(np.float32)
    y = rng.integers(0, args.classes, args.batch)
    return x, y


def bench_jax(model, args) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    import flax.linen as nn

    x, y = (jnp.asarray(a) for a in _data(args))
    variables = jax.jit(lambda k: nn.unbox(model.init(k, x[:1])))(jax.random.key(0))
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adamw(1e-4, weight_decay=1e-5)

    def loss_fn(p, stats):
        logits, new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                  mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

    @jax.jit
    def step(state):
        p, stats, opt = state
        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(p, stats)
        u, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, u), stats, opt), loss

    holder = {"state": (params, stats, tx.init(params))}

    def run():
        holder["state"], loss = step(holder["state"])
        loss.block_until_ready()

    s, first = _median_time(run, args.repeats)
    dev = jax.devices()[0]
    peak = (dev.memory_stats() or {}).get("peak_bytes_in_use") if dev.platform == "gpu" else None
    return dict(step_s=s, compile_s=first - s, peak_bytes=peak, device=str(dev.device_kind),
                jax=jax.__version__)


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
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    net = monai_network(model, args.classes).to(device).train()
    x, y = _data(args)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3))).to(device)
    y = torch.from_numpy(y).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-5)
    amp = args.precision == "bf16" and cuda

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    s, _ = _median_time(run, args.repeats)
    return dict(step_s=s, peak_bytes=torch.cuda.max_memory_allocated() if cuda else None,
                torch=torch.__version__)


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
