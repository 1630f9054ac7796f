"""BrainSegFounder SSL step: jaxbrain (augmentation on device, in the jitted step) against the
original PyTorch recipe (MONAI SwinTransformer + the same heads; per-sample augmentation
loops on the host; the same losses), same size, same run.

    python bench/bench_ssl.py                          # feature 12, 64^3 crops, batch 2
    python bench/bench_ssl.py --feature 48 --roi 96    # the published size (GPU)

Times, as the median of ``--repeats`` runs after a warm-up (compilation excluded):

* augmentation alone: two views of the batch (rotation, noise cutout, pasting). jaxbrain:
  ``SSL.views`` jitted; original: ``rot_rand`` + ``aug_rand`` restated in bench/torch_ssl.py;
* the whole step: augmentation, forward of both views, rotation CE + NT-Xent + L1, backward,
  AdamW update.

Ratio = PyTorch time / jaxbrain time (above 1: jaxbrain faster). Printed as a Markdown table
and written to bench/results/ssl-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np

from bench_swin_unetr import _median_time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _crops(args) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((args.batch, args.roi, args.roi, args.roi, args.channels)).astype(np.float32)


def bench_jax(args) -> dict:
    import jax
    import jax.numpy as jnp
    from ml_collections import ConfigDict
    from jaxbrain.models import SSLHead
    from jaxbrain.objectives.ssl import SSL
    from jaxbrain.training import loop
    from jaxbrain.training.optim import make_optimizer

    model = SSLHead(args.channels, feature_size=args.feature, downsample="merging_legacy")
    objective = SSL()
    tx, lr_fn = make_optimizer(ConfigDict(dict(name="adamw", lr=4e-4, weight_decay=0.1,
                                               schedule="constant")), 100)
    batch = {"image": jnp.asarray(_crops(args))}
    params = jax.jit(lambda k: model.init(k, batch["image"][:1])["params"])(jax.random.key(0))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(1))}
    step = jax.jit(loop.make_train_step(model, objective, tx, lr_fn, jnp.float32),
                   donate_argnums=(0,))
    views = jax.jit(objective.views)
    holder = {"state": state, "i": 0}

    def run_views():
        holder["i"] += 1
        jax.block_until_ready(views(batch["image"], jax.random.key(holder["i"])))

    def run_step():
        holder["state"], m = step(holder["state"], batch)
        jax.block_until_ready(m)

    return {"views_s": _median_time(run_views, args.repeats)[0], "step_s": _median_time(run_step, args.repeats)[0]}


def bench_torch(args) -> dict:
    import torch
    from torch_ssl import SSLReplica, cutout_batch, rotate_batch, ssl_loss

    torch.manual_seed(0)
    np.random.seed(0)
    net = SSLReplica(args.channels, args.feature)
    opt = torch.optim.AdamW(net.parameters(), lr=4e-4, weight_decay=0.1)
    x = torch.from_numpy(np.ascontiguousarray(_crops(args).transpose(0, 4, 1, 2, 3)))

    def run_views():
        x1, _ = rotate_batch(x)
        x2, _ = rotate_batch(x)
        cutout_batch(x1), cutout_batch(x2)

    def run_step():
        net.train()
        opt.zero_grad(set_to_none=True)
        ssl_loss(net, x).backward()
        opt.step()

    return {"views_s": _median_time(run_views, args.repeats)[0], "step_s": _median_time(run_step, args.repeats)[0]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feature", type=int, default=12)
    p.add_argument("--roi", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args()

    import jax
    import torch
    ours, theirs = bench_jax(args), bench_torch(args)
    backend = jax.default_backend()
    print(f"\n{backend}, {platform.machine()}, {os.cpu_count()} cores, feature {args.feature}, "
          f"{args.roi}^3 crops, batch {args.batch} (x2 views), {args.channels} channels, "
          f"jax {jax.__version__}, torch {torch.__version__}\n")
    print("| seconds | jaxbrain | PyTorch original | ratio |\n|---|---|---|---|")
    for key, name in (("views_s", "augmentation (2 views)"), ("step_s", "SSL training step")):
        print(f"| {name} | {ours[key]:.4f} | {theirs[key]:.4f} | {theirs[key] / ours[key]:.2f}x |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"ssl-{backend}.json"), "w") as f:
        json.dump({"jax": ours, "torch": theirs, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
