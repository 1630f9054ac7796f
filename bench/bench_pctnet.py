"""PCT-Net Volume Fusion training step and Volume Fusion alone: jaxbrain against PyTorch /
NumPy in the same run.

    python bench/bench_pctnet.py                               # 64x128x128, features 8..128
    python bench/bench_pctnet.py --features 24,48,128,256,512  # the published PCT-Net (GPU)

Times, as the median of ``--repeats`` runs after a warm-up (compilation excluded):

* training step at ``--size`` (default 64x128x128, MIS-FM's crop), batch ``--batch``: Volume
  Fusion of the batch, forward with deep supervision, (Dice + CE) / 2 over 5 classes,
  backward, Adam. jaxbrain: ``train.py``'s jitted step with the VF objective (fusion on
  device); PyTorch: the replica (bench/torch_pctnet.py) with fusion by PyMIC's per-sample
  loops in NumPy on the host, then the same loss;
* Volume Fusion alone (block grid), fused batches per second: jaxbrain's batch-vectorised
  jitted fusion on the device against PyMIC's per-sample NumPy loop.

Ratio = PyTorch (NumPy) time / jaxbrain time (above 1: jaxbrain faster). Printed as a
Markdown table and written to bench/results/pctnet-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys

import numpy as np

from bench_swin_unetr import _median_time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _crops(args) -> np.ndarray:
    return np.random.default_rng(0).random((args.batch, *args.size, 1)).astype(np.float32)


def vf_numpy(images: np.ndarray, classes=5, ratio=0.7, size_min=(8, 8, 8), size_max=(32, 32, 32)):
    """PyMIC's VolumeFusion, sample by sample (images (B, C, D, H, W); partner = the other
    crop of the pair)."""
    k_max = classes - 1
    fused, labels = np.empty_like(images), np.zeros((images.shape[0], *images.shape[2:]), np.uint8)
    for i in range(images.shape[0]):
        bg, fg = images[i], images[i ^ 1]
        _, d, h, w = bg.shape
        db, hb, wb = (random.randint(size_min[a], size_max[a]) for a in range(3))
        od, oh, ow = random.randint(0, d % db), random.randint(0, h % hb), random.randint(0, w % wb)
        dn, hn, wn = d // db, h // hb, w // wb
        n = dn * hn * wn
        chosen = [1] * int(n * ratio) + [0] * (n - int(n * ratio))
        random.shuffle(chosen)
        mask = labels[i]
        for a in range(dn):
            for b in range(hn):
                for c in range(wn):
                    if chosen[a * hn * wn + b * wn + c]:
                        mask[od + a * db:od + (a + 1) * db, oh + b * hb:oh + (b + 1) * hb,
                             ow + c * wb:ow + (c + 1) * wb] = random.randint(1, k_max)
        alpha = mask[None] / k_max
        fused[i] = alpha * fg + (1.0 - alpha) * bg
    return fused, labels


def bench_jax(args) -> dict:
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    from ml_collections import ConfigDict
    from jaxbrain.models import PCTNet
    from jaxbrain.objectives.volume_fusion import VolumeFusion
    from jaxbrain.training import loop
    from jaxbrain.training.optim import make_optimizer

    dtype = jnp.bfloat16 if args.precision == "bf16" else jnp.float32
    model = PCTNet(1, 5, input_size=args.size, features=args.features, multiscale_pred=True,
                   dtype=dtype)
    objective = VolumeFusion()
    tx, lr_fn = make_optimizer(ConfigDict(dict(name="adam", lr=1e-3, weight_decay=1e-5,
                                               schedule="constant")), 100)
    batch = {"image": jnp.asarray(_crops(args))}
    variables = jax.jit(lambda k: nn.unbox(model.init(k, batch["image"][:1])))(jax.random.key(0))
    params = variables.pop("params")
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(1)), "model_state": variables}
    step = jax.jit(loop.make_train_step(model, objective, tx, lr_fn, dtype), donate_argnums=(0,))
    fuse = jax.jit(objective.fuse_batch)
    holder = {"state": state, "i": 0}

    def run_fuse():
        holder["i"] += 1
        jax.block_until_ready(fuse(jax.random.key(holder["i"]), batch["image"]))

    def run_step():
        holder["state"], m = step(holder["state"], batch)
        jax.block_until_ready(m)

    return {"fuse_s": _median_time(run_fuse, args.repeats)[0],
            "step_s": _median_time(run_step, args.repeats)[0]}


def bench_torch(args) -> dict:
    import torch
    import torch.nn.functional as F
    from torch_pctnet import PCTNet as TorchPCTNet

    torch.manual_seed(0)
    random.seed(0)
    net = TorchPCTNet({"in_chns": 1, "class_num": 5, "input_size": list(args.size),
                       "feature_chns": list(args.features), "multiscale_pred": True})
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
    images = np.ascontiguousarray(_crops(args).transpose(0, 4, 1, 2, 3))

    def loss_fn(outputs, labels):
        y = F.one_hot(labels.long(), 5).permute(0, 4, 1, 2, 3).float()
        total, weights = 0.0, [1.0, 0.5, 0.25, 0.125]
        for w, o in zip(weights, outputs):
            p = torch.softmax(F.interpolate(o, size=labels.shape[1:], mode="trilinear"), 1)
            dims = (0, 2, 3, 4)
            dice = (2 * (p * y).sum(dims) + 1e-5) / (p.sum(dims) + y.sum(dims) + 1e-5)
            ce = -(y * torch.log(p)).sum(1).mean()
            total = total + w * (0.5 * (1 - dice.mean()) + 0.5 * ce)
        return total / sum(weights)

    def run_fuse():
        vf_numpy(images)

    def run_step():
        net.train()
        fused, labels = vf_numpy(images)
        opt.zero_grad(set_to_none=True)
        loss_fn(net(torch.from_numpy(fused)), torch.from_numpy(labels)).backward()
        opt.step()

    return {"fuse_s": _median_time(run_fuse, args.repeats)[0],
            "step_s": _median_time(run_step, args.repeats)[0]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="64,128,128")
    p.add_argument("--features", default="8,16,32,64,128")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args()
    args.size = tuple(int(s) for s in args.size.split(","))
    args.features = tuple(int(s) for s in args.features.split(","))

    import jax
    import torch
    ours, theirs = bench_jax(args), bench_torch(args)
    backend = jax.default_backend()
    print(f"\n{backend}, {platform.machine()}, {os.cpu_count()} cores, PCT-Net features "
          f"{args.features}, {args.size} crops, batch {args.batch}, {args.precision}, "
          f"jax {jax.__version__}, torch {torch.__version__}\n")
    print("| | jaxbrain | PyTorch / NumPy | ratio |\n|---|---|---|---|")
    print(f"| Volume Fusion, fused batches/s | {1 / ours['fuse_s']:.2f} | {1 / theirs['fuse_s']:.2f} "
          f"| {theirs['fuse_s'] / ours['fuse_s']:.2f}x |")
    print(f"| VF training step, s | {ours['step_s']:.3f} | {theirs['step_s']:.3f} "
          f"| {theirs['step_s'] / ours['step_s']:.2f}x |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"pctnet-{backend}.json"), "w") as f:
        json.dump({"jax": ours, "torch": theirs, "args": {k: v for k, v in vars(args).items()}},
                  f, indent=2)


if __name__ == "__main__":
    main()
